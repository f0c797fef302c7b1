import Testing
import TestSupport
import KVQuantization
import KVSelection
@testable import KVStore

/// The read path at the shapes the accelerated page kernels take (headDim 64 and 128, default
/// per-channel keys and grouped values, MHA and GQA, mixed tiers with staging pages): identical
/// results for every thread count, and attention within the derived FP32 bound of FP64 attention
/// over the decoded rows (plus the VNNI query-split term where per-channel keys are scored in int8).
@Suite struct ReadPathTests {
    @Test(arguments: [(kv: 2, group: 1, d: 128), (kv: 2, group: 4, d: 128), (kv: 3, group: 3, d: 64)])
    func defaultFormatsAcrossThreadCounts(_ shape: (kv: Int, group: Int, d: Int)) throws {
        var g = SeededGenerator(seed: UInt64(7000 + shape.kv * 100 + shape.group * 10 + shape.d))
        let c = KVStoreConfiguration(layerCount: 1, queryHeadCount: shape.kv * shape.group, kvHeadCount: shape.kv, headDim: shape.d)
        let store = try KVStore(c)
        let id = store.addSequence()
        let n = 300
        try store.append(id, layer: 0, keys: randomRows(shape.kv * n * shape.d, using: &g), values: randomRows(shape.kv * n * shape.d, using: &g))
        // Mixed tiers: FP16, INT8, INT4 and INT2 tokens, staging pages in every quantised tier.
        let plan = RetentionPlan(streams: (0..<shape.kv).map { h in
            StreamPlan(layer: 0, kvHead: h, moves: (0..<Int32(n - 5)).compactMap { p in
                let t = [Tier.fp16, .int8, .int4, .int2, .int8].randomElement(using: &g)!
                return t == .fp16 ? nil : StreamPlan.Move(position: p, tier: t)
            })
        })
        try store.apply(plan, to: id)
        for queryCount in [1, 3] {
            let q = randomRows(c.queryHeadCount * queryCount * shape.d, using: &g)
            let positions: [Int32] = queryCount == 1 ? [Int32(n - 1)] : [40, 170, Int32(n - 1)]
            let one = store.attend(id, layer: 0, queries: q, queryCount: queryCount, queryPositions: positions, threadCount: 1)
            for threads in [2, 3] {
                let other = store.attend(id, layer: 0, queries: q, queryCount: queryCount, queryPositions: positions, threadCount: threads)
                #expect(other.output.map(\.bitPattern) == one.output.map(\.bitPattern), "\(shape) queries \(queryCount) threads \(threads)")
            }
            store.expectAttentionWithinBound(id, layer: 0, queries: q, queryCount: queryCount, positions: positions,
                                             output: one.output, "\(shape) queries \(queryCount)")
        }
    }
}
