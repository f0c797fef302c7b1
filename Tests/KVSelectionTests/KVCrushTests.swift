import Testing
import KVQuantization
import TestSupport
@testable import KVSelection

@Suite struct KVCrushTests {
    /// 3 query heads × 4 middle tokens.
    /// head 0: top 2 = tokens 0, 2.  head 1: 2, then the 0.1 tie → the later 3.  head 2: 1, then → 3.
    /// Signatures (bit h): t0 = {0}, t1 = {2}, t2 = {0, 1}, t3 = {1, 2}.
    let middle = ImportanceScores(headCount: 3, tokenCount: 4, values: [
        0.4, 0.1, 0.3, 0.2,
        0.1, 0.1, 0.5, 0.1,
        0.2, 0.9, 0.2, 0.2,
    ])

    func bits(_ s: BitSignatures, _ unit: Int) -> [Int] {
        (0..<s.bitCount).filter { s.bit(unit: unit, index: $0) }
    }

    @Test func perHeadSignaturesMarkTheTopHalfOfEachHead() {
        let s = BitSignatures.perHead(middleScores: middle)
        #expect((0..<4).map { bits(s, $0) } == [[0], [2], [0, 1], [1, 2]])
    }

    @Test func headSummedSignaturesHaveOneBit() {
        // Sums 0.7, 1.1, 1.0, 0.5 → top 2 = tokens 1, 2.
        let s = BitSignatures.headSummed(middleScores: middle)
        #expect(s.bitCount == 1)
        #expect((0..<4).map { bits(s, $0) } == [[], [0], [0], []])
    }

    func distances(_ anchor: Anchor, candidates: [Int] = [0, 1, 2, 3]) -> [Int] {
        let s = BitSignatures.perHead(middleScores: middle)
        let a = anchor.bits(for: s, candidates: candidates)
        return candidates.map { s.distance(unit: $0, to: a) }
    }

    @Test func everyAnchorByHand() {
        #expect(Anchor.zeros.bits(for: BitSignatures.perHead(middleScores: middle), candidates: []).bits == [false, false, false])
        #expect(distances(.zeros) == [1, 1, 2, 2])
        #expect(distances(.ones) == [2, 2, 1, 1])
        // alternate: a = {1}.
        #expect(distances(.alternate) == [2, 2, 1, 1])
        // random seed 0: top bits 1, 0, 0 → a = {0}.
        #expect(Anchor.random(seed: 0).bits(for: BitSignatures.perHead(middleScores: middle), candidates: []).bits == [true, false, false])
        #expect(distances(.random(seed: 0)) == [0, 2, 1, 3])
        // seed 42: top bits 1, 0, 0, 0, 0, 1, 0, 1.
        let eight = BitSignatures(unitCount: 0, bitCount: 8, bitsPerToken: 8)
        #expect(Anchor.random(seed: 42).bits(for: eight, candidates: []).bits == [true, false, false, false, false, true, false, true])
        // mean over all four: every bit is set in exactly 2 of 4 → not more than half → zeros.
        #expect(distances(.mean) == distances(.zeros))
        // mean over {0, 2, 3}: bit 0 in 2 of 3, bit 1 in 2 of 3, bit 2 in 1 of 3 → a = {0, 1}.
        #expect(distances(.mean, candidates: [0, 2, 3]) == [1, 0, 2])
    }

