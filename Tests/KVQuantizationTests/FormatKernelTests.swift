import Foundation
import Testing
import TestSupport
@testable import KVQuantization

/// The page kernels of the INT3 and Lloyd–Max formats (`PageKernels+Formats.swift`) against their
/// twins, on every path this machine runs: each entry (the AVX2 C kernels where
/// `runsFormatAVX2Kernels`, else Swift) and, explicitly, the Swift paths. Run with
/// `KVCRUSH_KERNELS=portable` the entries take the Swift paths too.
@Suite struct FormatKernelTests {
    static let u = 0x1p-24
    static func gamma(_ k: Int) -> Double { Double(k) * u / (1 - Double(k) * u) }
    static let dims = [1, 7, 8, 9, 63, 64, 96, 128, 256]

    static func gaussians(_ n: Int, sigma: Float = 1, using g: inout SeededGenerator) -> [Float] {
        (0..<n).map { _ in Float(g.nextGaussian()) * sigma }
    }

    /// A page of `n` rows of `format` from a random family.
    static func rows(_ codec: RowCodec, _ n: Int, using g: inout SeededGenerator) throws -> [UInt8] {
        var bytes = [UInt8]()
        let family = RowFamily.allCases.randomElement(using: &g)!
        for _ in 0..<n { bytes += try codec.encode(family.row(codec.headDim, using: &g)) }
        return bytes
    }

    @Test func lloydMaxScoresWithinReorderingBound() throws {
        try forEachSeededCase(120, base: 7100) { g in
            let w = [CodeWidth.int2, .int3, .int4].randomElement(using: &g)!, d = Self.dims.randomElement(using: &g)!
            let rows = Int.random(in: 1...9, using: &g), n = Int.random(in: 1...40, using: &g), stride = n + Int.random(in: 0...3, using: &g)
            let codec = try RowCodec(.lloydMax(w), headDim: d)
            let keys = try Self.rows(codec, n, using: &g), q = Self.gaussians(rows * d, using: &g)
            let scale = Float.random(in: 0.05...1, using: &g)
            var entry = [Float](repeating: .nan, count: rows * stride), portable = entry, ref = entry, perPair = entry
            var work = [Float](repeating: .nan, count: rows * (d + 1))
            q.withUnsafeBufferPointer { qp in
                keys.withUnsafeBytes { kp in
                    work.withUnsafeMutableBufferPointer { wp in
                        entry.withUnsafeMutableBufferPointer {
                            PageKernels.scoresLloydMax(codec, qp.baseAddress!, rowCount: rows, keys: kp.baseAddress!, tokenCount: n, scale: scale,
                                                       into: $0.baseAddress!, stride: stride, work: wp.baseAddress!)
                        }
                        portable.withUnsafeMutableBufferPointer {
                            PageKernels.scoresLloydMaxPortable(codec, qp.baseAddress!, rowCount: rows, keys: kp.baseAddress!, tokenCount: n,
                                                               scale: scale, into: $0.baseAddress!, stride: stride, work: wp.baseAddress!)
                        }
                    }
                    ref.withUnsafeMutableBufferPointer {
                        PageKernels.scoresReference(codec, qp.baseAddress!, rowCount: rows, keys: kp.baseAddress!, tokenCount: n, scale: scale,
                                                    into: $0.baseAddress!, stride: stride)
                    }
                    for r in 0..<rows {
                        for j in 0..<n {
                            let row = kp.baseAddress! + j * codec.rowByteCount
                            perPair[r * stride + j] = codec.dot(qp.baseAddress! + r * d, row) * scale
                            let bound = 2 * Double(scale) * codec.dotErrorBound(qp.baseAddress! + r * d, row) + 2 * Self.u * Double(abs(ref[r * stride + j]))
                            let context = "seed \(g.seed) lm\(w.bits) d \(d) rows \(rows) r \(r) j \(j)"
                            #expect(abs(Double(entry[r * stride + j]) - Double(ref[r * stride + j])) <= bound, "\(context): entry")
                            #expect(portable[r * stride + j].bitPattern == perPair[r * stride + j].bitPattern, "\(context): portable ≠ RowCodec.dot")
                        }
                    }
                }
            }
        }
    }

