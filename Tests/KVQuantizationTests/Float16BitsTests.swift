import Testing
import TestSupport
@testable import KVQuantization

@Suite struct Float16BitsTests {
    /// Every finite half converts to the same Float as Swift's own conversion.
    @Test func halfToFloatExhaustive() {
        var mismatches = 0
        for bits in 0...UInt16.max where Float16(bitPattern: bits).isFinite {
            let fast = Float16Bits.halfToFloat(bits)
            if fast.bitPattern != Float16Bits.halfToFloatReference(bits).bitPattern { mismatches += 1 }
        }
        #expect(mismatches == 0)
        // And the SIMD path on a vector of mixed patterns.
        let v = SIMD8<UInt16>(0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0xFBFF)
        let f = Float16Bits.halfToFloat(v)
        for i in 0..<8 { #expect(f[i] == Float16Bits.halfToFloatReference(v[i])) }
    }

    /// Round to nearest even agrees with Swift's `Float16(x)` at every half, every midpoint between
    /// adjacent halves (the ties), and one Float ulp either side of every midpoint.
    @Test func floatToHalfTiesAndNeighbours() {
        var checked = 0, mismatches = 0
        for bits in UInt16(0)...0x7BFF {
            let h = Float16(bitPattern: bits)
            let lo = Float(h), hi = Float(h.nextUp)
            let mid = Float((Double(lo) + Double(hi)) / 2)  // 12 significant bits: exact in Float
            for x in [lo, mid, mid.nextDown, mid.nextUp] where x <= 65504 {
                for s in [x, -x] {
                    checked += 1
                    if Float16Bits.floatToHalf(s) != Float16Bits.floatToHalfReference(s) { mismatches += 1 }
                }
            }
        }
        #expect(mismatches == 0, "\(mismatches) of \(checked) conversions differ from Float16(x)")
    }

    /// Random Floats over the whole accepted range, log-uniform in magnitude.
    @Test func floatToHalfRandom() {
        forEachSeededCase(20_000, base: 11) { g in
            let e = Float.random(in: -30...15.99, using: &g)
            var x = Float.random(in: 1..<2, using: &g) * Float(sign: .plus, exponent: Int(e.rounded(.down)), significand: 1)
            x = min(x, 65504)
            if Bool.random(using: &g) { x = -x }
            #expect(Float16Bits.floatToHalf(x) == Float16Bits.floatToHalfReference(x), "seed \(g.seed) x \(x)")
        }
    }
}