    @Test func representativesByHand() {
        func reps(_ anchor: Anchor, _ count: Int, _ candidates: [Int] = [0, 1, 2, 3],
                  spacing: RepresentativeSpacing = .evenIncludingEnds) -> [Int] {
            let s = BitSignatures.perHead(middleScores: middle)
            return KVCrushSelector(anchor: anchor, spacing: spacing).representatives(signatures: s, candidates: candidates, count: count)
        }
        // zeros: order t0(1), t1(1), t2(2), t3(2).
        #expect(reps(.zeros, 2) == [0, 3])
        #expect(reps(.zeros, 3) == [0, 2, 3])  // indices 0, round(1.5) = 2, 3
        #expect(reps(.zeros, 1) == [0])
        #expect(reps(.zeros, 0) == [])
        #expect(reps(.zeros, 4) == [0, 1, 2, 3])
        #expect(reps(.zeros, 9) == [0, 1, 2, 3])
        // ones: order t2(1), t3(1), t0(2), t1(2).
        #expect(reps(.ones, 2) == [1, 2])
        #expect(reps(.ones, 1) == [2])
        // alternate: same distances as ones.
        #expect(reps(.alternate, 2) == [1, 2])
        // random(0): order t0(0), t2(1), t1(2), t3(3).
        #expect(reps(.random(seed: 0), 2) == [0, 3])
        #expect(reps(.random(seed: 0), 3) == [0, 1, 3])  // order indices 0, 2, 3 → t0, t1, t3
        // mean over {0, 2, 3}: order t2(0), t0(1), t3(2).
        #expect(reps(.mean, 1, [0, 2, 3]) == [2])
        #expect(reps(.mean, 2, [0, 2, 3]) == [2, 3])
        // OpenVINO stride: ⌊4/3⌋ = 1 → order indices 0, 1, 2 (never the far end).
        #expect(reps(.zeros, 3, spacing: .openVINOStride) == [0, 1, 2])
        #expect(reps(.zeros, 2, spacing: .openVINOStride) == [0, 2])
    }

    @Test func spreadIndicesIncludeBothEnds() {
        #expect(KVCrushSelector.spreadIndices(candidateCount: 10, count: 4) == [0, 3, 6, 9])
        #expect(KVCrushSelector.spreadIndices(candidateCount: 10, count: 3) == [0, 5, 9])  // 4.5 rounds up
        #expect(KVCrushSelector.spreadIndices(candidateCount: 5, count: 1) == [0])
        #expect(KVCrushSelector.spreadIndices(candidateCount: 5, count: 0) == [])
        #expect(KVCrushSelector.spreadIndices(candidateCount: 3, count: 7) == [0, 1, 2])
        #expect(KVCrushSelector.spreadIndices(candidateCount: 10, count: 3, spacing: .openVINOStride) == [0, 3, 6])
    }

    @Test func pageSignaturesLayTokensEndToEnd() {
        let pages = BitSignatures.perHead(middleScores: middle).pages(tokenCount: 2)
        #expect(pages.unitCount == 2 && pages.bitCount == 6)
        #expect(bits(pages, 0) == [0, 5])        // t0 {0} at slot 0, t1 {2} at slot 1 → 3 + 2
        #expect(bits(pages, 1) == [0, 1, 4, 5])  // t2 {0, 1}, t3 {1, 2} → 3 + 1, 3 + 2
        // alternate on pages: head h of each slot → bits 1 and 4.
        let a = Anchor.alternate.bits(for: pages, candidates: [0, 1])
        #expect(a.bits == [false, true, false, false, true, false])
        #expect(pages.distance(unit: 0, to: a) == 4 && pages.distance(unit: 1, to: a) == 2)
        // A short last page is padded with zeros.
        let three = BitSignatures.perHead(middleScores: middle).pages(tokenCount: 3)
        #expect(three.unitCount == 2 && bits(three, 1) == [1, 2])
        // Page selection end to end: host keeps page 1; the only candidate is page 0.
        let sel = KVCrushSelector(anchor: .zeros)
        #expect(sel.selectPages(middleScores: middle, pageTokenCount: 2, hostKeptPages: [1], count: 1) == [0])
    }

    @Test func signaturesWiderThanOneWord() {
        // 70 heads; token 1 is in the top half of every head, token 0 of none.
        let h = 70
        var v: [Float] = []
        for _ in 0..<h { v += [0, 1] }
        let s = BitSignatures.perHead(middleScores: ImportanceScores(headCount: h, tokenCount: 2, values: v))
        #expect(s.wordsPerUnit == 2)
        #expect(s.distance(unit: 1, to: BitVector(bitCount: h)) == 70)
        #expect(s.distance(unit: 0, to: BitVector(bitCount: h)) == 0)
        #expect(s.distance(unit: 1, to: Anchor.ones.bits(for: s, candidates: [])) == 0)
        #expect(s.distance(unit: 1, to: Anchor.alternate.bits(for: s, candidates: [])) == 35)
    }

