import Foundation
@testable import KVModel
import Testing
import TestSupport

/// `MatrixKernels.applyGated` against the exact SiLU and GELU-tanh (FP64) within its documented
/// bound, on a sweep, random values and the nasty ones, and the same bits for a value wherever it
/// sits (eight-lane body or tail, first or later block of 1024).
@Suite struct GatedActivationTests {
    static func exact(_ x: Double, _ a: MatrixKernels.GatedActivation) -> Double {
        switch a {
        case .silu: x / (1 + Foundation.exp(-x))
        // ½x(1 + tanh u) = x·σ(2u), in the form without cancellation for u ≪ 0 (1 + tanh u is 0 in FP64 there).
        case .geluTanh: x / (1 + Foundation.exp(-2 * 0.7978845608028654 * (x + 0.044715 * x * x * x)))
        }
    }

    @Test func withinTheBoundOfTheExactFunction() {
        var g = SeededGenerator(seed: 9500)
        var xs = stride(from: -30.0, through: 30.0, by: 0.01).map { Float($0) }
        xs += (0..<2000).map { _ in Float.random(in: -8...8, using: &g) }
        xs += [0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 20, -20, 100, -100, 1e5, 1e20, -1e20]
        for activation in [MatrixKernels.GatedActivation.silu, .geluTanh] {
            var y = xs
            MatrixKernels.applyGated(&y, [Float](repeating: 1, count: xs.count), activation)
            for (x, v) in zip(xs, y) {
                let e = Self.exact(Double(x), activation)
                // z's roundings (γ₅ relative) move ln σ by |z|·σ(−z)·γ₅: damped for z > 0 (≤ 0.2785·γ₅), ~|z|·γ₅ for z ≪ 0.
                let z = activation == .silu ? Double(x) : 2 * 0.7978845608028654 * (Double(x) + 0.044715 * Double(x) * Double(x) * Double(x))
                let damping = activation == .silu ? 0 : abs(z) / (1 + Foundation.exp(z))
                let bound = (10 + 6 * damping) * 0x1p-24 * abs(e) + abs(Double(x)) * 0x1p-126   // t below 2⁻¹²⁶: subnormal or flushed
                #expect(abs(Double(v) - e) <= bound, "\(activation) x \(x): \(v) against \(e), seed \(g.seed)")
            }
        }
    }

    @Test func nonFiniteInputsAndPositionIndependence() {
        var g = SeededGenerator(seed: 9600)
        for activation in [MatrixKernels.GatedActivation.silu, .geluTanh] {
            var y: [Float] = [.nan, .infinity, 1]
            MatrixKernels.applyGated(&y, [1, 1, .nan], activation)
            #expect(y[0].isNaN && y[1] == .infinity && y[2].isNaN, "\(activation): \(y)")
            var empty = [Float]()
            MatrixKernels.applyGated(&empty, [], activation)
            for n in [1, 7, 8, 9, 1025, 2100] {
                let x = (0..<n).map { _ in Float.random(in: -6...6, using: &g) }, u = (0..<n).map { _ in Float.random(in: -2...2, using: &g) }
                var whole = x
                MatrixKernels.applyGated(&whole, u, activation)
                for i in [0, n / 2, n - 1] {
                    var one = [x[i]]
                    MatrixKernels.applyGated(&one, [u[i]], activation)
                    #expect(one[0].bitPattern == whole[i].bitPattern, "\(activation) n \(n) i \(i), seed \(g.seed)")
                }
            }
        }
    }
}
