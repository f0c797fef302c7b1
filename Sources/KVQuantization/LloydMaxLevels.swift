/// The Lloyd–Max levels of a unit Gaussian at 2, 3 and 4 bits, the codebook of
/// `StorageFormat.lloydMax`, and the per-element error bound of that format.
///
/// For N(0, 1), the 2^b levels L₀ < … < L_{2^b−1} minimise E[(Z − L(Z))²] over quantisers with
/// 2^b cells; they are the fixed point of Lloyd's iteration: each threshold is the midpoint of its
/// two neighbouring levels, tₖ = (Lₖ + Lₖ₊₁)/2, and each level the conditional mean of its cell,
/// Lₖ = E[Z | tₖ₋₁ < Z ≤ tₖ] = (φ(tₖ₋₁) − φ(tₖ)) / (Φ(tₖ) − Φ(tₖ₋₁)). Computed once in FP64 with
/// exact Gaussian integrals (iterated to a zero residual), symmetric; the positive halves, to ten
/// digits:
///
///     2 bits: 0.4527800346, 1.5104176085
///     3 bits: 0.2450941789, 0.7560052812, 1.3439092785, 2.1519457045
///     4 bits: 0.1283950299, 0.3880482995, 0.6567591185, 0.9423404565,
///             1.2562311973, 1.6180463860, 2.0690172265, 2.7325895710
///
/// (Their mean squared errors on N(0, 1) are 0.1175, 0.03455 and 0.009501: relative RMS errors
/// 0.343, 0.186 and 0.0975.) The kernels use these rounded to `Float` (`levels`) and the midpoints of
/// those computed in `Float` (`thresholds`); the bounds below are stated for exactly those tables.
public enum LloydMaxLevels {
    /// The 2^b levels of `width`, ascending (`Float`). Traps for 8 bits (no such format).
    public static func levels(_ width: CodeWidth) -> [Float] {
        let half: [Float]
        switch width {
        case .int2: half = [0.4527800346, 1.5104176085]
        case .int3: half = [0.2450941789, 0.7560052812, 1.3439092785, 2.1519457045]
        case .int4: half = [0.1283950299, 0.3880482995, 0.6567591185, 0.9423404565,
                            1.2562311973, 1.6180463860, 2.0690172265, 2.7325895710]
        case .int8: preconditionFailure("LloydMaxLevels: Lloyd–Max codes exist at 2, 3 and 4 bits")
        }
        return half.reversed().map { -$0 } + half
    }

    /// The 2^b − 1 decision thresholds of `width`, ascending: tₖ = (Lₖ + Lₖ₊₁)/2 in `Float`. A value
    /// z takes the code of the number of thresholds strictly below it (ties take the lower level).
    public static func thresholds(_ width: CodeWidth) -> [Float] {
        let l = levels(width)
        return (0..<(l.count - 1)).map { (l[$0] + l[$0 + 1]) / 2 }
    }

    /// The levels as a 16-lane vector (lanes ≥ 2^b zero), for table lookups in the kernels.
    public static func table(_ width: CodeWidth) -> SIMD16<Float> {
        var t = SIMD16<Float>()
        for (i, v) in levels(width).enumerated() { t[i] = v }
        return t
    }

    /// The bound on |y − x̂| for an element of a head vector of `headDim` elements stored with code
    /// `code` and norm `norm` (the FP16 value as stored):
    ///
    ///     |y − x̂| ≤ norm · (h_c + 2⁻²⁴·(1.0001·√d + |L_c|))
    ///
    /// where h_c is the farthest a value of cell c can lie from L_c: max(L_c − t_{c−1}, t_c − L_c) for an
    /// inner cell; for the outer cells the open side reaches to √d·(1 + 2⁻²⁴) (so h = √d(1 + 2⁻²⁴) − |L_c|
    /// there when that is larger).
    ///
    /// Derivation (u = 2⁻²⁴). The stored norm is at least the vector's RMS ‖y‖/√d (rounded up to
    /// FP16), or, clamped at 65504, at least max|yᵢ|; either way |yᵢ|/norm ≤ √d. The encoder's
    /// z = fl(y/norm) is within u·|z| of y/norm, so |z| ≤ √d(1 + u), and the code c is the cell of z,
    /// so |z − L_c| ≤ h_c. Decoding x̂ = fl(norm·L_c) rounds once, u·norm·|L_c|. Hence
    /// |y − x̂| ≤ norm·|y/norm − z| + norm·|z − L_c| + u·norm·|L_c| ≤ norm·(u·√d(1 + u) + h_c + u·|L_c|).
    ///
    /// For values inside the outer levels (|z| ≤ L_top, the usual case on Gaussian-like data) the
    /// error is at most norm·(half the gap to the next level + the same FP32 terms): the inner-cell h.
    /// A vector of zeros has norm 0 and decodes exactly.
    public static func errorBound(code: Int, norm: Float, headDim d: Int, width: CodeWidth) -> Float {
        let l = levels(width), t = thresholds(width), top = l.count - 1
        let reach = Double(d).squareRoot() * (1 + 0x1p-24)
        let below = code == 0 ? max(reach + Double(l[0]), 0) : Double(l[code]) - Double(t[code - 1])
        let above = code == top ? max(reach - Double(l[top]), 0) : Double(t[code]) - Double(l[code])
        let h = max(below, above)
        let b = Double(norm) * (h + 0x1p-24 * (1.0001 * Double(d).squareRoot() + Double(abs(l[code]))))
        return Float(b).nextUp
    }

    /// The norm stored for a vector whose sum of squares is `sumOfSquares` (computed in FP64) over
    /// `headDim` elements: √(Σy²/d) rounded up to FP16 (with a
    /// margin of 2⁻³⁶ relative for the FP64 sum's own rounding), clamped to 65504 (then it is at
    /// least max|y|, as every storable y is at most 65504). 0 only for a vector of zeros.
    @inlinable
    public static func normBits(sumOfSquares: Double, headDim d: Int) -> UInt16 {
        guard sumOfSquares > 0 else { return 0 }
        let q = (sumOfSquares / Double(d)).squareRoot() * (1 + 0x1p-36)
        guard q < 65504 else { return Float16(65504).bitPattern }
        var n = Float16(q)
        if Double(n) < q { n = n.nextUp }
        return min(n, 65504).bitPattern
    }
}
