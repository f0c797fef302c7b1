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

    /// The plan follows scores, not positions: with the best scores last, the top share and the
    /// INT4 budget go to the latest middle tokens; in a re-plan where older tokens are already at
    /// INT4 and newer ones (FP16) score higher, the newer ones are kept and the worst old ones dropped.
    @Test func followsScoresNotPositions() throws {
        let p = PlainPlanner(configuration: PlannerConfiguration(headDim: 64, regions: StreamRegions(sinkTokenCount: 1, recentTokenCount: 1),
                                                                  formats: .grouped, pageCapacity: 1), topShare: 0.2)
        let rising = StreamInput.prefill(tokenCount: 12, hostScores: [99] + (1...10).map { Float($0) } + [99],
                                         queryHeadScores: ImportanceScores.random(headCount: 2, tokenCount: 12, seed: 5))
        let a = try p.plan(rising, budget: .bytes(1568))
        #expect(a.tiers == [.fp16, .dropped, .dropped, .dropped, .int4, .int4, .int4, .int4, .int4, .fp16, .fp16, .fp16])
        // A re-plan: m0…m4 already INT4 (scores 1…5), m5…m9 new at FP16 (scores 10…6).
        let replan = StreamInput(positions: (0..<12).map { Int32($0) },
                                 tiers: [.fp16] + Array(repeating: .int4, count: 5) + Array(repeating: .fp16, count: 6),
                                 hostScores: [99, 1, 2, 3, 4, 5, 10, 9, 8, 7, 6, 99],
                                 queryHeadScores: ImportanceScores.random(headCount: 2, tokenCount: 12, seed: 6))
        // Protected 544; the top 20% (m5, m6) at FP16 544; then 4·96 at INT4 for m7, m8, m9, m4: 1472 bytes.
        let b = try p.plan(replan, budget: .bytes(1472))
        #expect(b.tiers == [.fp16, .dropped, .dropped, .dropped, .dropped, .int4, .fp16, .fp16, .int4, .int4, .int4, .fp16])
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