    @Test func int3ChannelwiseScoresWithinReorderingBound() throws {
        try forEachSeededCase(120, base: 7200) { g in
            let d = Self.dims.randomElement(using: &g)!, rows = Int.random(in: 1...9, using: &g)
            let n = Int.random(in: 1...40, using: &g), stride = n + Int.random(in: 0...3, using: &g)
            let codec = try ChannelwiseKeyCodec(.int3, headDim: d)
            let family = RowFamily.allCases.randomElement(using: &g)!
            let x = (0..<n).flatMap { _ in family.row(d, using: &g) }
            var codes = [UInt8](repeating: 0, count: n * codec.rowByteCount), params = [UInt8](repeating: 0, count: codec.parameterByteCount)
            try x.withUnsafeBufferPointer { xp in
                try codes.withUnsafeMutableBytes { cp in
                    try params.withUnsafeMutableBytes { try codec.encodePage(xp.baseAddress!, tokenCount: n, codes: cp.baseAddress!, params: $0.baseAddress!) }
                }
            }
            let q = Self.gaussians(rows * d, using: &g), scale = Float.random(in: 0.05...1, using: &g)
            var entry = [Float](repeating: .nan, count: rows * stride), portable = entry, ref = entry
            var work = [Float](repeating: .nan, count: rows * (d + 1))
            q.withUnsafeBufferPointer { qp in
                codes.withUnsafeBytes { cp in
                    params.withUnsafeBytes { pp in
                        work.withUnsafeMutableBufferPointer { wp in
                            entry.withUnsafeMutableBufferPointer {
                                PageKernels.scoresChannelwiseInt3(codec, qp.baseAddress!, rowCount: rows, codes: cp.baseAddress!, params: pp.baseAddress!,
                                                                  tokenCount: n, scale: scale, into: $0.baseAddress!, stride: stride, work: wp.baseAddress!)
                            }
                            portable.withUnsafeMutableBufferPointer {
                                PageKernels.scoresChannelwiseInt3Portable(codec, qp.baseAddress!, rowCount: rows, codes: cp.baseAddress!,
                                                                          params: pp.baseAddress!, tokenCount: n, scale: scale, into: $0.baseAddress!,
                                                                          stride: stride, work: wp.baseAddress!)
                            }
                        }
                        ref.withUnsafeMutableBufferPointer {
                            PageKernels.scoresChannelwiseReference(codec, qp.baseAddress!, rowCount: rows, codes: cp.baseAddress!, params: pp.baseAddress!,
                                                                   tokenCount: n, scale: scale, into: $0.baseAddress!, stride: stride)
                        }
                        for r in 0..<rows {
                            let prepared = codec.prepare(qp.baseAddress! + r * d, params: pp.baseAddress!)
                            for j in 0..<n {
                                var magnitude = 0.0
                                for c in 0..<d {
                                    let a = codec.parameters(ofChannel: c, in: pp.baseAddress!)
                                    magnitude += abs(Double(q[r * d + c])) * (Double(a.scale) * Double(codec.code(at: c, in: cp.baseAddress! + j * codec.rowByteCount)) + abs(Double(a.zero)))
                                }
                                let bound = 2 * Double(scale) * Self.gamma(d + 4) * magnitude + 2 * Self.u * Double(abs(ref[r * stride + j]))
                                let context = "seed \(g.seed) d \(d) rows \(rows) r \(r) j \(j) \(family)"
                                #expect(abs(Double(entry[r * stride + j]) - Double(ref[r * stride + j])) <= bound, "\(context): entry")
                                let perPair = codec.dot(prepared, cp.baseAddress! + j * codec.rowByteCount) * scale
                                #expect(portable[r * stride + j].bitPattern == perPair.bitPattern, "\(context): portable ≠ prepare + dot")
                            }
                        }
                    }
                }
            }
        }
    }

