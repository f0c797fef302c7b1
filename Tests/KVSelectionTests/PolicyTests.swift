import Testing
import KVQuantization
import TestSupport
@testable import KVSelection

@Suite struct PolicyTests {
    @Test func rankingBreaksTiesToTheLaterToken() {
        #expect(TokenRanking.descendingOrder([1, 3, 3, 2]) == [2, 1, 3, 0])
        #expect(TokenRanking.topIndices([1, 3, 3, 2], count: 1) == [2])
        #expect(TokenRanking.topIndices([0, 0, 0, 0], count: 2) == [2, 3])
        #expect(TokenRanking.topIndices([1, 2], count: 5) == [0, 1])
        #expect(TokenRanking.topIndices([2, 1, 2], count: 3) == [0, 1, 2])
        #expect(TokenRanking.topIndices([], count: 0) == [])
    }

    @Test func regionsSplitShortAndLongStreams() {
        let r = StreamRegions(sinkTokenCount: 2, recentTokenCount: 3)
        #expect(r.split(tokenCount: 10) == RegionRanges(sinks: 0..<2, middle: 2..<7, recent: 7..<10))
        #expect(r.split(tokenCount: 4) == RegionRanges(sinks: 0..<2, middle: 2..<2, recent: 2..<4))
        #expect(r.split(tokenCount: 1) == RegionRanges(sinks: 0..<1, middle: 1..<1, recent: 1..<1))
    }

    let regions = StreamRegions(sinkTokenCount: 2, recentTokenCount: 2)
    /// Middle = tokens 2...7.
    let scores: [Float] = [9, 9, 0.1, 0.5, 0.5, 0.9, 0.2, 0.5, 9, 9]

    /// Neither needs scores: `full` keeps everything, StreamingLLM the sinks and the latest tokens
    /// (its window widened by the middle budget), and its host scores rank by position.
    @Test func fullAndStreamingLLMIgnoreScores() {
        #expect(EvictionPolicy.full.keptTokenIndices(tokenCount: 10, regions: regions, scores: nil, middleTokenBudget: 0)
                == Array(0..<10))
        #expect(EvictionPolicy.streamingLLM.keptTokenIndices(tokenCount: 10, regions: regions, scores: nil, middleTokenBudget: 3)
                == [0, 1, 5, 6, 7, 8, 9])
        #expect(EvictionPolicy.streamingLLM.keptTokenIndices(tokenCount: 10, regions: regions, scores: nil, middleTokenBudget: 0)
                == [0, 1, 8, 9])
        let positions: [Int32] = [0, 3, 4, 9]
        #expect(EvictionPolicy.streamingLLM.hostScores(positions: positions, kvHeadScores: nil, kvHead: 0) == [1, 4, 5, 10])
        #expect(EvictionPolicy.full.hostScores(positions: positions, kvHeadScores: nil, kvHead: 0) == nil)
    }

    @Test func scoredPoliciesKeepTopBWithLaterTies() {
        // 0.9 at 5, then the 0.5 tie among 3, 4, 7 goes to 7 and 4.
        for policy in [EvictionPolicy.h2o(), .snapKV(), .tova, .random(seed: 1), .pyramidKV()] {
            #expect(policy.keptTokenIndices(tokenCount: 10, regions: regions, scores: scores, middleTokenBudget: 3)
                    == [0, 1, 4, 5, 7, 8, 9], "\(policy)")
        }
    }

    /// Per-policy scores from one set of weights: 1 head, 4 queries (positions 4...7) over 8 keys.
    func weights() throws -> AttentionWeights {
        var v = [Float](repeating: 0, count: 4 * 8)
        // query 0 → key 2, query 1 → key 3, query 2 → key 3, query 3 → keys 2 and 4.
        v[0 * 8 + 2] = 1; v[1 * 8 + 3] = 1; v[2 * 8 + 3] = 1; v[3 * 8 + 2] = 0.5; v[3 * 8 + 4] = 0.5
        return try AttentionWeights(headCount: 1, queryCount: 4, keyCount: 8, values: v)
    }

    func picks(_ policy: EvictionPolicy) throws -> [Int] {
        let s = policy.queryHeadScores(try weights())!.scores(head: 0)
        return policy.keptTokenIndices(tokenCount: 8, regions: StreamRegions(sinkTokenCount: 1, recentTokenCount: 1),
                                       scores: s, middleTokenBudget: 1)
    }

    @Test func eachScoredPolicyPicksItsOwnToken() throws {
        // H2O: key 2 = 1.5, key 3 = 2, key 4 = 0.5 → 3.
        #expect(try picks(.h2o()) == [0, 3, 7])
        // H2O normalised: key 2: 1.5/4, key 3: 2/4, key 4: 0.5/4 (all 4 queries see keys ≤ 4) → 3.
        #expect(try picks(.h2o(.visibleQueryCount)) == [0, 3, 7])
        // TOVA: last query → keys 2 and 4 tie at 0.5 → the later, 4.
        #expect(try picks(.tova) == [0, 4, 7])
        // SnapKV with W = 1 and no pooling is TOVA; with W = 3, pooling off: key 2 = 0.5, 3 = 1, 4 = 0.5 → 3.
        #expect(try picks(.snapKV(SnapKVOptions(observationQueryCount: 1, poolWidth: 1))) == [0, 4, 7])
        #expect(try picks(.snapKV(SnapKVOptions(observationQueryCount: 3, poolWidth: 1))) == [0, 3, 7])
        // SnapKV default (W = 32 → all 4 queries, max-pool 7): keys 1...6 all reach 2 → the latest middle, 6.
        #expect(try picks(.snapKV()) == [0, 6, 7])
        // Random, seed 7: scores 0.390, 0.017, 0.901, 0.583, 0.452, 0.249, 0.468, 0.328 → middle best is 2.
        #expect(try picks(.random(seed: 7)) == [0, 2, 7])
        #expect(EvictionPolicy.streamingLLM.queryHeadScores(try weights()) == nil)
    }

    @Test func randomPolicyOnTenTokens() {
        let s = ImportanceScores.random(headCount: 1, tokenCount: 10, seed: 7).scores(head: 0)
        #expect(EvictionPolicy.random(seed: 7).keptTokenIndices(tokenCount: 10, regions: regions, scores: s, middleTokenBudget: 3)
                == [0, 1, 2, 3, 6, 8, 9])
    }

    @Test func pyramidBudgetsFallLinearlyWithTheSameTotal() {
        // b = 10, last = 0.5, first = 19.5: 19.5, 13.17, 6.83, 0.5 → floors 19, 13, 6, 0 (+2: layers 2, 0).
        #expect(PyramidBudget.layerBudgets(total: 40, layerCount: 4, beta: 20) == [20, 13, 7, 0])
        #expect(PyramidBudget.layerBudgets(total: 40, layerCount: 4, beta: 1) == [10, 10, 10, 10])
        #expect(PyramidBudget.layerBudgets(total: 7, layerCount: 1) == [7])
        var g = SeededGenerator(seed: 5)
        for _ in 0..<500 {
            let total = Int.random(in: 0...100_000, using: &g), layers = Int.random(in: 1...40, using: &g)
            let beta = Double.random(in: 1...30, using: &g)
            let b = PyramidBudget.layerBudgets(total: total, layerCount: layers, beta: beta)
            #expect(b.reduce(0, +) == total, "seed \(g.seed) total \(total) layers \(layers)")
            #expect(zip(b, b.dropFirst()).allSatisfy { $0 + 1 >= $1 }, "not falling: \(b), seed \(g.seed)")
            #expect(b.allSatisfy { $0 >= 0 })
        }
    }
}
