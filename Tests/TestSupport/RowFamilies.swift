import Foundation
import KVQuantization

/// The kinds of head vectors property tests draw, nasty ones included.
public enum RowFamily: String, CaseIterable, Sendable {
    /// i.i.d. N(0, σ²) with σ drawn log-uniformly from 1e-3 to 1e2.
    case gaussian
    /// Student-t with 2 degrees of freedom (infinite variance), scaled, clipped to ±65504.
    case heavyTail
    /// Gaussian with a few channels multiplied by 100 (the outlier channels of post-RoPE keys).
    case outlierChannels
    /// All zeros.
    case allZero
    /// Values from {−65504, 65504} and Gaussian values mixed: the largest range the format allows.
    case extremes
    /// Groups of 8 equal FP16-representable values, and whole rows of one value.
    case constantRuns
    /// Values around the FP16 subnormal range (|x| < 2⁻¹⁴).
    case tiny
    /// A large offset with a small spread (|mean| ≫ range): the hardest case for FP16 zeros.
    case offset

    /// A row of `count` values from this family.
    public func row(_ count: Int, using g: inout SeededGenerator) -> [Float] {
        switch self {
        case .gaussian:
            let sigma = Float(pow10(Double.random(in: -3...2, using: &g)))
            return (0..<count).map { _ in Float(g.nextGaussian()) * sigma }
        case .heavyTail:
            let scale = Float(pow10(Double.random(in: -2...1, using: &g)))
            return (0..<count).map { _ in
                let z = g.nextGaussian()
                let chi = (g.nextGaussian() * g.nextGaussian() + g.nextGaussian() * g.nextGaussian()) / 2
                let t = Float(z / max(abs(chi).squareRoot(), 1e-3)) * scale
                return min(max(t, -65504), 65504)
            }
        case .outlierChannels:
            var r = (0..<count).map { _ in Float(g.nextGaussian()) }
            // Distinct channels (one drawn twice would be 10⁴ times larger, beyond FP16 at times).
            var channels = Set<Int>()
            while channels.count < max(1, count / 32) { channels.insert(Int.random(in: 0..<count, using: &g)) }
            for c in channels.sorted() { r[c] *= 100 }
            return r
        case .allZero:
            return [Float](repeating: 0, count: count)
        case .extremes:
            return (0..<count).map { _ in
                switch Int.random(in: 0..<3, using: &g) {
                case 0: -65504
                case 1: 65504
                default: Float(g.nextGaussian()) * 1000
                }
            }
        case .constantRuns:
            let whole = Bool.random(using: &g)
            var r = [Float]()
            var v: Float = 0
            for i in 0..<count {
                if i == 0 || (!whole && i % 8 == 0) {
                    v = Float(Float16(Float(g.nextGaussian()) * Float(pow10(Double.random(in: -3...3, using: &g)))))
                }
                r.append(v)
            }
            return r
        case .tiny:
            return (0..<count).map { _ in Float(g.nextGaussian()) * 0x1p-16 }
        case .offset:
            let mean = Float.random(in: -2000...2000, using: &g)
            let spread = Float(pow10(Double.random(in: -3...1, using: &g)))
            return (0..<count).map { _ in mean + Float(g.nextGaussian()) * spread }
        }
    }
}

private func pow10(_ x: Double) -> Double { pow(10, x) }

/// The head dims every shape-dependent property runs over: including 1, odd sizes, and sizes that
/// are not multiples of the SIMD width.
public let propertyHeadDims = [1, 7, 8, 9, 63, 64, 96, 128, 256]

/// Runs `body` for `cases` seeded cases; the generator passed in starts from `seed(case)`, which a
/// failing assertion should print (`SeededGenerator.seed`).
public func forEachSeededCase(_ cases: Int, base: UInt64, _ body: (inout SeededGenerator) throws -> Void) rethrows {
    for c in 0..<cases {
        var g = SeededGenerator(seed: base &* 0x1_0000 &+ UInt64(c))
        try body(&g)
    }
}