    /// The entry bit for bit with `accumulateReference` (AVX2: one fma per element) or, on the
    /// Swift path, with `RowCodec.accumulateReference` per token and row; the Swift path always
    /// with the latter.
    @Test func accumulateEqualsItsTwinBitForBit() throws {
        let formats: [StorageFormat] = [.lloydMax(.int2), .lloydMax(.int3), .lloydMax(.int4), .grouped(.int3, groupSize: 32),
                                        .grouped(.int3, groupSize: 64), .grouped(.int3, groupSize: 8), .grouped(.int3, groupSize: 128)]
        try forEachSeededCase(140, base: 7300) { g in
            let format = formats.randomElement(using: &g)!, d = Self.dims.randomElement(using: &g)!
            let rows = Int.random(in: 1...9, using: &g), n = Int.random(in: 1...40, using: &g), stride = n + Int.random(in: 0...3, using: &g)
            let codec = try RowCodec(format, headDim: d)
            let values = try Self.rows(codec, n, using: &g)
            let w = (0..<(rows * stride)).map { _ in Bool.random(using: &g) ? Float(0) : Float.random(in: 0...1, using: &g) }
            let start = Self.gaussians(rows * d, using: &g)
            var entry = start, portable = start, fused = start, twoRoundings = start
            w.withUnsafeBufferPointer { wp in
                values.withUnsafeBytes { vp in
                    entry.withUnsafeMutableBufferPointer {
                        PageKernels.accumulateTiled(codec, weights: wp.baseAddress!, rowCount: rows, stride: stride, rows: vp.baseAddress!, tokenCount: n, into: $0.baseAddress!)
                    }
                    portable.withUnsafeMutableBufferPointer {
                        PageKernels.accumulateTiledPortable(codec, weights: wp.baseAddress!, rowCount: rows, stride: stride, rows: vp.baseAddress!, tokenCount: n, into: $0.baseAddress!)
                    }
                    fused.withUnsafeMutableBufferPointer {
                        PageKernels.accumulateReference(codec, weights: wp.baseAddress!, rowCount: rows, stride: stride, rows: vp.baseAddress!, tokenCount: n, into: $0.baseAddress!)
                    }
                    twoRoundings.withUnsafeMutableBufferPointer { o in
                        for j in 0..<n {
                            for r in 0..<rows { codec.accumulateReference(wp[r * stride + j], vp.baseAddress! + j * codec.rowByteCount, into: o.baseAddress! + r * d) }
                        }
                    }
                }
            }
            let context = "seed \(g.seed) \(format) d \(d) rows \(rows) n \(n)"
            let avx2 = PageKernels.runsFormatAVX2Kernels(headDim: d)
            #expect(entry.map(\.bitPattern) == (avx2 ? fused : twoRoundings).map(\.bitPattern), "\(context): entry (AVX2 \(avx2))")
            #expect(portable.map(\.bitPattern) == twoRoundings.map(\.bitPattern), "\(context): portable")
        }
    }

    /// The read path's choice for the new formats, whatever the kernel set.
    @Test func kernelChoices() {
        for kernels in [KernelSet.portable, .current, KernelSet(path: .avx512, features: [.avx512, .avx512VNNI, .avx512VBMI])] {
            for d in [64, 96, 128] {
                #expect(KeyScoring(keyFormat: .channelwise(.int3), headDim: d, kernels: kernels) == .channelwiseInt3)
                #expect(KeyScoring(keyFormat: .lloydMax(.int3), headDim: d, kernels: kernels) == .lloydMax)
                #expect(KeyScoring(keyFormat: .grouped(.int3, groupSize: 32), headDim: d, kernels: kernels) == .portable)
                for f in [StorageFormat.lloydMax(.int2), .lloydMax(.int4), .grouped(.int3, groupSize: 32)] {
                    #expect(ValueAccumulation(valueFormat: f, headDim: d, kernels: kernels) == .tiled, "\(f)")
                    #expect(!PageKernels.runsAccumulateKernel(f, headDim: d, on: kernels) && !PageKernels.runsIntegerAccumulateKernel(f, headDim: d, on: kernels))
                }
            }
        }
        #expect(PageKernels.runsFormatAVX2Kernels == (CPUFeatures.detected.contains(.avx2) && !Self.forcedPortable))
        #expect(!PageKernels.runsFormatAVX2Kernels(headDim: 63) && !PageKernels.runsFormatAVX2Kernels(headDim: 1))
    }

    static var forcedPortable: Bool { ProcessInfo.processInfo.environment[KernelPath.environmentVariable] == "portable" }
}
