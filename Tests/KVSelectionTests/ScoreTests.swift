import Testing
import KVQuantization
import TestSupport
@testable import KVSelection

/// Approximate equality for hand-computed scores.
func close(_ a: [Float], _ b: [Float], tolerance: Float = 1e-5) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { abs($0 - $1) <= tolerance }
}

@Suite struct ScoreTests {
    @Test func splitMix64MatchesTheReferenceSequence() {
        var g = SplitMix64(seed: 0)
        #expect(g.next() == 0xE220_A839_7B1D_CDAF)
        #expect(g.next() == 0x6E78_9E6A_A1B9_65F4)
        #expect(g.next() == 0x06C4_5D18_8009_454F)
        var h = SplitMix64(seed: 0)
        #expect(h.nextUnitFloat() == Float(0xE220A8) * 0x1p-24)
        #expect(h.nextBit() == false)  // 0x6E… has top bit 0
    }

    @Test func weightsRejectBadInput() {
        #expect(throws: SelectionError.weightCountMismatch(expected: 4, actual: 3)) {
            try AttentionWeights(headCount: 1, queryCount: 2, keyCount: 2, values: [0, 0, 0])
        }
        #expect(throws: SelectionError.invalidWeight(index: 1, value: -1)) {
            try AttentionWeights(headCount: 1, queryCount: 1, keyCount: 2, values: [0, -1])
        }
        #expect(throws: SelectionError.self) {
            try AttentionWeights(headCount: 1, queryCount: 1, keyCount: 2, values: [.nan, 0])
        }
    }

    /// 2 heads, 3 queries (prefill), 3 keys, causal.
    func prefillWeights() throws -> AttentionWeights {
        try AttentionWeights(headCount: 2, queryCount: 3, keyCount: 3, values: [
            // head 0
            1, 0, 0,
            0.5, 0.5, 0,
            0.25, 0.25, 0.5,
            // head 1
            1, 0, 0,
            0.25, 0.75, 0,
            0.5, 0.25, 0.25,
        ])
    }

    @Test func h2oSumsAndNormalises() throws {
        let w = try prefillWeights()
        let plain = ImportanceScores.h2o(w)
        #expect(plain.values == [1.75, 0.75, 0.5, 1.75, 1.0, 0.25])
        // Visible query counts: key 0 by 3 queries, key 1 by 2, key 2 by 1.
        #expect((0..<3).map { w.visibleQueryCount(key: $0) } == [3, 2, 1])
        let norm = ImportanceScores.h2o(w, normalization: .visibleQueryCount)
        let expected: [Float] = [1.75 / 3, 0.375, 0.5, 1.75 / 3, 0.5, 0.25]
        #expect(close(norm.values, expected))
    }

    @Test func tovaTakesTheLastQuery() throws {
        let s = ImportanceScores.tova(try prefillWeights())
        #expect(s.values == [0.25, 0.25, 0.5, 0.5, 0.25, 0.25])
    }

    /// 1 head, 3 queries at positions 7, 8, 9 over 10 keys; only the last 2 are the observation window.
    func snapWeights() throws -> AttentionWeights {
        var v = [Float](repeating: 0, count: 30)
        v[0 * 10 + 0] = 1     // query 0 (outside the window) looks at key 0
        v[1 * 10 + 5] = 0.5   // query 1 looks at key 5
        v[2 * 10 + 5] = 0.5   // query 2 looks at key 5
        return try AttentionWeights(headCount: 1, queryCount: 3, keyCount: 10, values: v)
    }

    @Test func snapKVMaxPoolShrinksAtTheEdges() throws {
        let s = ImportanceScores.snapKV(try snapWeights(), options: SnapKVOptions(observationQueryCount: 2))
        // Raw window sum: key 5 = 1; width 7 spreads it to keys 2...8.
        #expect(s.values == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0])
        let noPool = ImportanceScores.snapKV(try snapWeights(), options: SnapKVOptions(observationQueryCount: 2, poolWidth: 1))
        #expect(noPool.values == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
        let all = ImportanceScores.snapKV(try snapWeights(), options: SnapKVOptions(observationQueryCount: 32, poolWidth: 1))
        #expect(all.values == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0])
    }

    @Test func snapKVAveragePoolDividesByTheKeysPresent() throws {
        let s = ImportanceScores.snapKV(try snapWeights(), options: SnapKVOptions(observationQueryCount: 2, pooling: .average))
        // Key 2: window 0...5 (6 keys); keys 3...5: full 7; key 6: 3...9 (7); key 7: 4...9 (6); key 8: 5...9 (5).
        let sixth: Float = 1.0 / 6, seventh: Float = 1.0 / 7, fifth: Float = 1.0 / 5
        let expected: [Float] = [0, 0, sixth, seventh, seventh, seventh, seventh, sixth, fifth, 0]
        #expect(close(s.values, expected))
    }

    @Test func randomScoresAreSeededAndPortable() {
        let s = ImportanceScores.random(headCount: 1, tokenCount: 3, seed: 7)
        #expect(close(s.values, [0.38982969, 0.01678824, 0.90076065], tolerance: 1e-7))
        #expect(s == ImportanceScores.random(headCount: 1, tokenCount: 3, seed: 7))
        #expect(s != ImportanceScores.random(headCount: 1, tokenCount: 3, seed: 8))
    }

    @Test func groupedQueryHeadsReduceByMeanOrMax() {
        // 4 query heads, 2 tokens; KV head 0 serves query heads 0, 1; KV head 1 serves 2, 3.
        let s = ImportanceScores(headCount: 4, tokenCount: 2, values: [1, 4, 3, 0, 2, 2, 6, 1])
        #expect(s.groupedByKVHead(kvHeadCount: 2).values == [2, 2, 4, 1.5])
        #expect(s.groupedByKVHead(kvHeadCount: 2, reduction: .max).values == [3, 4, 6, 2])
        #expect(s.groupedByKVHead(kvHeadCount: 4) == s)
        #expect(s.groupedByKVHead(kvHeadCount: 1).values == [3, 1.75])
    }

    @Test func accumulatorAddsPrefillThenDecodeQueries() throws {
        var acc = H2OAccumulator(headCount: 2)
        acc.add(try prefillWeights())
        #expect(acc.tokenCount == 3)
        #expect(acc.visibleQueryCounts == [3, 2, 1])
        acc.appendPositions(count: 1)
        // Decode query at position 3; the stream no longer holds position 1.
        try acc.add(queryWeights: [0.5, 0.25, 0.25, /* head 1 */ 0, 0.5, 0.5], keyPositions: [0, 2, 3])
        #expect(acc.visibleQueryCounts == [4, 2, 2, 1])
        let s = acc.scores(at: [0, 1, 2, 3])
        #expect(s.values == [2.25, 0.75, 0.75, 0.25, 1.75, 1.0, 0.75, 0.5])
        let n = acc.scores(at: [0, 3], normalization: .visibleQueryCount)
        let expected: [Float] = [2.25 / 4, 0.25, 1.75 / 4, 0.5]
        #expect(n.values == expected)
        #expect(throws: SelectionError.weightCountMismatch(expected: 2, actual: 1)) {
            try acc.add(queryWeights: [1], keyPositions: [0])
        }
    }

    @Test func accumulatorGrowsPastItsCapacity() throws {
        var acc = H2OAccumulator(headCount: 3)
        var g = SeededGenerator(seed: 11)
        var expected = [Float](repeating: 0, count: 3 * 100)
        for t in 0..<100 {
            acc.appendPositions(count: 1)
            let keys = (0...t).map { Int32($0) }
            let w = (0..<(3 * keys.count)).map { _ in Float(Int.random(in: 0...4, using: &g)) }
            try acc.add(queryWeights: w, keyPositions: keys)
            for h in 0..<3 { for k in 0...t { expected[h * 100 + k] += w[h * keys.count + k] } }
        }
        #expect(acc.scores(at: (0..<100).map { Int32($0) }).values == expected, "seed \(g.seed)")
    }

    /// Adding a layer's streams at once (`add(streamCount:…)`) gives the sums, bit for bit, and the
    /// visible counts of adding each query over the union of the streams' positions: streams with
    /// overlapping, disjoint, empty, single or mostly consecutive positions, weights with zeros, 1–3 queries.
    @Test func streamAddMatchesQueryByQueryAddOverTheUnion() throws {
        try forEachSeededCase(200, base: 4100) { g in
            let streams = Int.random(in: 1...4, using: &g), group = Int.random(in: 1...3, using: &g)
            let heads = streams * group, nq = Int.random(in: 1...3, using: &g)
            var fast = H2OAccumulator(headCount: heads), slow = fast
            var tracked = 0
            for _ in 0..<Int.random(in: 1...6, using: &g) {
                let grow = Int.random(in: 0...40, using: &g)
                fast.appendPositions(count: grow)
                slow.appendPositions(count: grow)
                tracked += grow
                let positions: [[Int32]] = (0..<streams).map { _ in
                    switch Int.random(in: 0..<6, using: &g) {
                    case 0: return []
                    case 1: return tracked == 0 ? [] : [Int32.random(in: 0..<Int32(tracked), using: &g)]
                    // Mostly consecutive runs (the eight-wide adds) with a few gaps.
                    case 2: return (0..<Int32(tracked)).filter { _ in Double.random(in: 0..<1, using: &g) < 0.97 }
                    default: return (0..<Int32(tracked)).filter { _ in Double.random(in: 0..<1, using: &g) < 0.6 }
                    }
                }
                let weights = positions.map { p in
                    (0..<(group * nq * p.count)).map { _ in Bool.random(using: &g) ? 0 : Float.random(in: 0..<1, using: &g) }
                }
                try fast.add(streamCount: streams, groupSize: group, queryCount: nq, positions: { positions[$0] }, weights: { weights[$0] })
                let union = Set(positions.joined()).sorted()
                let index = Dictionary(uniqueKeysWithValues: union.enumerated().map { ($1, $0) })
                for q in 0..<nq {
                    var row = [Float](repeating: 0, count: heads * union.count)
                    for s in 0..<streams {
                        for gh in 0..<group {
                            for (k, p) in positions[s].enumerated() {
                                row[(s * group + gh) * union.count + index[p]!] = weights[s][(gh * nq + q) * positions[s].count + k]
                            }
                        }
                    }
                    try slow.add(queryWeights: row, keyPositions: union)
                }
            }
            let all = (0..<Int32(tracked)).map { $0 }
            #expect(fast.scores(at: all).values.map(\.bitPattern) == slow.scores(at: all).values.map(\.bitPattern), "seed \(g.seed)")
            #expect(fast.visibleQueryCounts == slow.visibleQueryCounts, "seed \(g.seed)")
            #expect(fast == slow, "seed \(g.seed)")
        }
        var acc = H2OAccumulator(headCount: 2)
        acc.appendPositions(count: 2)
        #expect(throws: SelectionError.invalidWeight(index: 1, value: -1)) {
            try acc.add(streamCount: 1, groupSize: 2, queryCount: 1, positions: { _ in [1] }, weights: { _ in [0.5, -1] })
        }
        #expect(throws: SelectionError.weightCountMismatch(expected: 2, actual: 1)) {
            try acc.add(streamCount: 1, groupSize: 2, queryCount: 1, positions: { _ in [1] }, weights: { _ in [0.5] })
        }
        // The first bad weight is named, whichever kind: ∞, NaN, the largest finite and −0 are fine or not as they should be.
        #expect(throws: SelectionError.invalidWeight(index: 3, value: .infinity)) {
            try acc.add(streamCount: 1, groupSize: 2, queryCount: 1, positions: { _ in [0, 1] },
                        weights: { _ in [-0.0, .greatestFiniteMagnitude, 0.5, .infinity] })
        }
        do {
            try acc.add(streamCount: 1, groupSize: 2, queryCount: 1, positions: { _ in [1] }, weights: { _ in [0.5, .nan] })
            Issue.record("NaN weight accepted")
        } catch {
            guard case .invalidWeight(1, let v) = error, v.isNaN else { Issue.record("\(error)"); return }
        }
        #expect(acc.visibleQueryCounts == [0, 0] && acc.sum(head: 1, position: 1) == 0)
    }
}
