// libFuzzer target: the snapshot loader. Any input must be loaded or refused with a
// `SnapshotError` (never a trap, never an out-of-bounds read). An accepted snapshot must restore
// into a store whose reads and attention work, whose pages are accounted exactly, and which
// re-saves to a snapshot that restores to the same contents. Built and run by `.ci/fuzz`.
import KVQuantization
import KVSelection
@testable import KVStore

/// Restored stores above this size are parsed and validated but not allocated (a valid snapshot
/// may legitimately ask for gigabytes; libFuzzer's memory limit would report that as a crash).
let maxRestoredBytes = 64 << 20

/// The input with every checksum it has recomputed, so that mutations reach the structural
/// validation behind the CRCs (random bytes almost never pass a CRC-32C).
func withChecksumsFixed(_ input: [UInt8]) -> [UInt8] {
    var b = input
    guard b.count >= 24, b[0..<8].elementsEqual(SnapshotFormat.magic) else { return b }
    func store(_ crc: UInt32, at o: Int) { for k in 0..<4 { b[o + k] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(k))) } }
    store(CRC32C.checksum(b[0..<20]), at: 20)
    var o = 24
    for _ in 0..<3 {
        guard b.count - o >= 16 else { break }
        var n: UInt64 = 0
        for k in 0..<8 { n |= UInt64(b[o + 4 + k]) << (8 * UInt64(k)) }
        guard n <= UInt64(b.count - o - 16) else { break }
        store(CRC32C.checksum(b[o..<(o + 12 + Int(n))]), at: o + 12 + Int(n))
        o += 16 + Int(n)
    }
    return b
}

@_cdecl("LLVMFuzzerTestOneInput")
public func snapshotFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    check(input)
    let fixed = withChecksumsFixed(input)
    if fixed != input { check(fixed) }
    return 0
}

func check(_ bytes: [UInt8]) {
    let parsed: ParsedSnapshot
    do {
        parsed = try KVStore.parse(bytes, into: nil)
    } catch {
        precondition(!error.description.isEmpty)
        return
    }
    guard parsed.byteCount <= maxRestoredBytes else { return }
    let store: KVStore
    do {
        store = try KVStore.restoring(bytes: bytes)
    } catch {
        // Only the byte limit can refuse a parsed snapshot.
        guard case .byteLimitExceeded = error else { preconditionFailure("parsed but not restored: \(error)") }
        return
    }
    let c = store.configuration
    precondition(store.byteCount == parsed.byteCount, "restored bytes differ from the parsed page total")
    for id in store.sequences {
        for layer in 0..<c.layerCount {
            for head in 0..<c.kvHeadCount {
                let rows = store.rows(id, layer: layer, kvHead: head)
                precondition(rows.positions == rows.positions.sorted() && Set(rows.positions).count == rows.count)
                precondition(rows.positions.allSatisfy { $0 >= 0 && Int($0) < store.nextPosition(of: id, layer: layer) })
            }
            if layer == 0, c.queryHeadCount * c.headDim <= 1 << 16 {
                let q = (0..<(c.queryHeadCount * c.headDim)).map { Float($0 % 7) * 0.125 - 0.375 }
                let out = store.attend(id, layer: 0, queries: q).output
                precondition(out.allSatisfy(\.isFinite), "attend gave a non-finite output")
            }
        }
    }
    // Re-saving gives a snapshot that restores to the same contents.
    let again = store.snapshotBytes()
    guard let other = try? KVStore.restoring(bytes: again) else { preconditionFailure("a re-saved snapshot does not restore") }
    precondition(other.sequences == store.sequences && other.byteCount == store.byteCount)
    precondition(other.snapshotBytes() == again, "re-saving is not deterministic")
}
