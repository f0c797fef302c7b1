import Foundation
import Testing
import TestSupport
@testable import KVQuantization

/// The write path's kernels (`EncodeKernels`) against their scalar reference twins, bit for bit, on
/// every path this machine can run (the AVX2 C kernels where the CPU has AVX2, and Swift SIMD),
/// whatever `KVCRUSH_KERNELS` says: row families with nasty values, signed zeros, head dims that are
/// not multiples of the SIMD width, ragged last groups, one-token and full pages.
@Suite struct EncodeKernelTests {
    /// A row of `d` values of a random family, with signed zeros sprinkled in half the time.
    static func row(_ d: Int, using g: inout SeededGenerator) -> (values: [Float], family: RowFamily) {
        let family = RowFamily.allCases.randomElement(using: &g)!
        var x = family.row(d, using: &g)
        if Bool.random(using: &g) { for _ in 0..<max(1, d / 8) { x[Int.random(in: 0..<d, using: &g)] = Bool.random(using: &g) ? -0.0 : 0 } }
        return (x, family)
    }

    @Test(arguments: EncodeKernels.available)
    func valueCheckFindsTheFirstUnstorableValue(_ path: EncodeKernels.Path) {
        var g = SeededGenerator(seed: 801)
        for count in [1, 7, 8, 31, 32, 33, 100, 1000] {
            for _ in 0..<20 {
                var x = (0..<count).map { _ in Float(g.nextGaussian()) * 1000 }
                if Bool.random(using: &g) {
                    for _ in 0..<Int.random(in: 1...3, using: &g) {
                        x[Int.random(in: 0..<count, using: &g)] = [Float.nan, .infinity, -.infinity, 65520, -70000, 65504.01].randomElement(using: &g)!
                    }
                }
                let fast = x.withUnsafeBufferPointer { EncodeKernels.firstInvalid($0.baseAddress!, count: count, path: path) }
                let reference = x.withUnsafeBufferPointer { ValueCheck.firstInvalidReference($0.baseAddress!, count: count)?.index }
                #expect(fast == reference, "\(path) count \(count) seed \(g.seed)")
            }
        }
    }

    /// The Lloyd–Max level search (`EncodeKernels.lloydMaxCodes`, AVX2 and Swift SIMD) against the
    /// scalar `RowCodec.levelCode`, at 2, 3 and 4 bits: random rows, quotients exactly on a threshold
    /// and one ulp either side, signed zeros, huge and tiny norms.
    @Test(arguments: EncodeKernels.available)
    func lloydMaxCodesMatchTheScalarLevelSearch(_ path: EncodeKernels.Path) throws {
        var g = SeededGenerator(seed: 811)
        for w in [CodeWidth.int2, .int3, .int4] {
            let codec = try RowCodec(.lloydMax(w), headDim: 64)
            let thresholds = LloydMaxLevels.thresholds(w), top = (1 << w.bits) - 1
            for trial in 0..<300 {
                let count8 = 8 * Int.random(in: 1...24, using: &g)
                let norm: Float = [1, 0.125, 3.7, 1e-6, 6e4, Float.random(in: 0.01...10, using: &g)].randomElement(using: &g)!
                var x = Self.row(count8, using: &g).values
                for i in x.indices where Int.random(in: 0..<4, using: &g) == 0 {
                    // A quotient on a threshold or next to it (x = t·norm may itself round: the codes
                    // are compared on x / norm whatever it is).
                    let t = thresholds.randomElement(using: &g)! * norm
                    x[i] = [t, t.nextUp, t.nextDown, 0, -0.0].randomElement(using: &g)!
                }
                var fast = [UInt32](repeating: .max, count: count8)
                x.withUnsafeBufferPointer { xb in
                    fast.withUnsafeMutableBufferPointer { out in
                        EncodeKernels.lloydMaxCodes(xb.baseAddress!, count8: count8, norm: norm, thresholds: codec.thresholdTable,
                                                    thresholdCount: top, into: out.baseAddress!, path: path)
                    }
                }
                let reference = x.map { codec.levelCode($0 / norm, w) }
                #expect(fast == reference, "\(path) \(w) trial \(trial) seed \(g.seed)")
            }
        }
    }

