import Foundation
import KVCrush

// Writes, with the version 2 store code: an edge-case v2 snapshot (pages out of position order,
// pages spanning more than 65,535 positions, a fork), and for it and for any given snapshot the
// decoded image of every stream: per (sequence, layer, head): count, positions, tiers, key bits,
// value bits (little-endian u32).
func image(_ store: KVStore) -> [UInt8] {
    var out = [UInt32]()
    let c = store.configuration
    for id in store.sequences {
        out.append(UInt32(id.rawValue))
        for layer in 0..<c.layerCount {
            out.append(UInt32(store.nextPosition(of: id, layer: layer)))
            for head in 0..<c.kvHeadCount {
                let r = store.rows(id, layer: layer, kvHead: head)
                out.append(UInt32(r.count))
                out += r.positions.map { UInt32(bitPattern: $0) } + r.tiers.map { UInt32($0.rawValue) }
                out += r.keys.map(\.bitPattern) + r.values.map(\.bitPattern)
            }
        }
    }
    return out.withUnsafeBytes { Array($0) }
}
let dir = URL(fileURLWithPath: CommandLine.arguments[1])
for name in CommandLine.arguments.dropFirst(2) {
    let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: name)))
    let store = try KVStore.restoring(bytes: bytes)
    try Data(image(store)).write(to: dir.appendingPathComponent(URL(fileURLWithPath: name).deletingPathExtension().lastPathComponent + ".image"))
}
let config = KVStoreConfiguration(layerCount: 1, queryHeadCount: 2, kvHeadCount: 1, headDim: 8, pageCapacity: 4,
    tierFormats: TierFormats(keys: [.fp16: .fp16, .int8: .channelwise(.int8), .int4: .int4, .int2: .channelwise(.int2)],
                             values: [.fp16: .fp16, .int8: .int8, .int4: .int4, .int2: .int2]))
let store = try KVStore(config)
let seq = store.addSequence()
let n = 70010
func rnds(_ count: Int, _ seed: UInt64) -> [Float] { var x = seed; return (0..<count).map { _ in x = x &* 6364136223846793005 &+ 1442695040888963407; return Float(Int32(truncatingIfNeeded: x >> 32)) * 0x1p-31 * 4 } }
let keys = rnds(n * 8, 7), values = rnds(n * 8, 8)
try store.append(seq, layer: 0, keys: keys, values: values)
func plan(_ moves: [(Int32, Tier)]) -> RetentionPlan {
    RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 0, moves: moves.map { StreamPlan.Move(position: $0.0, tier: $0.1) })])
}
let keepFP16: Set<Int32> = [0, 70000, 70001, 70002, 70003, 70004, 70006, 70007, 70008]
let special = Set<Int32>([5, 6, 9, 100, 69998, 69999, 70005, 70009] + Array(69990...69997))
try store.apply(plan((1..<Int32(n)).filter { !keepFP16.contains($0) && !special.contains($0) }.map { ($0, .dropped) }), to: seq)
try store.apply(plan((69990...69997).map { ($0, .int8) }), to: seq)     // two sealed pages
try store.apply(plan([(70005, .int4)]), to: seq)
try store.apply(plan([(100, .int4)]), to: seq)                          // int4 page [70005, 100]
try store.apply(plan([(5, .int8), (6, .int8)]), to: seq)                // staging [5, 6]
try store.apply(plan([(69998, .int8), (69999, .int8)]), to: seq)        // sealed [5, 6, 69998, 69999]
try store.apply(plan([(9, .int8)]), to: seq)                            // staging [9]
let fork = store.fork(seq)
try store.apply(plan([(70009, .int8)]), to: fork)                      // fork: staging [9, 70009]
try store.apply(plan([(69990, .int2), (69991, .int2), (70007, .int2)]), to: fork)  // int8 page loses tokens: re-sealed
try store.append(fork, layer: 0, keys: Array(keys[0..<16]), values: Array(values[0..<16]))
let snap = store.snapshotBytes()
try Data(snap).write(to: dir.appendingPathComponent("edge-cases.kvsnap"))
try Data(image(try KVStore.restoring(bytes: snap))).write(to: dir.appendingPathComponent("edge-cases.image"))
print(store.sequences, store.byteCount)
for id in store.sequences { let t = store.tokenTiers(of: id, layer: 0, kvHead: 0); print(zip(t.positions, t.tiers).map { "\($0):\($1)" }.joined(separator: " ")) }
