import Foundation
import Testing
import TestSupport
import KVQuantization
@testable import KVSelection

@Suite struct TieredPlannerTests {
    /// n = 6, 1 sink, 1 recent; middle tokens 1...4 with scores 4, 3, 2, 1.
    func stream() -> StreamInput {
        StreamInput.prefill(tokenCount: 6, hostScores: [9, 4, 3, 2, 1, 9],
                            queryHeadScores: ImportanceScores.random(headCount: 3, tokenCount: 6, seed: 1))
    }

    func planner(_ errors: [Tier: Double]) throws -> TieredPlanner {
        TieredPlanner(configuration: PlannerConfiguration(headDim: 64, regions: StreamRegions(sinkTokenCount: 1, recentTokenCount: 1),
                                                          formats: .grouped, pageCapacity: 1),
                      errorModel: try TierErrorModel(relativeErrors: errors))
    }

    @Test func derivedErrorModel() {
        let m = TierErrorModel.derived(from: .grouped)
        #expect(m.relativeError(.fp16) == 0 && m.relativeError(.dropped) == 1)
        #expect(abs(m.relativeError(.int8) - 1 / (255 * 12.0.squareRoot())) < 1e-12)
        #expect(abs(m.relativeError(.int4) - 1 / (15 * 12.0.squareRoot())) < 1e-12)
        #expect(abs(m.relativeError(.int2) - 1 / (3 * 12.0.squareRoot())) < 1e-12)
        #expect(throws: SelectionError.invalidTierError(.int4, 1.5)) { try TierErrorModel(relativeErrors: [.int4: 1.5]) }
    }

    @Test func greedySplitByHand() throws {
        // Costs 272 / 152 / 96 (pages of one token); errors 0 / 0.01 / 0.05 / 1. Hull from dropped: int4
        // (0.95/96), int8 (0.04/56), fp16 (0.01/120): every token first goes to int4 (4·96 = 384); the next
        // best step is the top token's int4 → int8 (56).
        let p = try planner([.int8: 0.01, .int4: 0.05])
        let a = try p.plan(stream(), budget: .bytes(544 + 384 + 56))
        #expect(a.tiers == [.fp16, .int8, .int4, .int4, .int4, .fp16])
        #expect(a.byteCount == 544 + 152 + 3 * 96)
        // One byte less: the int8 step does not fit.
        #expect(try p.plan(stream(), budget: .bytes(544 + 384 + 55)).tiers == [.fp16, .int4, .int4, .int4, .int4, .fp16])
        // 200 bytes: two tokens at int4, the rest dropped.
        #expect(try p.plan(stream(), budget: .bytes(544 + 200)).tiers == [.fp16, .int4, .int4, .dropped, .dropped, .fp16])
    }

    @Test func badQuantisationFallsBackToDropOnly() throws {
        // int8 0.9, int4 0.95: the hull skips both (dropped → fp16 is steeper), so the planner is H2O.
        let p = try planner([.int8: 0.9, .int4: 0.95])
        #expect(try p.plan(stream(), budget: .bytes(544 + 2 * 272)).tiers == [.fp16, .fp16, .fp16, .dropped, .dropped, .fp16])
    }

    @Test func hullStepsOfTheDefaultModel() throws {
        let p = TieredPlanner(configuration: PlannerConfiguration(headDim: 64, formats: .grouped, pageCapacity: 8), candidateTiers: [.fp16, .int8, .int4, .int2])
        let steps = p.hullSteps(rest: .dropped, ceiling: .fp16)
        // int2 (52 B, 0.096), int4 (84 B, 0.019), int8 (140 B, 0.0011), fp16 (pages of 8): slopes fall, all on the hull.
        #expect(steps.map(\.to) == [.int2, .int4, .int8, .fp16])
        // A token already at int4 can only stay at int4 or be dropped.
        #expect(p.hullSteps(rest: .dropped, ceiling: .int4).map(\.to) == [.int2, .int4])
        #expect(p.hullSteps(rest: .int2, ceiling: .fp16).map(\.to) == [.int4, .int8, .fp16])
    }

    @Test func defaultModelPrefersINT4ByAboutThirtyTwoTimes() throws {
        // Pages of one token: the bytes below are per token, by hand.
        let p = TieredPlanner(configuration: PlannerConfiguration(headDim: 64, formats: .grouped, pageCapacity: 1))
        let steps = p.hullSteps(rest: .dropped, ceiling: .fp16)
        #expect(steps.map(\.to) == [.int4, .int8, .fp16])
        let perByte = steps.map { $0.errorReduction / Double($0.byteCount) }
        #expect(abs(perByte[0] / perByte[1] - 31.6) < 0.1)
        // Uniform scores at a quarter of the FP16 bytes (27,200 B; 36 protected tokens take 9,792): no
        // score is 31.6× another that is left out, so every available byte goes to INT4: ⌊17,408 / 96⌋ = 181.
        var g = SeededGenerator(seed: 12)
        let n = 400
        let uniform = (0..<n).map { _ in Float.random(in: 1..<1000, using: &g) }
        let a = try p.plan(.prefill(tokenCount: n, hostScores: uniform, queryHeadScores: nil), budget: .fraction(0.25))
        #expect(a.tokenCount(.int4) == 181 && a.tokenCount(.int8) == 0 && a.tokenCount(.fp16) == 36, "seed \(g.seed)")
        // Heavy-tailed scores (u⁸): outliers more than 31.6× the best dropped score are lifted to INT8.
        let heavy = (0..<n).map { _ in Float(pow(Double.random(in: 0..<1, using: &g), 8) * 1000) }
        let b = try p.plan(.prefill(tokenCount: n, hostScores: heavy, queryHeadScores: nil), budget: .fraction(0.25))
        #expect(b.tokenCount(.int8) > 0 && b.tokenCount(.int4) > 0 && b.tokenCount(.dropped) > 0, "seed \(g.seed)")
        #expect(b.byteCount <= b.budgetByteCount)
        // In pages of 16 (FP16 4,144 B, INT4 1,328 B) the budget is 25,900 B; the protected tokens take
        // three whole FP16 pages (48 slots for 36 tokens, 12,432 B); the 12 free slots go to the
        // best-scored tokens, and the 13,468 B left buy 10 INT4 pages.
        let paged = TieredPlanner(configuration: PlannerConfiguration(headDim: 64, formats: .grouped, pageCapacity: 16))
        let c = try paged.plan(.prefill(tokenCount: n, hostScores: uniform, queryHeadScores: nil), budget: .fraction(0.25))
        #expect(c.tokenCount(.fp16) == 48 && c.tokenCount(.int4) == 160 && c.tokenCount(.int8) == 0, "seed \(g.seed)")
        #expect(c.byteCount == 3 * (16 * 258 + 16) + 10 * (16 * 82 + 16) && c.byteCount <= c.budgetByteCount)
        let best = Set(TokenRanking.topIndices(Array(uniform[4..<368]), count: 12).map { $0 + 4 })
        #expect((4..<368).filter { c.tiers[$0] == .fp16 } == best.sorted(), "the free FP16 slots hold the best scores")
    }