    @Test(arguments: EncodeKernels.available)
    func fp16ConversionsAreExact(_ path: EncodeKernels.Path) {
        // Every finite half pattern decodes as `Float(Float16)`.
        let halves = (0..<65536).map { UInt16($0) }.filter { $0 & 0x7C00 != 0x7C00 }
        var decoded = [Float](repeating: 0, count: halves.count)
        halves.withUnsafeBytes { h in decoded.withUnsafeMutableBufferPointer { EncodeKernels.halfToFloat(h.baseAddress!, $0.baseAddress!, count: halves.count, path: path) } }
        #expect(zip(halves, decoded).allSatisfy { Float16Bits.halfToFloatReference($0).bitPattern == $1.bitPattern }, "\(path)")
        // Floats round to nearest even, ties and subnormals included: every decoded half, the
        // midpoints between neighbours, and random values of every family, at odd counts.
        var x = decoded
        for i in 1..<decoded.count where decoded[i - 1] < decoded[i] { x.append((decoded[i - 1] + decoded[i]) / 2) }
        var g = SeededGenerator(seed: 802)
        for _ in 0..<200 { x += Self.row(Int.random(in: 1...37, using: &g), using: &g).values }
        var out = [UInt16](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { xp in out.withUnsafeMutableBytes { EncodeKernels.floatToHalf(xp.baseAddress!, $0.baseAddress!, count: x.count, path: path) } }
        let wrong = zip(x, out).first { Float16Bits.floatToHalfReference($0) != $1 }
        #expect(wrong == nil, "\(path): \(String(describing: wrong))")
    }

    @Test(arguments: EncodeKernels.available)
    func groupedRowsEncodeAsTheReference(_ path: EncodeKernels.Path) throws {
        var cases = 0
        try forEachSeededCase(300, base: 803) { g in
            let d = (propertyHeadDims + [16, 33, 130]).randomElement(using: &g)!
            let format = StorageFormat.grouped(CodeWidth.allCases.randomElement(using: &g)!, groupSize: [8, 16, 24, 32, 64, 128].randomElement(using: &g)!)
            let codec = try RowCodec(format, headDim: d)
            let n = Int.random(in: 1...5, using: &g)
            var x = [Float](), families = [RowFamily]()
            for _ in 0..<n { let r = Self.row(d, using: &g); x += r.values; families.append(r.family) }
            var fast = [UInt8](repeating: 0xAB, count: n * codec.rowByteCount), reference = fast
            x.withUnsafeBufferPointer { xp in
                fast.withUnsafeMutableBytes { EncodeKernels.encodeGrouped(codec, xp.baseAddress!, count: n, into: $0.baseAddress!, path: path) }
                reference.withUnsafeMutableBytes { rp in
                    for r in 0..<n { try! codec.encodeReference(xp.baseAddress! + r * d, into: rp.baseAddress! + r * codec.rowByteCount) }
                }
            }
            #expect(fast == reference, "\(path) \(format) d \(d) rows \(n) families \(families) seed \(g.seed)")
            cases += 1
        }
        #expect(cases == 300)
    }

    @Test(arguments: EncodeKernels.available)
    func channelwisePagesEncodeAsTheReference(_ path: EncodeKernels.Path) throws {
        try forEachSeededCase(300, base: 804) { g in
            let d = (propertyHeadDims + [16, 33, 65, 130]).randomElement(using: &g)!
            let codec = try ChannelwiseKeyCodec(CodeWidth.allCases.randomElement(using: &g)!, headDim: d)
            let n = [1, 2, 3, 16, 32, 128].randomElement(using: &g)!
            // Per-channel families: a page of tokens whose channels follow one family each.
            var x = [Float](repeating: 0, count: n * d)
            var families = [RowFamily]()
            for c in 0..<d {
                let family = RowFamily.allCases.randomElement(using: &g)!
                families.append(family)
                let column = family.row(n, using: &g)
                for t in 0..<n { x[t * d + c] = column[t] }
            }
            if Bool.random(using: &g) { for _ in 0..<max(1, n * d / 16) { x[Int.random(in: 0..<(n * d), using: &g)] = Bool.random(using: &g) ? -0.0 : 0 } }
            var fast = [UInt8](repeating: 0xAB, count: n * codec.rowByteCount), reference = fast
            var fastParams = [UInt8](repeating: 0xCD, count: codec.parameterByteCount), referenceParams = fastParams
            x.withUnsafeBufferPointer { xp in
                fast.withUnsafeMutableBytes { c in fastParams.withUnsafeMutableBytes { p in
                    EncodeKernels.encodeChannelwise(codec, xp.baseAddress!, tokenCount: n, codes: c.baseAddress!, params: p.baseAddress!, path: path)
                } }
                reference.withUnsafeMutableBytes { c in referenceParams.withUnsafeMutableBytes { p in
                    codec.encodePageReference(xp.baseAddress!, tokenCount: n, codes: c.baseAddress!, params: p.baseAddress!)
                } }
            }
            #expect(fastParams == referenceParams, "\(path) \(codec.width) d \(d) n \(n) seed \(g.seed): parameters")
            #expect(fast == reference, "\(path) \(codec.width) d \(d) n \(n) seed \(g.seed): codes")
            // The batch decoder agrees with the row decoder.
            var rows = [Float](repeating: 0, count: n * d), one = [Float](repeating: 0, count: n * d)
            fast.withUnsafeBytes { c in referenceParams.withUnsafeBytes { p in
                rows.withUnsafeMutableBufferPointer { codec.decodeRows(c.baseAddress!, count: n, params: p.baseAddress!, into: $0.baseAddress!) }
                one.withUnsafeMutableBufferPointer { o in
                    for t in 0..<n { codec.decode(c.baseAddress! + t * codec.rowByteCount, params: p.baseAddress!, into: o.baseAddress! + t * d) }
                }
            } }
            #expect(rows.map(\.bitPattern) == one.map(\.bitPattern), "seed \(g.seed): decodeRows")
        }
    }

    /// Signed zeros do not change the parameters: a group's minimum or maximum of −0 counts as +0.
    @Test func signedZerosGiveTheSameParameters() {
        for w in CodeWidth.allCases {
            #expect(AffineParameters(lo: -0.0, hi: 0, width: w) == AffineParameters(lo: 0, hi: -0.0, width: w))
            #expect(AffineParameters(lo: -0.0, hi: 1, width: w) == AffineParameters(lo: 0, hi: 1, width: w))
            #expect(AffineParameters(lo: -1, hi: -0.0, width: w) == AffineParameters(lo: -1, hi: 0, width: w))
            #expect(AffineParameters(lo: -0.0, hi: -0.0, width: w).zeroBits == 0)
        }
    }
}
