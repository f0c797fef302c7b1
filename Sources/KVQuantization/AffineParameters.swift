/// The FP16 scale and zero of one affine group (or one channel of a page), and the rules that
/// choose them.
///
/// For a group with minimum `lo` and maximum `hi` and code width `b` (`M = 2^b − 1`):
///
///     zero  = lo rounded to FP16 towards +∞
///     scale = max(hi − zero, 0) / M rounded to FP16 towards +∞   (so (x − zero)/scale ≤ M: the top
///                                                                never clamps)
///     code  = round_half_even((x − zero) / scale) clamped to [0, M]   (0 when scale = 0)
///     x̂     = zero + scale · code
///
/// Values above `zero` are within scale/2 of the grid; values below it (less than one FP16 ulp
/// away) take code 0. The minimum therefore always has code 0 and the maximum code M, so a group of
/// decoded values re-encodes to the same zero, scale and codes (decode∘encode is a fixpoint whenever
/// decoding is exact in `Float`, i.e. the group's range is not tiny next to its offset). Rounding
/// `zero` to nearest instead would halve the last term of the bound but break that fixpoint: a
/// minimum rounded down by more than scale/2 would take code 1.
/// A group whose values are all one FP16 value has scale 0 and decodes exactly; a group of one
/// non-FP16 value decodes to its FP16 rounding.
///
/// Decoded values can exceed the group's maximum by up to scale/2, so a group spanning nearly the
/// whole FP16 range (e.g. −65504 and 65504 in one group at INT8) decodes its top code above 65504
/// (to 65566): such a value is not storable again.
public struct AffineParameters: Sendable, Hashable {
    /// The step between adjacent codes (FP16 bit pattern).
    public var scaleBits: UInt16
    /// The value of code 0 (FP16 bit pattern).
    public var zeroBits: UInt16

    @inlinable public var scale: Float { Float16Bits.halfToFloat(scaleBits) }
    @inlinable public var zero: Float { Float16Bits.halfToFloat(zeroBits) }

    @inlinable
    public init(scaleBits: UInt16, zeroBits: UInt16) {
        self.scaleBits = scaleBits
        self.zeroBits = zeroBits
    }

    /// The parameters for values spanning `[lo, hi]` at `width`.
    ///
    /// A zero bound of either sign counts as +0, so the parameters do not depend on which of
    /// several equal (±0) values a minimum or maximum picked: every order of computing them, scalar
    /// or SIMD, gives the same bits.
    ///
    /// - Precondition: `lo ≤ hi`, both finite with magnitude ≤ 65504.
    @inlinable
    public init(lo: Float, hi: Float, width: CodeWidth) {
        let lo = lo + 0, hi = hi + 0  // −0 + 0 = +0 (round to nearest)
        var z = Float16(lo)
        if Float(z) < lo { z = z.nextUp }
        // hi − z is exact in Double; so is the comparison below, so `s` is the least FP16 ≥ the quotient.
        let q = max(Double(hi) - Double(Float(z)), 0) / Double(width.maxCode)
        var s = Float16(q)
        if Double(s) < q { s = s.nextUp }
        self.init(scaleBits: s.bitPattern, zeroBits: z.bitPattern)
    }

    /// The per-element reconstruction bound for an element encoded with these parameters:
    ///
    ///     |x − x̂| ≤ scale/2 + h + 2⁻²⁴ · (4 · scale · M + |zero|),   h = one FP16 ulp of zero
    ///
    /// Derivation (u = 2⁻²⁴, the unit roundoff of `Float`). For x ≥ zero: the quotient
    /// t = fl(fl(x − zero)/scale) differs from (x − zero)/scale by at most (2u + u²)·M ≤ 2.0001·u·M,
    /// so the chosen code is within 1/2 + 2.0001·u·M steps of x; decoding fl(zero + scale·c) adds
    /// one rounding, at most u·(|zero| + scale·M) (scale·c itself is exact: 11 × 8 significant
    /// bits). For x < zero: x ≥ lo > zero − h (zero is lo rounded up), the code is 0 and
    /// x̂ = zero exactly, so the error is less than h. Both cases are within the sum above.
    @inlinable
    public func errorBound(width: CodeWidth) -> Float {
        let s = scale, m = Float(width.maxCode)
        let h = Float(Float16(bitPattern: zeroBits).ulp)
        return s / 2 + h + 0x1p-24 * (4 * s * m + abs(zero))
    }
}