    @Test func representativesOfTheTail() throws {
        // 8 middle tokens; 30% of 330 available = 99 → 1 representative at int4; the 231 greedy bytes → 2 at
        // int4 (the 42 left buy no int4 → int8 step of 56).
        let s = StreamInput.prefill(tokenCount: 10, hostScores: [9, 8, 7, 6, 5, 4, 3, 2, 1, 9],
                                    queryHeadScores: ImportanceScores.random(headCount: 4, tokenCount: 10, seed: 3))
        let p = try planner([.int8: 0.01, .int4: 0.05])
        let a = try p.plan(s, budget: .bytes(544 + 330, representativeShare: 0.3))
        #expect(a.tokenCount(role: .kept) == 2 && a.tokenCount(role: .representative) == 1)
        #expect(a.tiers[1] == .int4 && a.tiers[2] == .int4)
        #expect(a.byteCount == 544 + 3 * 96)
    }

    @Test func propertiesOverSeededProblems() {
        var g = SeededGenerator(seed: 777)
        var planned = 0, mixed = 0
        for trial in 0..<1200 {
            let p = RandomProblem.draw(&g, hostScores: true)
            let tiers: [[Tier]] = [[.fp16, .int8, .int4], [.fp16, .int4], [.fp16, .int8, .int4, .int2]]
            let planner = TieredPlanner(configuration: p.configuration, candidateTiers: tiers[trial % 3])
            let context = "seed \(g.seed) trial \(trial): \(p)"
            guard let a = checkPlan(planner, p, context: context) else { continue }
            planned += 1
            if Set(a.tiers).count >= 3 { mixed += 1 }
            // A better-scored fresh token never gets a worse tier than a worse-scored one (greedy order).
            guard p.fresh, p.configuration.granularity == .token, let host = p.input.hostScores else { continue }
            let r = p.configuration.regions.split(tokenCount: p.input.tokenCount)
            let ranked = r.middle.filter { a.roles[$0] != .representative }
            for i in ranked { for j in ranked where host[i] > host[j] {
                #expect(a.tiers[i] <= a.tiers[j], "tier order \(i) vs \(j): \(context)")
            } }
        }
        #expect(planned > 400 && mixed > 100, "coverage \(planned) planned, \(mixed) mixed")
    }

    @Test func greedyIsOptimalUpToOneItemOnTinyProblems() throws {
        var g = SeededGenerator(seed: 31337)
        let model = TierErrorModel.derived(from: .grouped)
        let options: [Tier] = [.dropped, .int4, .int8, .fp16]
        for trial in 0..<400 {
            let m = Int.random(in: 1...5, using: &g)
            let scores = (0..<m).map { _ in Float(Int.random(in: 0...20, using: &g)) / 4 }
            let s = StreamInput.prefill(tokenCount: m, hostScores: scores, queryHeadScores: nil)
            // Pages of one token: the brute force below can cost per token.
            let config = PlannerConfiguration(headDim: 64, regions: StreamRegions(sinkTokenCount: 0, recentTokenCount: 0),
                                              formats: .grouped, pageCapacity: 1)
            let budget = Int.random(in: 0...(m * 260), using: &g)
            let a = try TieredPlanner(configuration: config).plan(s, budget: .bytes(budget))
            func error(_ tiers: [Tier]) -> Double {
                zip(scores, tiers).reduce(0) { $0 + Double($1.0) * model.relativeError($1.1) }
            }
            // Brute force over every assignment within the budget.
            var best = Double.infinity
            var assignment = [Int](repeating: 0, count: m)
            while true {
                let tiers = assignment.map { options[$0] }
                if config.costs.byteCount(tiers: tiers) <= budget { best = min(best, error(tiers)) }
                var i = 0
                while i < m && assignment[i] == options.count - 1 { assignment[i] = 0; i += 1 }
                if i == m { break }
                assignment[i] += 1
            }
            let greedy = error(a.tiers)
            let context = "seed \(g.seed) trial \(trial) scores \(scores) budget \(budget) tiers \(a.tiers)"
            #expect(greedy >= best - 1e-9, "\(context)")
            #expect(greedy <= best + Double(scores.max()!) + 1e-9, "\(context)")
        }
    }
}
