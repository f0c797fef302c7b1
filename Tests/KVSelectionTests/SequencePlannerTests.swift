import Foundation
import Testing
import KVQuantization
import TestSupport
@testable import KVSelection

/// Causal softmax weights from seeded Gaussian logits: `[heads][queries][keys]`, queries = keys.
func randomPrefillWeights(_ g: inout SeededGenerator, heads: Int, tokens: Int) throws -> AttentionWeights {
    var v = [Float](repeating: 0, count: heads * tokens * tokens)
    for h in 0..<heads {
        for q in 0..<tokens {
            let logits = (0...q).map { _ in Float(g.nextGaussian()) * 2 }
            let m = logits.max()!
            let e = logits.map { Float(exp(Double($0 - m))) }
            let sum = e.reduce(0, +)
            for k in 0...q { v[(h * tokens + q) * tokens + k] = e[k] / sum }
        }
    }
    return try AttentionWeights(headCount: heads, queryCount: tokens, keyCount: tokens, values: v)
}

@Suite struct SequencePlannerTests {
    /// Grouped formats in pages of one token: whole pages cost exactly the per-token bytes.
    let planner = BudgetPlanner(configuration: PlannerConfiguration(
        headDim: 64, regions: StreamRegions(sinkTokenCount: 1, recentTokenCount: 1), formats: .grouped, pageCapacity: 1))

    func layers() throws -> [AttentionWeights] {
        var g = SeededGenerator(seed: 8)
        return [try randomPrefillWeights(&g, heads: 4, tokens: 12), try randomPrefillWeights(&g, heads: 4, tokens: 12)]
    }

    @Test func h2oFromWeightsToARetentionPlan() throws {
        let weights = try layers()
        let plan = try SequencePlanner(policy: .h2o(), kvHeadCount: 2).planPrefill(
            layerWeights: weights, planner: planner, budget: .fraction(0.5))
        #expect(plan.streams.map { [$0.layer, $0.kvHead] } == [[0, 0], [0, 1], [1, 0], [1, 1]])
        for stream in plan.streams {
            // 0.5 · 12 · 260 = 1560: 520 protected, 4 middle tokens kept, 6 dropped.
            let kvScores = ImportanceScores.h2o(weights[stream.layer]).groupedByKVHead(kvHeadCount: 2).scores(head: stream.kvHead)
            let kept = EvictionPolicy.h2o().keptTokenIndices(
                tokenCount: 12, regions: planner.configuration.regions, scores: kvScores, middleTokenBudget: 4)
            let dropped = (0..<12).filter { !kept.contains($0) }.map { StreamPlan.Move(position: Int32($0), tier: .dropped) }
            #expect(stream.moves == dropped, "layer \(stream.layer) kv \(stream.kvHead)")
        }
    }

    @Test func fullAndStreamingLLM() throws {
        let full = try SequencePlanner(policy: .full, kvHeadCount: 2).planPrefill(
            layerWeights: try layers(), planner: planner, budget: .fraction(0.1))
        #expect(full.streams.count == 4 && full.streams.allSatisfy { $0.moves.isEmpty })
        // StreamingLLM keeps the latest middle tokens the budget holds: (1560 − 520) / 260 = 4.
        let streaming = try SequencePlanner(policy: .streamingLLM, kvHeadCount: 2).planPrefill(
            layerWeights: try layers(), planner: planner, budget: .fraction(0.5))
        #expect(streaming.streams.allSatisfy { $0.moves.map(\.position) == Array(1...6) })
    }

    @Test func pyramidKVShiftsBytesToEarlyLayers() throws {
        // Middle bytes per layer: 1560 − 520 = 1040; total 2080 split β = 20 → 2028, 52:
        // layer 0 keeps ⌊2028/260⌋ = 7 middle tokens, layer 1 none.
        let plan = try SequencePlanner(policy: .pyramidKV(), kvHeadCount: 1).planPrefill(
            layerWeights: try layers(), planner: planner, budget: .fraction(0.5))
        #expect(plan.streams.map(\.moves.count) == [3, 10])
    }

    @Test func tieredPlannerWithRepresentatives() throws {
        let tiered = TieredPlanner(configuration: PlannerConfiguration(
            headDim: 64, regions: StreamRegions(sinkTokenCount: 1, recentTokenCount: 1), formats: .grouped, pageCapacity: 1))
        let plan = try SequencePlanner(policy: .snapKV(), kvHeadCount: 2).planPrefill(
            layerWeights: try layers(), planner: tiered, budget: .fraction(0.3, representativeShare: 0.2))
        #expect(plan.streams.count == 4)
        for s in plan.streams {
            #expect(!s.moves.isEmpty && s.moves.allSatisfy { $0.position != 0 && $0.position != 11 })
        }
    }

    /// Layers' scores and streams' plans are spread over threads: the plan is the same for every
    /// thread count, for each planner and policy, with per-layer budgets.
    @Test func plansAreTheSameForEveryThreadCount() throws {
        var g = SeededGenerator(seed: 31)
        let weights = try (0..<6).map { _ in try randomPrefillWeights(&g, heads: 4, tokens: 40) }
        let configuration = PlannerConfiguration(headDim: 64, regions: StreamRegions(sinkTokenCount: 2, recentTokenCount: 4),
                                                 formats: .grouped, pageCapacity: 4)
        let planners: [(String, any StreamPlanner)] = [
            ("budget", BudgetPlanner(configuration: configuration)), ("plain", PlainPlanner(configuration: configuration)),
            ("tiered", TieredPlanner(configuration: configuration)),
        ]
        let budgets = (0..<6).map { ByteBudget.fraction(0.3 + 0.1 * Double($0)) }
        for (name, planner) in planners {
            for policy in [EvictionPolicy.snapKV(), .h2o(), .pyramidKV()] {
                var sequence = SequencePlanner(policy: policy, kvHeadCount: 2)
                sequence.threadCount = 1
                let one = try sequence.planPrefill(layerWeights: weights, planners: Array(repeating: planner, count: 6), budgets: budgets)
                for threads in [2, 5, nil] {
                    sequence.threadCount = threads
                    let other = try sequence.planPrefill(layerWeights: weights, planners: Array(repeating: planner, count: 6), budgets: budgets)
                    #expect(other == one, "seed 31 \(name) \(policy) threads \(threads.map(String.init) ?? "all")")
                }
            }
        }
    }

    /// With several streams failing, the error thrown is the first in layer order, whatever the threads.
    @Test func theFirstFailingStreamInOrderThrows() throws {
        let weights = try layers() + layers()
        let budgets: [ByteBudget] = [.fraction(0.5), .bytes(10), .fraction(0.5), .bytes(20)]
        // Layer 1's error alone (its budget of 10 bytes names it; layer 3's would say 20).
        var alone = SequencePlanner(policy: .h2o(), kvHeadCount: 2)
        alone.threadCount = 1
        let expected = #expect(throws: SelectionError.self) {
            try alone.planPrefill(layerWeights: [weights[1]], planners: [planner], budgets: [.bytes(10)])
        }
        guard case .budgetBelowProtectedTokens(_, budgetByteCount: 10)? = expected else {
            Issue.record("layer 1 alone threw \(String(describing: expected))")
            return
        }
        for threads in [1, 2, 4] {
            var sequence = SequencePlanner(policy: .h2o(), kvHeadCount: 2)
            sequence.threadCount = threads
            #expect(throws: expected!, "threads \(threads)") {
                try sequence.planPrefill(layerWeights: weights, planners: Array(repeating: planner, count: 4), budgets: budgets)
            }
        }
    }
}