    /// Random signatures with `h` bits for `n` units.
    func randomSignatures(_ g: inout SeededGenerator, units n: Int, bits h: Int) -> BitSignatures {
        var s = BitSignatures(unitCount: n, bitCount: h, bitsPerToken: h)
        // Skewed bit probabilities so that distances cluster in buckets.
        let p = (0..<h).map { _ in Double.random(in: 0...1, using: &g) }
        for u in 0..<n { for b in 0..<h where Double.random(in: 0...1, using: &g) < p[b] { s.setBit(unit: u, index: b) } }
        return s
    }

    @Test func representativePropertiesOverSeededSignatures() {
        var g = SeededGenerator(seed: 2026)
        let anchors: [Anchor] = [.random(seed: 3), .zeros, .ones, .mean, .alternate]
        for trial in 0..<1500 {
            let n = Int.random(in: 1...120, using: &g), h = Int.random(in: 1...130, using: &g)
            let s = randomSignatures(&g, units: n, bits: h)
            let candidates = (0..<n).filter { _ in Bool.random(using: &g) }
            let count = Int.random(in: 0...(candidates.count + 2), using: &g)
            let selector = KVCrushSelector(anchor: anchors[trial % anchors.count])
            let reps = selector.representatives(signatures: s, candidates: candidates, count: count)
            let ctx = "seed \(g.seed) trial \(trial) n \(n) h \(h) |C| \(candidates.count) B_c \(count)"
            #expect(reps == selector.representatives(signatures: s, candidates: candidates, count: count), "\(ctx)")
            #expect(Set(reps).isSubset(of: candidates) && Set(reps).count == reps.count, "\(ctx)")
            #expect(reps.count == min(count, candidates.count), "\(ctx)")
            if count >= candidates.count { #expect(reps == candidates, "\(ctx)") }
            guard count >= 1, count < candidates.count else { continue }
            let ranked = selector.rankedCandidates(signatures: s, candidates: candidates)
            #expect(reps.contains(ranked.first!.unit), "closest missing: \(ctx)")
            if count >= 2 { #expect(reps.contains(ranked.last!.unit), "farthest missing: \(ctx)") }
            // Each distance bucket (a run of m entries) gets m·(B_c−1)/(|C|−1) picks, rounded either way:
            // within ±1 of the bucket's proportional share along the spread.
            guard count >= 2 else { continue }
            let repSet = Set(reps)
            var buckets: [Int: (size: Int, picked: Int)] = [:]
            for r in ranked { buckets[r.distance, default: (0, 0)].size += 1; if repSet.contains(r.unit) { buckets[r.distance]!.picked += 1 } }
            for (d, b) in buckets {
                let share = Double(b.size * (count - 1)) / Double(candidates.count - 1)
                #expect(Double(b.picked) >= share.rounded(.down) && Double(b.picked) <= share.rounded(.up),
                        "bucket d=\(d) size \(b.size) got \(b.picked), share \(share): \(ctx)")
                // And within 2 of the naive |bucket|/|C|·B_c (they differ by less than 1).
                #expect(abs(Double(b.picked) - Double(b.size * count) / Double(candidates.count)) < 2, "\(ctx)")
            }
        }
    }

    @Test func selectTokensExcludesHostKept() {
        var g = SeededGenerator(seed: 99)
        for _ in 0..<300 {
            let n = Int.random(in: 0...60, using: &g), h = Int.random(in: 1...12, using: &g)
            let scores = ImportanceScores.random(headCount: h, tokenCount: n, seed: g.next())
            let kept = (0..<n).filter { _ in Int.random(in: 0..<4, using: &g) == 0 }
            let count = Int.random(in: 0...n, using: &g)
            let reps = KVCrushSelector().selectTokens(middleScores: scores, hostKept: kept, count: count)
            #expect(Set(reps).isDisjoint(with: kept), "seed \(g.seed)")
            #expect(reps.count == min(count, n - kept.count), "seed \(g.seed)")
        }
    }
}
