/// A randomised Walsh–Hadamard rotation of head vectors: R = (1/√d)·H_d·diag(s), with H_d the
/// Sylvester Hadamard matrix (H₁ = [1], H₂ₖ = [[Hₖ, Hₖ], [Hₖ, −Hₖ]]) and s a vector of random signs
/// drawn from a seed. R is orthogonal (Rᵀ = diag(s)·H_d·(1/√d)), so q·k = (Rq)·(Rk) and
/// Σⱼ wⱼvⱼ = Rᵀ Σⱼ wⱼ(Rvⱼ): a store can keep rotated keys and values, rotate each query once and
/// un-rotate each output once. Rotated coordinates of a vector with a few large channels are spread
/// out and close to Gaussian, which is what `StorageFormat.lloydMax` codes expect.
///
/// Only power-of-two dimensions have one (1, 2, 4, …, 4096); `isSupported(dimension:)` says which.
///
/// Arithmetic: `rotate` multiplies by the signs (exact), runs the log₂d butterfly levels of the
/// fast Walsh–Hadamard transform (a ± b per pair, in place), then multiplies by 1/√d in `Float`;
/// `unrotate` runs the butterflies, scales, then applies the signs. O(d log d) each.
///
/// **Error bound** (u = 2⁻²⁴, γₖ = k·u/(1 − k·u), L = log₂d): for every element i,
///
///     |fl(Rx)ᵢ − (Rx)ᵢ| ≤ γ_{L+3} · ‖x‖₁/√d        (the same for Rᵀ)
///
/// Each butterfly level adds at most one rounding to every partial sum, so after L levels each
/// element, a signed sum of all d inputs, is within γ_L·‖x‖₁ of the exact one (the standard bound of
/// a summation tree of depth L). The scale c = 1/√d is computed in FP64 and rounded to `Float`, so
/// |c − 1/√d| ≤ (u + 2⁻⁵²)/√d (exact when d is a power of four), and the product by it rounds once:
/// at most three more roundings relative to the exact result, whose magnitude is at most ‖x‖₁/√d.
/// Since ‖x‖₁ ≤ √d·‖x‖₂, the bound is also ≤ γ_{L+3}·‖x‖₂ per element.
///
/// The fast path (SIMD for butterfly strides ≥ 8) and the scalar twins (`rotateReference`,
/// `unrotateReference`) perform the same operations on every element in the same order, so their
/// results are bit-identical.
public struct HadamardRotation: Sendable, Hashable {
    /// Elements of the vectors rotated (a power of two).
    public let dimension: Int
    /// The seed the signs were drawn from.
    public let seed: UInt64
    /// sᵢ = ±1: bit 63 of the i-th output of SplitMix64 seeded with `seed` (set: −1).
    public let signs: [Float]
    /// 1/√d rounded to `Float` (from FP64).
    public let scale: Float

    /// Whether a rotation of `dimension` elements exists: `dimension` is a power of two in 1...4096.
    public static func isSupported(dimension d: Int) -> Bool { d > 0 && d <= 4096 && d & (d - 1) == 0 }

    /// The rotation of `dimension` elements with signs drawn from `seed`, or `nil` if the dimension
    /// is not a power of two in 1...4096.
    public init?(dimension d: Int, seed: UInt64) {
        guard Self.isSupported(dimension: d) else { return nil }
        dimension = d
        self.seed = seed
        var state = seed
        signs = (0..<d).map { _ in Self.splitMix(&state) >> 63 == 1 ? -1 : 1 }
        scale = Float(1 / Double(d).squareRoot())
    }

