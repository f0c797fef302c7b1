/// Conversions between `Float` and IEEE half-precision bit patterns done with integer and `Float`
/// SIMD arithmetic, so they vectorise on any x86-64 or ARM target.
///
/// Swift built for the baseline x86-64 target has no F16C, so `Float(Float16)` and `Float16(Float)`
/// are library calls (about 0.2 G elements/s per core). These routines are exact replacements for
/// every value the store accepts (finite, |x| ≤ 65504): `halfToFloat` reproduces `Float(Float16)`
/// bit for bit on every finite half, and `floatToHalf` reproduces `Float16(x)` (round to nearest
/// even, subnormals included) on every finite `x` with |x| ≤ 65504. Infinities and NaNs are never
/// stored, so they are not handled (the scalar references `Float16` are used in tests to check the
/// exactness claim).
public enum Float16Bits {
    /// Converts eight half bit patterns to `Float`. Exact for every finite half.
    ///
    /// Shifting the 15 magnitude bits into a `Float`'s exponent and mantissa fields and multiplying
    /// by 2¹¹² rebiases the exponent (127 − 15 = 112); for subnormal halves the shifted pattern is a
    /// subnormal `Float` and the multiplication normalises it exactly.
    @inlinable @inline(__always)
    public static func halfToFloat(_ h: SIMD8<UInt16>) -> SIMD8<Float> {
        let w = SIMD8<UInt32>(truncatingIfNeeded: h)
        let sign = (w & 0x8000) &<< 16
        let magnitude = (w & 0x7FFF) &<< 13
        let f = unsafeBitCast(magnitude, to: SIMD8<Float>.self) * 0x1p112
        return unsafeBitCast(unsafeBitCast(f, to: SIMD8<UInt32>.self) | sign, to: SIMD8<Float>.self)
    }

    /// Converts one half bit pattern to `Float`. Exact for every finite half.
    @inlinable @inline(__always)
    public static func halfToFloat(_ h: UInt16) -> Float {
        let w = UInt32(h)
        let f = Float(bitPattern: (w & 0x7FFF) &<< 13) * 0x1p112
        return Float(bitPattern: f.bitPattern | ((w & 0x8000) &<< 16))
    }

    /// Rounds eight `Float`s to half bit patterns, to nearest even.
    ///
    /// - Precondition: every lane is finite with magnitude ≤ 65504 (callers validate first); other
    ///   lanes give unspecified patterns.
    @inlinable @inline(__always)
    public static func floatToHalf(_ x: SIMD8<Float>) -> SIMD8<UInt16> {
        let u = unsafeBitCast(x, to: SIMD8<UInt32>.self)
        let sign = u & 0x8000_0000
        let a = u ^ sign
        // Below 2^-14 the result is subnormal (or zero): adding 0.5 puts the value's half ulp
        // (2^-24) at the last mantissa bit of a Float, so the addition rounds to nearest even.
        let denormMagic: UInt32 = 126 << 23  // 0.5
        let small = unsafeBitCast(a, to: SIMD8<Float>.self) + unsafeBitCast(SIMD8<UInt32>(repeating: denormMagic), to: SIMD8<Float>.self)
        let smallBits = unsafeBitCast(small, to: SIMD8<UInt32>.self) &- denormMagic
        // Normal range: rebias the exponent, add 0xFFF plus the bit that will become the lowest
        // mantissa bit (ties to even), and shift the 13 dropped bits out.
        let odd = (a &>> 13) & 1
        let normalBits = (a &+ (UInt32(bitPattern: (15 - 127) << 23) &+ 0xFFF) &+ odd) &>> 13
        let isSmall = a .< (113 << 23)
        var r = normalBits
        r.replace(with: smallBits, where: isSmall)
        return SIMD8<UInt16>(truncatingIfNeeded: r | (sign &>> 16))
    }

    /// Rounds one `Float` to a half bit pattern, to nearest even (same preconditions as the SIMD
    /// version).
    @inlinable @inline(__always)
    public static func floatToHalf(_ x: Float) -> UInt16 {
        floatToHalf(SIMD8<Float>(repeating: x))[0]
    }

    /// The scalar reference: `Float16(x).bitPattern`.
    @inlinable
    public static func floatToHalfReference(_ x: Float) -> UInt16 { Float16(x).bitPattern }

    /// The scalar reference: `Float(Float16(bitPattern: h))`.
    @inlinable
    public static func halfToFloatReference(_ h: UInt16) -> Float { Float(Float16(bitPattern: h)) }
}
