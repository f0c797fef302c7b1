import Foundation
import Testing
import TestSupport
@testable import KVQuantization

/// `PageKernels.normalizedWeights` (the read path's returned weights) against its Swift path, bit
/// for bit where Swift's `exp(Float)` is glibc's (Linux), within one ulp of the exp elsewhere; on
/// the current kernel path (the AVX2 kernel on AVX2 and AVX-512 machines).
@Suite struct NormalizedWeightsTests {
    static func agree(_ a: Float, _ b: Float) -> Bool {
        #if canImport(Glibc)
        a.bitPattern == b.bitPattern
        #else
        a == b || abs(a - b) <= 2 * max(a.ulp, b.ulp)
        #endif
    }

    /// Random rows (shuffled orders, masked scores, lengths covering the 8-lane loop and its tail).
    @Test func equalsPortablePath() {
        forEachSeededCase(80, base: 9100) { g in
            let n = Int.random(in: 0...70, using: &g), spread = [Float(1), 10, 60].randomElement(using: &g)!
            var scores = (0..<n).map { _ in Float(g.nextGaussian()) * spread }
            for i in scores.indices where Int.random(in: 0..<5, using: &g) == 0 { scores[i] = -.infinity }
            if n > 0 { scores[Int.random(in: 0..<n, using: &g)] = spread }  // a finite maximum
            let m = scores.max() ?? 0
            let l = scores.reduce(Float(0)) { $1 > -.infinity ? $0 + exp($1 - m) : $0 }
            let order = (0..<n).map { Int32($0) }.shuffled(using: &g)
            var fast = [Float](repeating: .nan, count: n), portable = fast
            PageKernels.normalizedWeights(scores: scores, order: order, count: n, max: m, sum: l, into: &fast)
            PageKernels.normalizedWeightsPortable(scores: scores, order: order, count: n, max: m, sum: l, into: &portable)
            for k in 0..<n { #expect(Self.agree(fast[k], portable[k]), "seed \(g.seed) weight \(k): \(fast[k]) vs \(portable[k])") }
        }
    }

    /// s − m over the whole range the kernel takes, down past underflow (subnormal weights, then 0),
    /// and a maximum that is not the row's (s − m > 0: the scalar fallback).
    @Test func equalsPortablePathAcrossTheExpRange() {
        let count = 1 << 16
        var scores = (0..<count).map { -110 * Float($0) / Float(count - 1) }  // 0 … −110
        scores += [-87.3, -87.33655, -88.7, -103.97, -103.972, -104, -0x1p-30, -.leastNonzeroMagnitude, 0.5, 3]
        let order = (0..<scores.count).map { Int32($0) }
        for (m, l) in [(Float(0), Float(1)), (Float(0), Float(3.7)), (Float(2.5), Float(0.3))] {
            var fast = [Float](repeating: .nan, count: scores.count), portable = fast
            PageKernels.normalizedWeights(scores: scores, order: order, count: scores.count, max: m, sum: l, into: &fast)
            PageKernels.normalizedWeightsPortable(scores: scores, order: order, count: scores.count, max: m, sum: l, into: &portable)
            var mismatches = 0
            for k in scores.indices where !Self.agree(fast[k], portable[k]) {
                if mismatches < 5 { Issue.record("m \(m) l \(l) s \(scores[k]): \(fast[k]) vs \(portable[k])") }
                mismatches += 1
            }
            #expect(mismatches == 0)
        }
    }
}
