import Foundation
import Testing
import TestSupport
@testable import KVQuantization

@Suite struct HadamardRotationTests {
    static let dims = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

    /// The exact R·x in FP64: signs, the Sylvester matrix entry by entry (H_ij = (−1)^popcount(i & j)),
    /// 1/√d.
    static func exactRotation(_ r: HadamardRotation, _ x: [Float], transpose: Bool = false) -> [Double] {
        let d = r.dimension
        return (0..<d).map { i in
            var s = 0.0
            for j in 0..<d {
                let h: Double = (i & j).nonzeroBitCount % 2 == 0 ? 1 : -1
                s += transpose ? h * Double(x[j]) * Double(r.signs[i]) : h * Double(r.signs[j]) * Double(x[j])
            }
            return s / Double(d).squareRoot()
        }
    }

    @Test func onlyPowersOfTwoRotate() {
        for d in [1, 2, 64, 128, 4096] { #expect(HadamardRotation(dimension: d, seed: 0) != nil, "\(d)") }
        for d in [0, -4, 3, 7, 9, 63, 96, 8192] { #expect(HadamardRotation(dimension: d, seed: 0) == nil, "\(d)") }
    }

    /// Fast and scalar paths bit for bit; both within the derived bound of the exact R·x and Rᵀ·x,
    /// and the bound not vacuous.
    @Test func fastEqualsReferenceAndBothWithinBound() throws {
        var worst = 0.0
        for d in Self.dims {
            for family in RowFamily.allCases {
                forEachSeededCase(3, base: 4000 &+ UInt64(d * 16 + RowFamily.allCases.firstIndex(of: family)!)) { g in
                    let r = HadamardRotation(dimension: d, seed: g.next())!
                    let x = family.row(d, using: &g)
                    let l1 = x.reduce(0.0) { $0 + abs(Double($1)) }
                    for transpose in [false, true] {
                        var fast = x, ref = x
                        fast.withUnsafeMutableBufferPointer { transpose ? r.unrotate($0.baseAddress!) : r.rotate($0.baseAddress!) }
                        ref.withUnsafeMutableBufferPointer { transpose ? r.unrotateReference($0.baseAddress!) : r.rotateReference($0.baseAddress!) }
                        #expect(fast.map(\.bitPattern) == ref.map(\.bitPattern), "seed \(g.seed) d \(d) \(family) transpose \(transpose)")
                        let exact = Self.exactRotation(r, x, transpose: transpose), bound = r.roundingCoefficient * l1 / Double(d).squareRoot()
                        for i in 0..<d {
                            let err = abs(Double(fast[i]) - exact[i])
                            #expect(err <= bound, "seed \(g.seed) d \(d) \(family) transpose \(transpose) element \(i): \(err) > \(bound)")
                            if bound > 0 { worst = max(worst, err / bound) }
                        }
                    }
                }
            }
        }
        #expect(worst > 0.01, "the bound is vacuous: \(worst)")
    }

    /// R is orthogonal: Rᵀ(Rx) = x and ‖Rx‖ = ‖x‖ up to rounding; R spreads a one-hot vector evenly.
    @Test func orthogonalAndSpreading() throws {
        for d in Self.dims {
            forEachSeededCase(5, base: 4100 &+ UInt64(d)) { g in
                let r = HadamardRotation(dimension: d, seed: g.next())!
                let x = RowFamily.gaussian.row(d, using: &g)
                let y = r.rotated(x), back = r.unrotated(y)
                let l1 = x.reduce(0.0) { $0 + abs(Double($1)) }
                let n2 = { (v: [Float]) in v.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot() }
                #expect(abs(n2(y) - n2(x)) <= 2 * r.roundingCoefficient * l1, "seed \(g.seed) d \(d): norm")
                for i in 0..<d {
                    #expect(abs(Double(back[i] - x[i])) <= 3 * r.roundingCoefficient * l1, "seed \(g.seed) d \(d) element \(i)")
                }
                var e = [Float](repeating: 0, count: d)
                e[Int.random(in: 0..<d, using: &g)] = 1
                let spread = r.rotated(e)
                #expect(spread.allSatisfy { abs(abs(Double($0)) - 1 / Double(d).squareRoot()) <= 1e-6 }, "d \(d): one-hot not spread evenly")
            }
        }
    }

    /// Signs are a function of the seed; derived seeds of different indices differ.
    @Test func signsFollowTheSeed() {
        let a = HadamardRotation(dimension: 64, seed: 1)!, b = HadamardRotation(dimension: 64, seed: 1)!, c = HadamardRotation(dimension: 64, seed: 2)!
        #expect(a.signs == b.signs && a.signs != c.signs)
        #expect(Set(a.signs) == [-1, 1])
        let seeds = (0..<64).map { HadamardRotation.derivedSeed(9, index: UInt64($0)) }
        #expect(Set(seeds).count == 64)
        let settings = RotationSettings(keys: .all, values: .only([1]), seed: 3)
        #expect(settings.rotation(layer: 0, values: false, headDim: 64)?.seed == HadamardRotation.derivedSeed(3, index: 0))
        #expect(settings.rotation(layer: 1, values: true, headDim: 64)?.seed == HadamardRotation.derivedSeed(3, index: 3))
        #expect(settings.rotation(layer: 0, values: true, headDim: 64) == nil)
        #expect(settings.rotation(layer: 0, values: false, headDim: 96) == nil)
    }
}
