import Foundation
import Testing
import TestSupport
@testable import KVQuantization

/// The page kernels (`PageKernels`) against their Swift reference twins, on the current kernel
/// path: the AVX-512 C kernels (where the shape allows; other head dims take the AVX2 kernels or
/// the Swift path there), the AVX2 C kernels (head dims that are multiples of 16), or with
/// `KVCRUSH_KERNELS=portable` (and on CPUs without either) the tiled Swift kernels of the same
/// entries. Head dims that are not multiples of 16 exercise the tails; row counts up to 9 every
/// tile size.
@Suite struct PageKernelTests {
    static let u = 0x1p-24
    static func gamma(_ k: Int) -> Double { Double(k) * u / (1 - Double(k) * u) }

    static func gaussians(_ n: Int, sigma: Float = 1, using g: inout SeededGenerator) -> [Float] {
        (0..<n).map { _ in Float(g.nextGaussian()) * sigma }
    }

    @Test func expEqualsReferenceBitForBit() {
        var g = SeededGenerator(seed: 61)
        var x: [Float] = [0, -0.0, -1e-30, -0x1p-149, -1, -0.5 * Float(M_LN2), -87, -87.33, -88, -100, -102.99, -103, -103.0001, -104, -200,
                          -.infinity, -Float.greatestFiniteMagnitude]
        x += (0..<4000).map { _ in -Float.random(in: 0...110, using: &g) }
        x += (0..<1000).map { _ in -Float.random(in: 0...1e-3, using: &g) }
        var fast = [Float](repeating: .nan, count: x.count)
        x += [-.nan, .nan]
        x.withUnsafeBufferPointer { xp in fast.withUnsafeMutableBufferPointer { PageKernels.exp(xp.baseAddress!, into: $0.baseAddress!, count: x.count - 2) } }
        for (i, v) in x.enumerated() {
            let r = PageKernels.expReference(v), ru = PageKernels.expUnfusedReference(v)
            // The Swift softmax's exp, eight lanes at a time, is its unfused twin bit for bit.
            let lanes = PageKernels.exp4Unfused(SIMD4(repeating: v))
            for k in 0..<4 { #expect(lanes[k].bitPattern == ru.bitPattern, "exp4Unfused(\(v)): \(lanes[k]) vs \(ru)") }
            guard !v.isNaN else { #expect(r == 0 && ru == 0); continue }
            #expect(fast[i].bitPattern == r.bitPattern, "exp(\(v)): fast \(fast[i]) reference \(r)")
            // Accuracy of both twins: within 2 ulp of exp in the normal range, tiny below.
            let exact = Foundation.exp(Double(v))
            for (name, y) in [("fused", r), ("unfused", ru)] {
                if v >= -87 {
                    #expect(abs(Double(y) - exact) <= 2 * Double(Float(exact).ulp), "\(name) exp(\(v)) = \(y), exact \(exact)")
                } else {
                    #expect(abs(Double(y) - exact) <= 0x1p-126, "\(name) exp(\(v)) = \(y), exact \(exact)")
                }
            }
        }
    }

    @Test func fp16ScoresWithinReorderingBound() throws {
        try forEachSeededCase(40, base: 6100) { g in
            let d = [64, 128, 192, 96, 40, 80, 8, 23].randomElement(using: &g)!, rows = Int.random(in: 1...9, using: &g)
            let n = Int.random(in: 1...40, using: &g), stride = n + Int.random(in: 0...3, using: &g)
            let codec = try RowCodec(.fp16, headDim: d)
            let q = Self.gaussians(rows * d, using: &g)
            var keys = [UInt8]()
            for _ in 0..<n { keys += try codec.encode(Self.gaussians(d, sigma: 3, using: &g)) }
            let scale = Float.random(in: 0.05...1, using: &g)
            var fast = [Float](repeating: .nan, count: rows * stride), ref = fast
            var work = [Float](repeating: .nan, count: rows * d)
            q.withUnsafeBufferPointer { qp in
                keys.withUnsafeBytes { kp in
                    fast.withUnsafeMutableBufferPointer { fp in
                        work.withUnsafeMutableBufferPointer {
                            PageKernels.scoresFP16(qp.baseAddress!, rowCount: rows, headDim: d, keys: kp.baseAddress!, tokenCount: n,
                                                   scale: scale, into: fp.baseAddress!, stride: stride, work: $0.baseAddress!)
                        }
                    }
                    ref.withUnsafeMutableBufferPointer {
                        PageKernels.scoresReference(codec, qp.baseAddress!, rowCount: rows, keys: kp.baseAddress!, tokenCount: n,
                                                    scale: scale, into: $0.baseAddress!, stride: stride)
                    }
                    for r in 0..<rows {
                        for j in 0..<n {
                            // Both within dotErrorBound of the exact dot, then one rounding for ·scale each.
                            let bound = 2 * Double(scale) * codec.dotErrorBound(qp.baseAddress! + r * d, kp.baseAddress! + j * codec.rowByteCount)
                                + 2 * Self.u * Double(abs(ref[r * stride + j]))
                            #expect(abs(Double(fast[r * stride + j]) - Double(ref[r * stride + j])) <= bound,
                                    "seed \(g.seed) d \(d) rows \(rows) r \(r) j \(j)")
                        }
                    }
                }
            }
        }
    }

    @Test func channelwiseScoresWithinReorderingBound() throws {
        try forEachSeededCase(60, base: 6200) { g in
            let width = CodeWidth.allCases.randomElement(using: &g)!
            let d = [64, 128, 256, 96, 80, 48, 40, 7].randomElement(using: &g)!, rows = Int.random(in: 1...9, using: &g)
            let n = Int.random(in: 1...40, using: &g), stride = n + Int.random(in: 0...3, using: &g)
            let codec = try ChannelwiseKeyCodec(width, headDim: d)
            let x = Self.gaussians(n * d, sigma: 2, using: &g).enumerated().map { i, v in i % d == 5 ? v * 20 : v }
            var codes = [UInt8](repeating: 0, count: n * codec.rowByteCount), params = [UInt8](repeating: 0, count: codec.parameterByteCount)
            try x.withUnsafeBufferPointer { xp in
                try codes.withUnsafeMutableBytes { cp in
                    try params.withUnsafeMutableBytes { pp in
                        try codec.encodePage(xp.baseAddress!, tokenCount: n, codes: cp.baseAddress!, params: pp.baseAddress!)
                    }
                }
            }
            let q = Self.gaussians(rows * d, using: &g)
            let scale = Float.random(in: 0.05...1, using: &g)
            var fast = [Float](repeating: .nan, count: rows * stride), ref = fast
            var work = [Float](repeating: .nan, count: (rows + 1) * (d + 1))
            q.withUnsafeBufferPointer { qp in
                codes.withUnsafeBytes { cp in
                    params.withUnsafeBytes { pp in
                        fast.withUnsafeMutableBufferPointer { fp in
                            work.withUnsafeMutableBufferPointer {
                                PageKernels.scoresChannelwise(codec, qp.baseAddress!, rowCount: rows, codes: cp.baseAddress!, params: pp.baseAddress!,
                                                              tokenCount: n, scale: scale, into: fp.baseAddress!, stride: stride, work: $0.baseAddress!)
                            }
                        }
                        ref.withUnsafeMutableBufferPointer {
                            PageKernels.scoresChannelwiseReference(codec, qp.baseAddress!, rowCount: rows, codes: cp.baseAddress!, params: pp.baseAddress!,
                                                                   tokenCount: n, scale: scale, into: $0.baseAddress!, stride: stride)
                        }
                        for r in 0..<rows {
                            for j in 0..<n {
                                // Each within γ_{d+4}·Σ|q_c|·(scale_c·code_c + |zero_c|) of the exact dot.
                                var magnitude = 0.0
                                for c in 0..<d {
                                    let a = codec.parameters(ofChannel: c, in: pp.baseAddress!)
                                    magnitude += abs(Double(q[r * d + c])) * (Double(a.scale) * Double(codec.code(at: c, in: cp.baseAddress! + j * codec.rowByteCount)) + abs(Double(a.zero)))
                                }
                                let bound = 2 * Double(scale) * Self.gamma(d + 4) * magnitude + 2 * Self.u * Double(abs(ref[r * stride + j]))
                                #expect(abs(Double(fast[r * stride + j]) - Double(ref[r * stride + j])) <= bound,
                                        "seed \(g.seed) \(width) d \(d) rows \(rows) r \(r) j \(j): \(fast[r * stride + j]) vs \(ref[r * stride + j])")
                            }
                        }
                    }
                }
            }
        }
    }

