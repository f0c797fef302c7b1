import Testing
import KVQuantization
import TestSupport
@testable import KVSelection

@Suite struct PlainPlannerTests {
    /// 12 tokens, 1 sink, 1 recent, middle scores m0…m9 = 10, 9, …, 1; grouped formats in pages of one
    /// token (bytes by hand: fp16 272, int4 96; see BudgetPlannerTests).
    func stream() -> StreamInput {
        StreamInput.prefill(tokenCount: 12, hostScores: [99] + (1...10).map { Float(11 - $0) } + [99],
                            queryHeadScores: ImportanceScores.random(headCount: 2, tokenCount: 12, seed: 5))
    }

    @Test func topShareAtFP16ThenINT4ByScore() throws {
        let p = PlainPlanner(configuration: PlannerConfiguration(headDim: 64, regions: StreamRegions(sinkTokenCount: 1, recentTokenCount: 1),
                                                                  formats: .grouped, pageCapacity: 1), topShare: 0.2)
        // Budget 544 protected + 544 for the top 20% (m0, m1) at FP16 + 5·96: m2…m6 at INT4, m7…m9 dropped.
        let a = try p.plan(stream(), budget: .bytes(1568))
        #expect(a.tiers == [.fp16, .fp16, .fp16, .int4, .int4, .int4, .int4, .int4, .dropped, .dropped, .dropped, .fp16])
        #expect(a.byteCount == 1568)
        // Less than one INT4 token left after the FP16 pair: nothing else is kept.
        #expect(try p.plan(stream(), budget: .bytes(1088 + 95)).tiers.filter { $0 == .int4 }.isEmpty)
    }

    @Test func protectedRegionsAndTopShareAtINT8WhenCompressing() throws {
        let config = PlannerConfiguration(headDim: 64, regions: StreamRegions(sinkTokenCount: 1, recentTokenCount: 1, tier: .int8),
                                          formats: .grouped, pageCapacity: 1)
        let c = config.costs
        #expect(c.byteCount(.int8) < c.byteCount(.fp16) && c.byteCount(.int4) < c.byteCount(.int8))
        let p = PlainPlanner(configuration: config, topShare: 0.2)
        // Sink, recent and the top 20% (m0, m1) at INT8, then m2…m6 at INT4, m7…m9 dropped.
        let budget = 4 * c.byteCount(.int8) + 5 * c.byteCount(.int4)
        let a = try p.plan(stream(), budget: .bytes(budget))
        #expect(a.tiers == [.int8, .int8, .int8] + [Tier](repeating: .int4, count: 5) + [.dropped, .dropped, .dropped, .int8])
        #expect(a.byteCount == budget)
        // Everything fits: nothing moves, the regions stay FP16.
        #expect(try p.plan(stream(), budget: .bytes(12 * c.byteCount(.fp16))).tiers == [Tier](repeating: .fp16, count: 12))
        // The bytes the regions need are counted at INT8: a budget for just them compresses.
        #expect(p.requiredByteCount(stream(), restTier: .dropped) == 2 * c.byteCount(.int8))
    }

    @Test func propertiesOverSeededProblems() {
        var g = SeededGenerator(seed: 5150)
        var planned = 0
        for trial in 0..<800 {
            let p = RandomProblem.draw(&g, hostScores: true, allowOnTop: false)
            let planner = PlainPlanner(configuration: p.configuration, topShare: [0, 0.02, 0.2].randomElement(using: &g)!,
                                       tier: [.int8, .int4, .int2].randomElement(using: &g)!)
            guard checkPlan(planner, p, context: "seed \(g.seed) trial \(trial): \(p)") != nil else { continue }
            planned += 1
        }
        #expect(planned > 300, "coverage: \(planned) planned")
    }
}
