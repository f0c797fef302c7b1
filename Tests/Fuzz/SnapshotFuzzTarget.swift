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

@_cdecl("LLVMFuzzerTestOneInput")
public func snapshotFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let parsed: KVStore.ParsedSnapshot
    do {
        parsed = try KVStore.parse(bytes, into: nil)
    } catch {
        precondition(!error.description.isEmpty)
        return 0
    }
    guard parsed.byteCount <= maxRestoredBytes else { return 0 }
    let store: KVStore
    do {
        store = try KVStore.restoring(bytes: bytes)
    } catch {
        // Only the byte limit can refuse a parsed snapshot.
        guard case .byteLimitExceeded = error else { preconditionFailure("parsed but not restored: \(error)") }
        return 0
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
    return 0
}
