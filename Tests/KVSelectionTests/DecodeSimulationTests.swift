import Foundation
import Testing
import KVQuantization
import TestSupport
@testable import KVSelection

/// 2,000 decode steps of one stream held as a plain array of (position, tier): append a token at
/// FP16, accumulate its H2O scores, and re-plan whenever the recent window has overflowed by a page.
/// The byte budget must hold after every step.
@Suite struct DecodeSimulationTests {
    struct Token { var position: Int32; var tier: Tier }

    func simulate(planner: some StreamPlanner, budget: ByteBudget, seed: UInt64) throws {
        var g = SeededGenerator(seed: seed)
        let heads = 4, kvHeads = 1
        let c = planner.configuration.costs
        let page = c.pageCapacity
        precondition(planner.configuration.headroomTokenCount == page)
        guard case .byteCount(let limit) = budget.amount else { preconditionFailure("absolute budget expected") }
        var stream: [Token] = []
        var acc = H2OAccumulator(headCount: heads)
        var appendedSincePlan = 0
        var replans = 0
        for step in 0..<2000 {
            // Append the new token and let it attend to everything the stream holds (itself included).
            stream.append(Token(position: Int32(step), tier: .fp16))
            acc.appendPositions(count: 1)
            let keys = stream.map(\.position)
            var w: [Float] = []
            for _ in 0..<heads {
                // Heavy-tailed positive weights (cheap in a debug build): u⁴ for uniform u, normalised.
                let e = keys.map { _ -> Float in let u = Float(g.next() >> 40) * 0x1p-24; return u * u * u * u }
                let sum = e.reduce(0, +) + 1e-6
                w += e.map { $0 / sum }
            }
            try acc.add(queryWeights: w, keyPositions: keys)
            appendedSincePlan += 1

            if appendedSincePlan == page {
                appendedSincePlan = 0
                replans += 1
                let q = acc.scores(at: keys, normalization: .visibleQueryCount)
                let input = StreamInput(positions: keys, tiers: stream.map(\.tier),
                                        hostScores: q.groupedByKVHead(kvHeadCount: kvHeads).scores(head: 0),
                                        queryHeadScores: q)
                let a = try planner.plan(input, budget: budget)
                let plan = a.streamPlan(layer: 0, kvHead: 0)
                var byPosition = Dictionary(uniqueKeysWithValues: stream.enumerated().map { ($1.position, $0) })
                for m in plan.moves {
                    let i = byPosition[m.position]!
                    #expect(m.tier > stream[i].tier, "move up or no-op at step \(step), seed \(seed)")
                    stream[i].tier = m.tier
                }
                stream.removeAll { $0.tier == .dropped }
                byPosition.removeAll()
            }
            let tiers = stream.map(\.tier)
            // Whole pages, exactly: the headroom kept room for every token until the next plan.
            let bytes = c.pagedByteCount(tiers: tiers)
            #expect(bytes <= limit, "step \(step): \(bytes) > \(limit) paged bytes, seed \(seed)")
            // Sinks and the recent window are FP16.
            let r = planner.configuration.regions.split(tokenCount: stream.count)
            #expect((Array(r.sinks) + Array(r.recent)).allSatisfy { stream[$0].tier == .fp16 }, "step \(step), seed \(seed)")
            if bytes > limit { return }  // one failure is enough
        }
        #expect(replans == 2000 / page)
        #expect(stream.count > 40, "the stream keeps more than its protected tokens")
        #expect(stream.first?.position == 0 && stream.last?.position == 1999)
    }

    func configuration(kvCrush: KVCrushSelector = KVCrushSelector()) -> PlannerConfiguration {
        PlannerConfiguration(headDim: 64, regions: StreamRegions(sinkTokenCount: 4, recentTokenCount: 32),
                             pageCapacity: 16, kvCrush: kvCrush, headroomTokenCount: 16)
    }

    /// 128 FP16 tokens' worth of bytes.
    let limit = 128 * 260

    @Test func h2oWithKVCrushRepresentativesStaysWithinBudget() throws {
        try simulate(planner: BudgetPlanner(configuration: configuration()),
                     budget: .bytes(limit, representativeShare: 0.25, representativeTier: .int4), seed: 1)
    }

    @Test func tieredPlannerStaysWithinBudget() throws {
        try simulate(planner: TieredPlanner(configuration: configuration(kvCrush: KVCrushSelector(anchor: .mean))),
                     budget: .bytes(limit, representativeShare: 0.1, representativeTier: .int4), seed: 2)
    }

    @Test func demotingInsteadOfDroppingStaysWithinBudget() throws {
        // MiKV: nothing is dropped until the int2 floor itself no longer fits; from then on the
        // best-scored middle tokens that fit stay at int2.
        try simulate(planner: BudgetPlanner(configuration: configuration()),
                     budget: .bytes(limit, restTier: .int2), seed: 3)
    }
}
