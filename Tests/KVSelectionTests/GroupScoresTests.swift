import Foundation
import Testing
import KVQuantization
import TestSupport
@testable import KVSelection

/// One KV head's scores straight from the accumulator (`H2OAccumulator.groupScores`) and the decode
/// re-plan that uses them (`SequencePlanner.planDecode` for planners that read no per-query-head
/// scores): the same values and plans, bit for bit, as from every query head's scores.
@Suite struct GroupScoresTests {
    /// An accumulator of `heads` query heads over `tokens` positions, each query seeing a random
    /// subset of the positions so far (visible counts differ), some positions never seen.
    static func accumulator(heads: Int, tokens: Int, using g: inout SeededGenerator) throws -> H2OAccumulator {
        var acc = H2OAccumulator(headCount: heads)
        acc.appendPositions(count: tokens)
        for q in 0..<(tokens / 2) {
            let keys = (0..<Int32(tokens)).filter { $0 <= Int32(2 * q + 1) && Int.random(in: 0..<4, using: &g) != 0 }
            guard !keys.isEmpty else { continue }
            var w: [Float] = []
            for _ in 0..<heads {
                let e = keys.map { _ in Float.random(in: 0..<1, using: &g) * Float.random(in: 0..<1, using: &g) }
                let sum = e.reduce(0, +) + 1e-6
                w += e.map { $0 / sum }
            }
            try acc.add(queryWeights: w, keyPositions: keys)
        }
        return acc
    }

    @Test func groupScoresEqualGroupedQueryHeadScores() throws {
        try forEachSeededCase(40, base: 7700) { g in
            let group = [1, 2, 3, 4].randomElement(using: &g)!, kvHeads = Int.random(in: 1...3, using: &g)
            let tokens = Int.random(in: 1...90, using: &g)
            let acc = try Self.accumulator(heads: group * kvHeads, tokens: tokens, using: &g)
            let positions = (0..<Int32(tokens)).filter { _ in Bool.random(using: &g) }
            for normalization in [H2ONormalization.none, .visibleQueryCount] {
                for reduction in [GroupReduction.mean, .max] {
                    let all = acc.scores(at: positions, normalization: normalization).groupedByKVHead(kvHeadCount: kvHeads, reduction: reduction)
                    for h in 0..<kvHeads {
                        let own = acc.groupScores(kvHead: h, groupSize: group, at: positions, normalization: normalization, reduction: reduction)
                        #expect(own.map(\.bitPattern) == all.scores(head: h).map(\.bitPattern),
                                "seed \(g.seed) kv head \(h) of \(kvHeads), group \(group), \(normalization), \(reduction)")
                    }
                }
            }
        }
    }

    /// A planner that reads per-query-head scores (the default), so `planDecode` computes them all.
    struct ReadingQueryHeads<Inner: StreamPlanner>: StreamPlanner {
        var inner: Inner
        var configuration: PlannerConfiguration { inner.configuration }
        func plan(_ input: StreamInput, budget: ByteBudget) throws(SelectionError) -> StreamAssignment {
            try inner.plan(input, budget: budget)
        }
    }

    @Test func planDecodeFromOwnHeadsEqualsFromEveryHead() throws {
        try forEachSeededCase(30, base: 7800) { g in
            let kvHeads = 3, group = 3, tokens = Int.random(in: 250...400, using: &g)
            let acc = try Self.accumulator(heads: kvHeads * group, tokens: tokens, using: &g)
            // Streams after earlier plans: some positions dropped, older ones quantised, recent ones FP16.
            let streams = (0..<kvHeads).map { _ in
                let positions = (0..<Int32(tokens)).filter { $0 < 4 || $0 >= Int32(tokens - 40) || Int.random(in: 0..<5, using: &g) != 0 }
                let tiers = positions.map { p -> Tier in p < 4 || p >= Int32(tokens - 40) ? .fp16 : [Tier.fp16, .int4, .int4, .int8].randomElement(using: &g)! }
                return SequencePlanner.DecodeStream(positions: positions, tiers: tiers)
            }
            let configuration = PlannerConfiguration(headDim: 64, regions: StreamRegions(sinkTokenCount: 4, recentTokenCount: 32),
                                                     pageCapacity: 16, headroomTokenCount: 16)
            let budget = ByteBudget.fraction([0.3, 0.5].randomElement(using: &g)!)
            for policy in [EvictionPolicy.h2o(.none), .h2o(.visibleQueryCount)] {
                for reduction in [GroupReduction.mean, .max] {
                    let planner = SequencePlanner(policy: policy, kvHeadCount: kvHeads, groupReduction: reduction)
                    let plain = PlainPlanner(configuration: configuration)
                    #expect(!plain.readsQueryHeadScores(budget: budget))
                    let normalization: H2ONormalization = policy == .h2o(.none) ? .none : .visibleQueryCount
                    let fast = try planner.planDecode(layer: 0, streams: streams, scores: acc, normalization: normalization, tokenCount: tokens,
                                                      planner: plain, budget: budget)
                    let full = try planner.planDecode(layer: 0, streams: streams, scores: acc, normalization: normalization, tokenCount: tokens,
                                                      planner: ReadingQueryHeads(inner: plain), budget: budget)
                    #expect(fast == full, "seed \(g.seed) \(policy) \(reduction)")
                    #expect(fast.streams.contains { !$0.moves.isEmpty }, "seed \(g.seed): a plan that moves something")
                }
            }
        }
    }
}