    /// One SplitMix64 step (Steele, Lea and Flood; the seeding generator of xoshiro).
    @inlinable
    static func splitMix(_ x: inout UInt64) -> UInt64 {
        x &+= 0x9E37_79B9_7F4A_7C15
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A seed derived from `seed` for stream `index` (e.g. a layer's keys or values), by SplitMix64:
    /// distinct indices give unrelated sign vectors.
    public static func derivedSeed(_ seed: UInt64, index: UInt64) -> UInt64 {
        var x = seed ^ (index &* 0xD1B5_4A32_D192_ED03)
        return splitMix(&x)
    }

    /// γ_{L+3}: the bound on |fl(Rx)ᵢ − (Rx)ᵢ| is this times ‖x‖₁/√d (see the type).
    public var roundingCoefficient: Double {
        let k = Double(dimension.trailingZeroBitCount + 3), u = 0x1p-24
        return k * u / (1 - k * u)
    }

    // MARK: Fast kernels

    /// x ← R·x, in place (`dimension` elements).
    public func rotate(_ x: UnsafeMutablePointer<Float>) {
        signs.withUnsafeBufferPointer { s in for i in 0..<dimension { x[i] *= s[i] } }
        butterflies(x)
        scaleAll(x)
    }

    /// x ← Rᵀ·x, in place (`dimension` elements).
    public func unrotate(_ x: UnsafeMutablePointer<Float>) {
        butterflies(x)
        scaleAll(x)
        signs.withUnsafeBufferPointer { s in for i in 0..<dimension { x[i] *= s[i] } }
    }

    /// The unnormalised transform H_d·x in place: log₂d levels of butterflies (a, b) → (a + b, a − b)
    /// on pairs `h` apart, h = 1, 2, 4, …; SIMD for h ≥ 8.
    func butterflies(_ x: UnsafeMutablePointer<Float>) {
        let d = dimension, raw = UnsafeMutableRawPointer(x)
        var h = 1
        while h < d {
            if h >= 8 {
                var start = 0
                while start < d {
                    var j = start
                    while j < start + h {
                        let a = raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self)
                        let b = raw.loadUnaligned(fromByteOffset: 4 * (j + h), as: SIMD8<Float>.self)
                        raw.storeBytes(of: a + b, toByteOffset: 4 * j, as: SIMD8<Float>.self)
                        raw.storeBytes(of: a - b, toByteOffset: 4 * (j + h), as: SIMD8<Float>.self)
                        j += 8
                    }
                    start += 2 * h
                }
            } else {
                var start = 0
                while start < d {
                    for j in start..<(start + h) {
                        let a = x[j], b = x[j + h]
                        x[j] = a + b
                        x[j + h] = a - b
                    }
                    start += 2 * h
                }
            }
            h *= 2
        }
    }

    func scaleAll(_ x: UnsafeMutablePointer<Float>) {
        let raw = UnsafeMutableRawPointer(x), s8 = SIMD8<Float>(repeating: scale)
        var i = 0
        while i + 8 <= dimension {
            raw.storeBytes(of: raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * s8, toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        while i < dimension { x[i] *= scale; i += 1 }
    }

    // MARK: Scalar twins

    /// Scalar reference of `rotate`: signs, the butterfly levels one pair at a time, the scale.
    public func rotateReference(_ x: UnsafeMutablePointer<Float>) {
        for i in 0..<dimension { x[i] *= signs[i] }
        butterfliesReference(x)
        for i in 0..<dimension { x[i] *= scale }
    }

    /// Scalar reference of `unrotate`.
    public func unrotateReference(_ x: UnsafeMutablePointer<Float>) {
        butterfliesReference(x)
        for i in 0..<dimension { x[i] *= scale }
        for i in 0..<dimension { x[i] *= signs[i] }
    }

    func butterfliesReference(_ x: UnsafeMutablePointer<Float>) {
        var h = 1
        while h < dimension {
            for start in Swift.stride(from: 0, to: dimension, by: 2 * h) {
                for j in start..<(start + h) {
                    let a = x[j], b = x[j + h]
                    x[j] = a + b
                    x[j + h] = a - b
                }
            }
            h *= 2
        }
    }

    // MARK: Array conveniences

    /// R·x.
    public func rotated(_ x: [Float]) -> [Float] {
        precondition(x.count == dimension, "HadamardRotation.rotated: expected \(dimension) values, got \(x.count)")
        var y = x
        y.withUnsafeMutableBufferPointer { rotate($0.baseAddress!) }
        return y
    }

    /// Rᵀ·x.
    public func unrotated(_ x: [Float]) -> [Float] {
        precondition(x.count == dimension, "HadamardRotation.unrotated: expected \(dimension) values, got \(x.count)")
        var y = x
        y.withUnsafeMutableBufferPointer { unrotate($0.baseAddress!) }
        return y
    }
}