    @Test func softmaxPageMatchesReference() {
        forEachSeededCase(60, base: 6300) { g in
            let rows = Int.random(in: 1...6, using: &g), n = Int.random(in: 1...40, using: &g), d = [16, 64, 128, 7].randomElement(using: &g)!
            let stride = n + Int.random(in: 0...3, using: &g)
            var s = (0..<(rows * stride)).map { _ in Float(g.nextGaussian()) * 5 }
            for i in s.indices where Int.random(in: 0..<4, using: &g) == 0 { s[i] = -.infinity }
            if Bool.random(using: &g) { for j in 0..<n { s[j] = -.infinity } } // a row that sees nothing
            var m = (0..<rows).map { _ in Bool.random(using: &g) ? -Float.infinity : Float(g.nextGaussian()) * 5 }
            var l = m.map { $0 == -.infinity ? Float(0) : Float.random(in: 0.5...20, using: &g) }
            var out = (0..<(rows * d)).map { _ in Float(g.nextGaussian()) }
            var s2 = s, m2 = m, l2 = l, out2 = out
            PageKernels.softmaxPage(&s, rowCount: rows, tokenCount: n, stride: stride, m: &m, l: &l, out: &out, headDim: d)
            PageKernels.softmaxPageReference(&s2, rowCount: rows, tokenCount: n, stride: stride, m: &m2, l: &l2, out: &out2, headDim: d,
                                             fusedExp: PageKernels.softmaxUsesFusedExp())
            for r in 0..<rows {
                #expect(m[r].bitPattern == m2[r].bitPattern, "seed \(g.seed) row \(r): max")
                for j in 0..<n { #expect(s[r * stride + j].bitPattern == s2[r * stride + j].bitPattern, "seed \(g.seed) row \(r) weight \(j)") }
                for i in 0..<d { #expect(out[r * d + i].bitPattern == out2[r * d + i].bitPattern, "seed \(g.seed) row \(r) out \(i)") }
                // The sums differ by summation order only.
                #expect(abs(Double(l[r]) - Double(l2[r])) <= 2 * Self.gamma(n + 2) * Double(l2[r]), "seed \(g.seed) row \(r): sum \(l[r]) vs \(l2[r])")
            }
        }
    }

    @Test func accumulateEqualsReferenceBitForBit() throws {
        let formats: [StorageFormat] = [.fp16, .grouped(.int8, groupSize: 16), .grouped(.int8, groupSize: 32), .int8,
                                        .grouped(.int8, groupSize: 128), .int4, .grouped(.int4, groupSize: 64),
                                        .grouped(.int4, groupSize: 128), .grouped(.int2, groupSize: 64), .grouped(.int2, groupSize: 128),
                                        .int2, .grouped(.int4, groupSize: 16), .grouped(.int8, groupSize: 8), .grouped(.int4, groupSize: 24),
                                        .grouped(.int4, groupSize: 256)]
        try forEachSeededCase(80, base: 6400) { g in
            let format = formats.randomElement(using: &g)!
            // Every shape: the kernel's (where it runs) and others (the reference then).
            let d = [64, 128, 256, 96, 80, 48, 40].randomElement(using: &g)!
            let rows = Int.random(in: 1...9, using: &g), n = Int.random(in: 1...40, using: &g)
            let stride = n + Int.random(in: 0...3, using: &g)
            let codec = try RowCodec(format, headDim: d)
            var values = [UInt8]()
            for _ in 0..<n { values += try codec.encode(Self.gaussians(d, sigma: Float.random(in: 0.1...8, using: &g), using: &g)) }
            let w = (0..<(rows * stride)).map { _ in Bool.random(using: &g) ? Float(0) : Float.random(in: 0...1, using: &g) }
            var fast = Self.gaussians(rows * d, using: &g), ref = fast
            var work = [Float](repeating: .nan, count: max(1, PageKernels.accumulateWorkCount(codec, tokenCount: n)))
            w.withUnsafeBufferPointer { wp in
                values.withUnsafeBytes { vp in
                    fast.withUnsafeMutableBufferPointer { fp in
                        work.withUnsafeMutableBufferPointer {
                            PageKernels.accumulate(codec, weights: wp.baseAddress!, rowCount: rows, stride: stride, rows: vp.baseAddress!,
                                                   tokenCount: n, into: fp.baseAddress!, work: $0.baseAddress!)
                        }
                    }
                    ref.withUnsafeMutableBufferPointer {
                        PageKernels.accumulateReference(codec, weights: wp.baseAddress!, rowCount: rows, stride: stride, rows: vp.baseAddress!,
                                                        tokenCount: n, into: $0.baseAddress!,
                                                        fused: PageKernels.accumulateUsesFMA(format, headDim: d))
                    }
                }
            }
            #expect(fast.map(\.bitPattern) == ref.map(\.bitPattern), "seed \(g.seed) \(format) d \(d) rows \(rows) n \(n)")
        }
    }

    /// The Swift kernels' half conversion (`halfLanesHigh`, every FP16 row and parameter on the
    /// portable path) on every finite half, both signs, zeros and subnormals included: bit for bit
    /// `Float(Float16)`, from a pattern in the high half of the lane.
    @Test func halfLanesEqualFloat16OnEveryFiniteHalf() {
        var bad = [UInt16]()
        for h in UInt32(0)...0xFFFF where Float16(bitPattern: UInt16(h)).isFinite {
            let f = PageKernels.halfLanesHigh(SIMD4(repeating: h &<< 16))
            let want = Float(Float16(bitPattern: UInt16(h))).bitPattern
            if (0..<4).contains(where: { f[$0].bitPattern != want }) { bad.append(UInt16(h)) }
        }
        #expect(bad.isEmpty, "halves converted wrongly: \(bad.prefix(8).map { String($0, radix: 16) })")
    }

    /// The append path's kernels: FP16 encoding bit-identical to `Float16(x)` (round to nearest
    /// even, subnormals, ties, the largest half) and the value check naming the same first bad
    /// element as the scalar reference, for every head dim (tails of the 16-lane kernel).
    @Test func appendKernelsMatchReferences() throws {
        var g = SeededGenerator(seed: 6600)
        let edges: [Float] = [0, -0.0, 0x1p-24, 0x1p-25, 0x1.8p-24, 0x1p-14, 0x1.ffcp-15, 65504, -65504, 65503.9, 1 + 0x1p-11,
                              1 + 0x1.8p-11, 2049, 2051, 0x1p-149, -0x1p-140, 6.1e-5, 1e-7]
        for d in [1, 7, 8, 15, 16, 17, 64, 96, 128, 200] {
            let codec = try RowCodec(.fp16, headDim: d)
            for _ in 0..<50 {
                var x = (0..<d).map { _ in Bool.random(using: &g) ? edges.randomElement(using: &g)! : Float(g.nextGaussian()) * Float.random(in: 1e-6...1e4, using: &g) }
                var row = [UInt8](repeating: 0, count: codec.rowByteCount)
                try x.withUnsafeBufferPointer { xp in try row.withUnsafeMutableBytes { try codec.encode(xp.baseAddress!, into: $0.baseAddress!) } }
                for i in 0..<d {
                    let h = UInt16(row[2 * i]) | UInt16(row[2 * i + 1]) << 8
                    #expect(h == Float16Bits.floatToHalfReference(x[i]), "d \(d) element \(i): \(x[i])")
                }
                // Plant unstorable values; the error names the first.
                for _ in 0..<Int.random(in: 1...3, using: &g) {
                    x[Int.random(in: 0..<d, using: &g)] = [Float.nan, .infinity, -.infinity, 65504.01, -70000, .greatestFiniteMagnitude].randomElement(using: &g)!
                }
                let expected = x.withUnsafeBufferPointer { ValueCheck.firstInvalidReference($0.baseAddress!, count: d) }
                let thrown: QuantizationError? = x.withUnsafeBufferPointer { xp in
                    row.withUnsafeMutableBytes { rp in
                        do throws(QuantizationError) { try codec.encode(xp.baseAddress!, into: rp.baseAddress!); return nil } catch { return error }
                    }
                }
                // NaN payloads make the errors unequal under ==; compare index and message.
                #expect(thrown?.index == expected!.index && "\(thrown.map { "\($0)" } ?? "none")" == "\(expected!)", "d \(d): \(String(describing: thrown)) vs \(expected!)")
            }
        }
    }

    /// The shape rules of the C kernels and the read path's choices, for a CPU with every feature,
    /// for AVX2 only and for the portable path (pure logic: any CPU).
    @Test func kernelChoices() {
        let all = KernelSet(path: .avx512, features: [.avx512, .avx512VNNI, .avx512VBMI, .avx2])
        let plain = KernelSet(path: .avx512, features: [.avx512, .avx2])
        let avx2 = KernelSet(path: .avx2, features: [.avx512, .avx512VNNI, .avx512VBMI, .avx2])
        #expect(PageKernels.runsFP32Kernels(headDim: 128, on: all))
        #expect(!PageKernels.runsFP32Kernels(headDim: 96, on: all))
        #expect(PageKernels.runsAVX2Kernels(headDim: 96, on: all)) // AVX2 where AVX-512 does not take the shape
        #expect(PageKernels.runsAccumulateKernel(.int4, headDim: 128, on: all))
        #expect(!PageKernels.runsAccumulateKernel(.int2, headDim: 128, on: all)) // g32 at INT2 spans half a code block
        #expect(PageKernels.runsAVX2AccumulateKernel(.int2, headDim: 128, on: all))
        #expect(!PageKernels.runsAccumulateKernel(.channelwise(.int4), headDim: 64, on: all))
        // The avx2 path runs no AVX-512 kernel, whatever the CPU has.
        #expect(!avx2.avx512 && !avx2.vnniScores && !avx2.integerValues && avx2.avx2)
        #expect(!PageKernels.runsFP32Kernels(headDim: 128, on: avx2) && PageKernels.runsAVX2Kernels(headDim: 128, on: avx2))
        #expect(PageKernels.runsAVX2Kernels(headDim: 80, on: avx2) && !PageKernels.runsAVX2Kernels(headDim: 72, on: avx2))
        #expect(PageKernels.runsAVX2AccumulateKernel(.int4, headDim: 128, on: avx2))
        #expect(!PageKernels.runsAVX2AccumulateKernel(.grouped(.int4, groupSize: 24), headDim: 96, on: avx2))
        #expect(!PageKernels.runsAVX2AccumulateKernel(.grouped(.int4, groupSize: 256), headDim: 128, on: avx2))
        #expect(KeyScoring(keyFormat: .fp16, headDim: 128, kernels: all) == .fp16)
        #expect(KeyScoring(keyFormat: .channelwise(.int4), headDim: 64, kernels: all) == .channelwiseVNNI)
        // Without VNNI, INT4 keys take the AVX2 integer kernel (the same twin); INT8 and INT2 stay FP32.
        #expect(KeyScoring(keyFormat: .channelwise(.int4), headDim: 64, kernels: plain) == .channelwiseVNNI)
        #expect(KeyScoring(keyFormat: .channelwise(.int4), headDim: 64, kernels: avx2) == .channelwiseVNNI)
        #expect(KeyScoring(keyFormat: .channelwise(.int4), headDim: 96, kernels: avx2) == .channelwiseVNNI)
        #expect(KeyScoring(keyFormat: .channelwise(.int4), headDim: 80, kernels: avx2) == .channelwise)  // not a multiple of 32
        #expect(KeyScoring(keyFormat: .channelwise(.int4), headDim: 512, kernels: avx2) == .channelwise) // > avx2IntegerMaxHeadDim
        #expect(KeyScoring(keyFormat: .channelwise(.int8), headDim: 128, kernels: avx2) == .channelwise)
        #expect(KeyScoring(keyFormat: .channelwise(.int2), headDim: 128, kernels: avx2) == .channelwise)
        #expect(KeyScoring(keyFormat: .channelwise(.int2), headDim: 576, kernels: all) == .channelwise) // > vnniMaxHeadDim
        #expect(KeyScoring(keyFormat: .int4, headDim: 128, kernels: all) == .grouped) // grouped keys: per-row kernel
        #expect(ValueAccumulation(valueFormat: .int4, headDim: 128, kernels: all) == .integer)
        #expect(ValueAccumulation(valueFormat: .int4, headDim: 128, kernels: plain) == .floatingPoint)
        #expect(ValueAccumulation(valueFormat: .int8, headDim: 128, kernels: all) == .floatingPoint) // measured: INT8 keeps FP32
        #expect(ValueAccumulation(valueFormat: .int4, headDim: 128, kernels: avx2) == .floatingPoint)
        #expect(PageKernels.accumulateUsesFMA(.int2, headDim: 128, on: avx2) && !PageKernels.accumulateUsesFMA(.int2, headDim: 72, on: avx2))
        // The portable path runs nothing accelerated, whatever the CPU has.
        let portable = KernelSet(path: .portable, features: [.avx512, .avx512VNNI, .avx512VBMI, .avx2])
        #expect(portable == .portable && !portable.avx512 && !portable.vnniScores && !portable.integerValues && !portable.avx2)
        #expect(!PageKernels.softmaxUsesFusedExp(on: portable) && !PageKernels.accumulateUsesFMA(.fp16, headDim: 128, on: portable))
        for format in [StorageFormat.channelwise(.int8), .channelwise(.int4), .channelwise(.int2)] {
            #expect(KeyScoring(keyFormat: format, headDim: 128, kernels: portable) == .channelwise, "\(format)")
        }
        for format in [StorageFormat.fp16, .int8, .int4, .int2] {
            #expect(ValueAccumulation(valueFormat: format, headDim: 128, kernels: portable) == .floatingPoint, "\(format)")
        }
        // The store's choice and every entry follow the process's kernel set.
        #expect(KeyScoring(keyFormat: .channelwise(.int4), headDim: 128) == KeyScoring(keyFormat: .channelwise(.int4), headDim: 128, kernels: .current))
        if KernelSet.current.path == .portable {
            #expect(!PageKernels.runsFP32Kernels(headDim: 128) && !PageKernels.runsVNNIScoreKernel(headDim: 128)
                    && !PageKernels.runsIntegerAccumulateKernel(.int4, headDim: 128) && !PageKernels.runsAVX2Kernels(headDim: 128))
        }
    }
}
