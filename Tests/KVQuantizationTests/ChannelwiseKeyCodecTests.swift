import Testing
import TestSupport
@testable import KVQuantization

/// One page encoded per channel, with its decoded rows.
private struct EncodedPage {
    let codec: ChannelwiseKeyCodec
    let x: [Float]
    let tokenCount: Int
    var codes: [UInt8]
    var params: [UInt8]

    init(_ codec: ChannelwiseKeyCodec, _ x: [Float], tokenCount: Int) throws {
        self.codec = codec
        self.x = x
        self.tokenCount = tokenCount
        codes = [UInt8](repeating: 0xA5, count: tokenCount * codec.rowByteCount)
        params = [UInt8](repeating: 0xA5, count: codec.parameterByteCount)
        try x.withUnsafeBufferPointer { xp in
            try codes.withUnsafeMutableBytes { cp in
                try params.withUnsafeMutableBytes { pp in
                    try codec.encodePage(xp.baseAddress!, tokenCount: tokenCount, codes: cp.baseAddress!, params: pp.baseAddress!)
                }
            }
        }
    }

    func decoded(_ t: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: codec.headDim)
        codes.withUnsafeBytes { cp in
            params.withUnsafeBytes { pp in
                out.withUnsafeMutableBufferPointer {
                    codec.decode(cp.baseAddress! + t * codec.rowByteCount, params: pp.baseAddress!, into: $0.baseAddress!)
                }
            }
        }
        return out
    }

    func parameters(_ c: Int) -> AffineParameters {
        params.withUnsafeBytes { codec.parameters(ofChannel: c, in: $0.baseAddress!) }
    }
}

@Suite struct ChannelwiseKeyCodecTests {
    @Test func errorAndDotsWithinBounds() throws {
        var shape: UInt64 = 0
        for w in CodeWidth.allCases {
            for d in propertyHeadDims {
                let codec = try ChannelwiseKeyCodec(w, headDim: d)
                for n in [1, 7, 32] {
                    for family in RowFamily.allCases {
                        shape += 1
                        try forEachSeededCase(2, base: 1000 &+ shape) { g in
                            let x = (0..<n).flatMap { _ in family.row(d, using: &g) }
                            let page = try EncodedPage(codec, x, tokenCount: n)
                            let context = "seed \(g.seed) \(w) headDim \(d) tokens \(n) family \(family)"
                            let q = (0..<d).map { _ in Float(g.nextGaussian()) }
                            for t in 0..<n {
                                let y = page.decoded(t)
                                for c in 0..<d {
                                    let b = page.parameters(c).errorBound(width: w)
                                    #expect(abs(y[c] - x[t * d + c]) <= b, "\(context) token \(t) channel \(c)")
                                }
                                // Dot in code space and the reference, both against the exact dot with x̂.
                                var exact = 0.0, magnitude = 0.0
                                for c in 0..<d {
                                    exact += Double(q[c]) * Double(y[c])
                                    let a = page.parameters(c)
                                    let code = page.codes.withUnsafeBytes { codec.code(at: c, in: $0.baseAddress! + t * codec.rowByteCount) }
                                    magnitude += abs(Double(q[c])) * (Double(a.scale) * Double(code) + abs(Double(a.zero)))
                                }
                                let nn = Double(d + 3), u = 0x1p-24
                                let bound = nn * u / (1 - nn * u) * magnitude
                                q.withUnsafeBufferPointer { qp in
                                    page.codes.withUnsafeBytes { cp in
                                        page.params.withUnsafeBytes { pp in
                                            let row = cp.baseAddress! + t * codec.rowByteCount
                                            let prepared = codec.prepare(qp.baseAddress!, params: pp.baseAddress!)
                                            let fast = codec.dot(prepared, row)
                                            let ref = codec.dotReference(qp.baseAddress!, row, params: pp.baseAddress!)
                                            #expect(abs(Double(fast) - exact) <= bound, "\(context) token \(t): fast dot")
                                            #expect(abs(Double(ref) - exact) <= bound, "\(context) token \(t): reference dot")
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The case per-channel keys exist for: the same few channels carry a large offset (±100, as
    /// post-RoPE key outlier channels do) in every token of a page. Per channel, the offset costs
    /// nothing; per token group it stretches the step of every element sharing its group. (With
    /// random-sign outliers instead, the channel's range spans both signs and at INT2 groups win.)
    @Test func beatsGroupsOnConsistentOutlierChannels() throws {
        let d = 64, n = 32
        for w in CodeWidth.allCases {
            let channelwise = try ChannelwiseKeyCodec(w, headDim: d)
            let grouped = try RowCodec(.grouped(w, groupSize: 32), headDim: d)
            var errChannel = 0.0, errGroup = 0.0
            try forEachSeededCase(20, base: 1100) { g in
                var offset = [Float](repeating: 0, count: d)
                for _ in 0..<3 { offset[Int.random(in: 0..<d, using: &g)] = Bool.random(using: &g) ? 100 : -100 }
                let x = (0..<n * d).map { i in offset[i % d] + Float(g.nextGaussian()) * (offset[i % d] == 0 ? 1 : 3) }
                let page = try EncodedPage(channelwise, x, tokenCount: n)
                for t in 0..<n {
                    let a = page.decoded(t)
                    let row = Array(x[(t * d)..<((t + 1) * d)])
                    let b = grouped.decode(try grouped.encode(row))
                    for c in 0..<d {
                        errChannel += Double(a[c] - row[c]) * Double(a[c] - row[c])
                        errGroup += Double(b[c] - row[c]) * Double(b[c] - row[c])
                    }
                }
            }
            #expect(errChannel < errGroup, "\(w): per-channel \(errChannel) vs grouped \(errGroup)")
        }
    }

    @Test func constantChannelsAreExact() throws {
        let codec = try ChannelwiseKeyCodec(.int4, headDim: 9)
        let row: [Float] = [0, 1, -2, 0.5, 65504, -65504, 3.25, 0x1p-24, 100]
        let x = (0..<5).flatMap { _ in row }
        let page = try EncodedPage(codec, x, tokenCount: 5)
        for t in 0..<5 { #expect(page.decoded(t) == row) }
    }

    @Test func rejectsUnstorableValuesWithFlatIndexAndWritesNothing() throws {
        let codec = try ChannelwiseKeyCodec(.int8, headDim: 7)
        for (value, isRange) in [(Float.nan, false), (.infinity, false), (65520, true), (-1e6, true)] {
            var x = [Float](repeating: 1, count: 3 * 7)
            x[2 * 7 + 4] = value
            x[20] = .nan
            var codes = [UInt8](repeating: 0xA5, count: 3 * codec.rowByteCount)
            var params = [UInt8](repeating: 0xA5, count: codec.parameterByteCount)
            #expect(throws: QuantizationError.self) {
                try x.withUnsafeBufferPointer { xp in
                    try codes.withUnsafeMutableBytes { cp in
                        try params.withUnsafeMutableBytes { pp in
                            try codec.encodePage(xp.baseAddress!, tokenCount: 3, codes: cp.baseAddress!, params: pp.baseAddress!)
                        }
                    }
                }
            }
            do { _ = try EncodedPage(codec, x, tokenCount: 3) } catch let error as QuantizationError {
                #expect(error.index == 18)
                if case .outOfRange = error { #expect(isRange) } else { #expect(!isRange) }
            }
            #expect(codes.allSatisfy { $0 == 0xA5 } && params.allSatisfy { $0 == 0xA5 })
        }
    }
}
