// libFuzzer target: random sequences of store operations (append — including non-finite and
// out-of-range values —, fork, remove, plans, snapshot round trips, byte limits) driven by the
// input bytes and checked after every step against the reference model of the model-based tests
// (Tests/KVStoreTests/ReferenceStore.swift, compiled in): rows and tiers bit-exact, bytes exact,
// attention within the derived FP32 bound, no page leaked, the limit never exceeded, and a
// refused operation changes nothing. Built and run by `.ci/fuzz`.
import KVQuantization
import KVSelection
@testable import KVStore
import TestSupport

/// The fuzzer's bytes as a random number generator: 8 bytes per draw.
struct FuzzBytes: RandomNumberGenerator {
    let bytes: UnsafeBufferPointer<UInt8>
    var offset = 0
    var isExhausted: Bool { offset >= bytes.count }

    mutating func byte() -> UInt8 {
        defer { offset += 1 }
        return offset < bytes.count ? bytes[offset] : 0
    }

    /// Input bytes while they last; then a fixed SplitMix64 stream (a constant would make the
    /// standard library's rejection sampling in `random(in:)` loop forever).
    mutating func next() -> UInt64 {
        guard offset + 8 <= bytes.count else {
            offset += 8
            var z = UInt64(truncatingIfNeeded: offset) &* 0x9E37_79B9_7F4A_7C15
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        var x: UInt64 = 0
        for k in 0..<8 { x |= UInt64(byte()) << (8 * UInt64(k)) }
        return x
    }

    /// A value for appending: mostly ordinary, sometimes extreme or unstorable.
    mutating func value() -> Float {
        let b = byte()
        switch b {
        case 0xFF: return .nan
        case 0xFE: return .infinity
        case 0xFD: return -.infinity
        case 0xFC: return 70000
        case 0xFB: return 65504
        case 0xFA: return -65504
        case 0xF9: return 6e-8
        default: return Float(Int8(bitPattern: b)) * 0.03125 * Float(1 + (b & 3))
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func storeOpsFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var g = FuzzBytes(bytes: UnsafeBufferPointer(start: data, count: size))
    var config = randomConfiguration(using: &g)
    let page = PageLayout(keyFormat: .fp16, valueFormat: .fp16, headDim: config.headDim, capacity: config.pageCapacity(.fp16, layer: 0)).byteCount
    if g.byte() & 1 == 1 { config.byteLimit = page * config.kvHeadCount * Int(1 + g.byte() % 8) }
    guard var store = try? KVStore(config) else { preconditionFailure("a valid configuration was refused") }
    var model = ReferenceStore(configuration: config)
    func newSequence() {
        model.addEmptySequence(store.addSequence())
    }
    newSequence()
    var step = 0
    while !g.isExhausted && step < 48 {
        step += 1
        let live = model.sequences.keys.sorted()
        let id = live[Int(g.byte()) % live.count]
        let before = snapshotOf(store)
        var refused = false
        switch g.byte() % 8 {
        case 0 where live.count < 4: newSequence()
        case 1 where live.count < 4: model.sequences[store.fork(id)] = model.sequences[id]
        case 2 where live.count > 1:
            store.removeSequence(id)
            model.sequences[id] = nil
        case 3, 4:
            let plan = randomPlan(model, id, using: &g)
            do {
                try store.apply(plan, to: id)
                model.apply(plan, to: id)
            } catch {
                guard case .byteLimitExceeded = error, config.byteLimit != nil else { preconditionFailure("apply: \(error)") }
                refused = true
            }
        case 5:
            // Snapshot round trip: the restored store replaces this one.
            let bytes = store.snapshotBytes()
            guard let restored = try? KVStore.restoring(bytes: bytes) else { preconditionFailure("a snapshot did not restore") }
            precondition(restored.snapshotBytes() == bytes, "re-saved snapshot differs")
            store = restored
        default:
            let layer = Int(g.byte()) % config.layerCount
            let n = [0, 1, 1, 2, 3, 5, 8, 17][Int(g.byte() % 8)]
            let count = config.kvHeadCount * n * config.headDim
            let k = (0..<count).map { _ in g.value() }, v = (0..<count).map { _ in g.value() }
            do {
                try store.append(id, layer: layer, keys: k, values: v)
                model.append(id, layer: layer, keys: k, values: v)
            } catch {
                switch error {
                case .invalidValue: precondition((k + v).contains { !$0.isFinite || abs($0) > 65504 }, "a storable value was refused")
                case .byteLimitExceeded: precondition(config.byteLimit != nil, "byte limit without a limit")
                case .invalidQuery: preconditionFailure("append refused a query")
                }
                refused = true
            }
        }
        if refused { precondition(snapshotOf(store) == before, "a refused operation changed the store") }
        check(store, model, &g)
    }
    return 0
}

/// Bytes that identify the store's contents (its snapshot).
func snapshotOf(_ store: KVStore) -> [UInt8] { store.snapshotBytes() }

func check(_ store: KVStore, _ model: ReferenceStore, _ g: inout FuzzBytes) {
    let c = store.configuration, d = c.headDim
    precondition(Set(store.sequences) == Set(model.sequences.keys), "sequences differ")
    if let limit = c.byteLimit { precondition(store.byteCount <= limit, "over the byte limit") }
    for (id, seq) in model.sequences {
        precondition(store.byteCount(of: id) == model.byteCount(id), "bytes of \(id)")
        let layer = Int(g.byte()) % c.layerCount
        var keys = [[Float]](), values = [[Float]](), positions = [[Int32]](), formats = [[StorageFormat]](), tiers = [[Tier]]()
        for head in 0..<c.kvHeadCount {
            let rows = store.rows(id, layer: layer, kvHead: head)
            let expected = seq.streams[layer][head].sorted { $0.key < $1.key }
            precondition(rows.positions == expected.map(\.key), "positions of \(id) layer \(layer) head \(head)")
            precondition(rows.tiers == expected.map(\.value.tier), "tiers")
            let k = expected.flatMap(\.value.key), v = expected.flatMap(\.value.value)
            precondition(rows.keys.map(\.bitPattern) == k.map(\.bitPattern), "keys of \(id) layer \(layer) head \(head)")
            precondition(rows.values.map(\.bitPattern) == v.map(\.bitPattern), "values of \(id) layer \(layer) head \(head)")
            keys.append(k)
            values.append(v)
            positions.append(expected.map(\.key))
            formats.append(expected.map { c.tierFormats(layer: layer).valueFormat($0.value.tier) })
            tiers.append(expected.map(\.value.tier))
        }
        // One query per head at the latest position, against the FP64 reference and its bound.
        let q = (0..<(c.queryHeadCount * d)).map { _ in Float(Int8(bitPattern: g.byte())) / 64 }
        let result = store.attend(id, layer: layer, queries: q)
        for h in 0..<c.queryHeadCount {
            let kv = h / c.groupSize
            let pageCount = store.pageCounts(of: id, layer: layer, kvHead: kv).values.reduce(0, +)
            let qrow = Array(q[(h * d)..<((h + 1) * d)])
            let rotated = model.rotatedRows(tiers[kv], layer: layer)
            let ref = ReferenceAttention(q: qrow, keys: keys[kv], values: values[kv],
                                         visible: positions[kv].map { _ in true }, scale: c.effectiveAttentionScale, pageCount: pageCount,
                                         scoreErrors: store.vnniScoreErrors(id, layer: layer, kvHead: kv, query: qrow),
                                         valueFormats: formats[kv], rotatedKeys: rotated.keys, rotatedValues: rotated.values,
                                         valueRotation: rotated.valueRotation)
            for e in 0..<d {
                let o = Double(result.output[h * d + e])
                precondition(abs(o - ref.output[e]) <= ref.bound[e] + 1e-30, "attend head \(h) element \(e): \(o) vs \(ref.output[e])")
            }
        }
    }
    let live = livePages(store)
    precondition(live.count == store.pool.pagesInUse && live.bytes == store.byteCount, "page leak or miscount")
}
