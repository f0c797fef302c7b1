import Foundation
import Testing
import TestSupport
@testable import KVQuantization

/// Mixed-width per-channel keys (`MixedChannelwiseKeyCodec`) on the kernel path this process runs
/// (`KernelSet.current`: `KVCRUSH_KERNELS=avx512`, `avx2` or `portable`): the accelerated encoder
/// against its scalar twin bit for bit, the documented layout (each segment exactly a
/// `ChannelwiseKeyCodec` page of its channels), the per-element error bound of each channel's
/// width, and `scores` against `scoresReference` and the exact score within the segments' kernel
/// bounds (`MixedChannelwiseKeyCodec.scoreErrorBound` in TestSupport). Head dims include 1, 12 and
/// 20 (not multiples of 8) and segment sizes that are multiples of 16, 32 and 64, so that each
/// segment reaches the AVX-512, AVX2, VNNI and Swift kernels the path has.
@Suite struct MixedChannelwiseKeyCodecTests {
    static let dims = [1, 7, 8, 12, 20, 63, 64, 96, 128]

    /// Random widths for one head: independent per channel from a random subset of the widths, or
    /// blocks of 8/16/32/64 channels per width (scattered over the channels), or one width.
    static func randomHead(_ d: Int, using g: inout SeededGenerator) -> [CodeWidth] {
        switch Int.random(in: 0..<3, using: &g) {
        case 0:
            var pool = CodeWidth.allCases.filter { _ in Bool.random(using: &g) }
            if pool.isEmpty { pool = [.int4] }
            return (0..<d).map { _ in pool.randomElement(using: &g)! }
        case 1 where d % 8 == 0:  // blocks of 8 give segments ending in a half unit (8 mod 16 channels)
            let block = [8, 16, 32, 64].filter { d % $0 == 0 }.randomElement(using: &g)!
            var head = [CodeWidth]()
            for _ in 0..<(d / block) { head += [CodeWidth](repeating: CodeWidth.allCases.randomElement(using: &g)!, count: block) }
            return head.shuffled(using: &g)
        default:
            return [CodeWidth](repeating: CodeWidth.allCases.randomElement(using: &g)!, count: d)
        }
    }

    /// Keys of `n` tokens: a row family per page, then (sometimes) constant channels, an outlier
    /// channel (large offset and spread) and a channel spanning ±65504.
    static func randomKeys(_ n: Int, _ d: Int, using g: inout SeededGenerator) -> (x: [Float], description: String) {
        let family = RowFamily.allCases.randomElement(using: &g)!
        var x = (0..<n).flatMap { _ in family.row(d, using: &g) }
        var notes = ["\(family)"]
        if Bool.random(using: &g) {
            notes.append("constant channels")
            for c in 0..<d where Int.random(in: 0..<4, using: &g) == 0 {
                let v = Float(g.nextGaussian()) * 10
                for t in 0..<n { x[t * d + c] = v }
            }
        }
        if Bool.random(using: &g) {
            let c = Int.random(in: 0..<d, using: &g)
            notes.append("outlier channel \(c)")
            for t in 0..<n { x[t * d + c] = x[t * d + c] * 50 + 300 }
        }
        if Int.random(in: 0..<4, using: &g) == 0 {
            let c = Int.random(in: 0..<d, using: &g)
            notes.append("±65504 channel \(c)")
            for t in 0..<n { x[t * d + c] = t % 2 == 0 ? 65504 : -65504 }
        }
        return (x.map { min(max($0, -65504), 65504) }, notes.joined(separator: ", "))
    }

    /// One page encoded by `encodePage` (codes and parameters with 16 guard bytes after each).
    struct EncodedPage {
        static let guardBytes = 16
        let codec: MixedChannelwiseKeyCodec
        let head: [CodeWidth]
        let n: Int
        let x: [Float]
        var codes: [UInt8], params: [UInt8]

        init(_ widths: ChannelWidths, kvHead: Int = 0, _ x: [Float], tokenCount n: Int) throws {
            codec = MixedChannelwiseKeyCodec(widths, kvHead: kvHead)
            head = widths.widths[kvHead]
            self.n = n
            self.x = x
            codes = [UInt8](repeating: 0xA5, count: n * codec.rowByteCount + Self.guardBytes)
            params = [UInt8](repeating: 0xA5, count: 4 * codec.headDim + Self.guardBytes)
            let codec = codec
            try x.withUnsafeBufferPointer { xp in
                try codes.withUnsafeMutableBytes { cp in
                    try params.withUnsafeMutableBytes { pp in
                        try codec.encodePage(xp.baseAddress!, tokenCount: n, codes: cp.baseAddress!, params: pp.baseAddress!)
                    }
                }
            }
        }

        /// The same page by `encodePageReference`.
        func reference() -> (codes: [UInt8], params: [UInt8]) {
            var c = [UInt8](repeating: 0xA5, count: codes.count), p = [UInt8](repeating: 0xA5, count: params.count)
            x.withUnsafeBufferPointer { xp in
                c.withUnsafeMutableBytes { cp in
                    p.withUnsafeMutableBytes { codec.encodePageReference(xp.baseAddress!, tokenCount: n, codes: cp.baseAddress!, params: $0.baseAddress!) }
                }
            }
            return (c, p)
        }

        func decoded(_ slot: Int) -> [Float] {
            var out = [Float](repeating: .nan, count: codec.headDim)
            codes.withUnsafeBytes { cp in
                params.withUnsafeBytes { pp in
                    out.withUnsafeMutableBufferPointer {
                        codec.decode(slot: slot, tokenCount: n, codes: cp.baseAddress!, params: pp.baseAddress!, into: $0.baseAddress!)
                    }
                }
            }
            return out
        }

        /// The parameters of channel `c` (found at its stored position).
        func parameters(ofChannel c: Int) -> AffineParameters {
            let j = codec.channels.firstIndex(of: c)!
            return params.withUnsafeBytes { codec.parameters(atStored: j, in: $0.baseAddress!) }
        }
    }

    /// A random case: head dim, widths (sometimes two heads, the codec of one), padding, tokens, keys.
    static func randomPage(dims: [Int] = dims, using g: inout SeededGenerator) throws -> (EncodedPage, String) {
        let d = dims.randomElement(using: &g)!, n = [1, 2, 7, 16, 33, 40].randomElement(using: &g)!
        let heads = (0..<Int.random(in: 1...2, using: &g)).map { _ in randomHead(d, using: &g) }
        let need = heads.map(ChannelWidths.segmentByteCount).max()!
        let widths = ChannelWidths(widths: heads, rowByteCount: need + [0, 0, 1, 3].randomElement(using: &g)!)
        let kvHead = Int.random(in: 0..<heads.count, using: &g)
        let (x, keys) = randomKeys(n, d, using: &g)
        let page = try EncodedPage(widths, kvHead: kvHead, x, tokenCount: n)
        let counts = ChannelWidths.segmentOrder.map { w in "\(heads[kvHead].filter { $0 == w }.count)×\(w)" }.joined(separator: " ")
        return (page, "seed \(g.seed) d \(d) n \(n) head \(kvHead) of \(heads.count) [\(counts)] rowBytes \(widths.rowByteCount) keys \(keys)")
    }

    @Test func encodeEqualsReferenceBitForBitInTheDocumentedLayout() throws {
        try forEachSeededCase(150, base: 13_100) { g in
            let (page, context) = try Self.randomPage(using: &g)
            let codec = page.codec, n = page.n, d = codec.headDim
            let ref = page.reference()
            #expect(page.codes == ref.codes, "\(context): codes")
            #expect(page.params == ref.params, "\(context): parameters")
            // Nothing written past the page; the padding after the segments is zero.
            #expect(page.codes.suffix(EncodedPage.guardBytes).allSatisfy { $0 == 0xA5 } && page.params.suffix(EncodedPage.guardBytes).allSatisfy { $0 == 0xA5 },
                    "\(context): wrote past the page")
            #expect(page.codes[(n * codec.usedRowByteCount)..<(n * codec.rowByteCount)].allSatisfy { $0 == 0 }, "\(context): padding")
            // Segments widest first, channels ascending in each, packed one after the other.
            #expect(codec.channels.sorted() == Array(0..<d), "\(context): channels are not a permutation")
            #expect(codec.segments.map(\.codec.width) == ChannelWidths.segmentOrder.filter(page.head.contains), "\(context): segment order")
            var start = 0, offset = 0
            for s in codec.segments {
                let mine = codec.channels[s.start..<(s.start + s.codec.headDim)]
                #expect(s.start == start && s.rowOffset == offset && mine.allSatisfy { page.head[$0] == s.codec.width } && mine.sorted() == Array(mine),
                        "\(context): segment \(s.codec.width)")
                start += s.codec.headDim
                offset += s.codec.rowByteCount
            }
            #expect(start == d && offset == codec.usedRowByteCount && offset == ChannelWidths.segmentByteCount(page.head))
            // Each segment's block and parameters are exactly a per-channel page of its channels.
            for s in codec.segments {
                let m = s.codec.headDim
                let gathered = (0..<n).flatMap { t in (0..<m).map { page.x[t * d + codec.channels[s.start + $0]] } }
                var c = [UInt8](repeating: 0, count: n * s.codec.rowByteCount), p = [UInt8](repeating: 0, count: 4 * m)
                gathered.withUnsafeBufferPointer { xp in
                    c.withUnsafeMutableBytes { cp in
                        p.withUnsafeMutableBytes { s.codec.encodePageReference(xp.baseAddress!, tokenCount: n, codes: cp.baseAddress!, params: $0.baseAddress!) }
                    }
                }
                #expect(Array(page.codes[(n * s.rowOffset)..<(n * s.rowOffset + n * s.codec.rowByteCount)]) == c, "\(context): block of \(s.codec.width)")
                #expect(Array(page.params[(4 * s.start)..<(4 * (s.start + m))]) == p, "\(context): parameters of \(s.codec.width)")
            }
        }
    }

    @Test func decodeWithinTheAffineBoundOfEachChannelsWidth() throws {
        try forEachSeededCase(150, base: 13_200) { g in
            let (page, context) = try Self.randomPage(using: &g)
            let d = page.codec.headDim, n = page.n
            var rows = [Float](repeating: .nan, count: n * d)
            page.codes.withUnsafeBytes { cp in
                page.params.withUnsafeBytes { pp in
                    rows.withUnsafeMutableBufferPointer {
                        page.codec.decodeRows(slot: 0, count: n, tokenCount: n, codes: cp.baseAddress!, params: pp.baseAddress!, into: $0.baseAddress!)
                    }
                }
            }
            let bounds = (0..<d).map { page.parameters(ofChannel: $0).errorBound(width: page.head[$0]) }
            for t in 0..<n {
                let y = page.decoded(t)
                #expect(y.map(\.bitPattern) == rows[(t * d)..<((t + 1) * d)].map(\.bitPattern), "\(context) slot \(t): decodeRows ≠ decode")
                for c in 0..<d {
                    #expect(abs(Double(y[c]) - Double(page.x[t * d + c])) <= Double(bounds[c]),
                            "\(context) slot \(t) channel \(c) (\(page.head[c])): \(y[c]) vs \(page.x[t * d + c]), bound \(bounds[c])")
                }
            }
        }
    }

    /// Scores of `page` for `q` (`rows` rows), fast and reference, with `stride`; NaN beyond `n`.
    static func scores(_ page: EncodedPage, _ q: [Float], rows: Int, stride: Int, scale: Float) -> (fast: [Float], reference: [Float]) {
        var fast = [Float](repeating: .nan, count: rows * stride), ref = fast
        var work = [Float](repeating: .nan, count: page.codec.scoreWorkCount(rowCount: rows, pageCapacity: stride))
        q.withUnsafeBufferPointer { qp in
            page.codes.withUnsafeBytes { cp in
                page.params.withUnsafeBytes { pp in
                    fast.withUnsafeMutableBufferPointer { fp in
                        work.withUnsafeMutableBufferPointer {
                            page.codec.scores(qp.baseAddress!, rowCount: rows, codes: cp.baseAddress!, params: pp.baseAddress!, tokenCount: page.n,
                                              scale: scale, into: fp.baseAddress!, stride: stride, work: $0.baseAddress!)
                        }
                    }
                    ref.withUnsafeMutableBufferPointer {
                        page.codec.scoresReference(qp.baseAddress!, rowCount: rows, codes: cp.baseAddress!, params: pp.baseAddress!, tokenCount: page.n,
                                                   scale: scale, into: $0.baseAddress!, stride: stride)
                    }
                }
            }
        }
        return (fast, ref)
    }

    /// Query rows of random size (10⁻³ … 10²), sometimes a zero row or a ×1000 outlier channel.
    static func randomQueries(_ rows: Int, _ d: Int, using g: inout SeededGenerator) -> [Float] {
        let sigma = Float(pow(10, Double.random(in: -3...2, using: &g)))
        var q = (0..<(rows * d)).map { _ in Float(g.nextGaussian()) * sigma }
        switch Int.random(in: 0..<4, using: &g) {
        case 0: for i in 0..<d { q[i] = 0 }
        case 1: for r in 0..<rows { q[r * d + Int.random(in: 0..<d, using: &g)] *= 1000 }
        default: break
        }
        return q
    }

    /// Checks `scores` and `scoresReference` of `page` against the exact score within their bounds.
    static func expectScoresWithinBounds(_ page: EncodedPage, _ q: [Float], rows: Int, stride: Int, scale: Float, _ context: String) {
        let d = page.codec.headDim, n = page.n
        let (fast, ref) = scores(page, q, rows: rows, stride: stride, scale: scale)
        q.withUnsafeBufferPointer { qp in
            page.codes.withUnsafeBytes { cp in
                page.params.withUnsafeBytes { pp in
                    for r in 0..<rows {
                        for j in 0..<n {
                            let qr = qp.baseAddress! + r * d, i = r * stride + j
                            let exact = page.codec.exactScore(qr, slot: j, tokenCount: n, codes: cp.baseAddress!, params: pp.baseAddress!, scale: scale)
                            let bFast = page.codec.scoreErrorBound(qr, slot: j, tokenCount: n, codes: cp.baseAddress!, params: pp.baseAddress!, scale: scale)
                            let bRef = page.codec.scoreErrorBound(qr, slot: j, tokenCount: n, codes: cp.baseAddress!, params: pp.baseAddress!, scale: scale,
                                                                  reference: true)
                            #expect(abs(Double(fast[i]) - exact) <= bFast, "\(context) r \(r) j \(j): scores \(fast[i]) exact \(exact) bound \(bFast)")
                            #expect(abs(Double(ref[i]) - exact) <= bRef, "\(context) r \(r) j \(j): reference \(ref[i]) exact \(exact) bound \(bRef)")
                            #expect(abs(Double(fast[i]) - Double(ref[i])) <= bFast + bRef, "\(context) r \(r) j \(j): scores vs reference")
                        }
                        for j in n..<stride {
                            #expect(fast[r * stride + j].isNaN && ref[r * stride + j].isNaN, "\(context) r \(r): wrote slot \(j) past the page")
                        }
                    }
                }
            }
        }
    }

    @Test func scoresWithinTheSegmentsKernelBounds() throws {
        var seen = [KeyScoring: Int](), fused = 0  // the scorings met: the process's kernel path must be exercised
        try forEachSeededCase(120, base: 13_300) { g in
            let (page, context) = try Self.randomPage(dims: Self.dims + [64, 128, 128, 192], using: &g)
            for s in page.codec.segments { seen[s.scoring, default: 0] += 1 }
            if page.codec.fusedScoring { fused += 1 }
            let rows = Int.random(in: 1...5, using: &g), stride = page.n + Int.random(in: 0...3, using: &g)
            let q = Self.randomQueries(rows, page.codec.headDim, using: &g), scale = Float.random(in: 0.05...1, using: &g)
            Self.expectScoresWithinBounds(page, q, rows: rows, stride: stride, scale: scale, "\(context) rows \(rows)")
        }
        // The process's kernel path was exercised: integer-domain segments where it has them (VNNI:
        // multiples of 64; AVX2: INT4 in multiples of 32), the per-channel FP32 and INT3 kernels always.
        let k = KernelSet.current
        print("MixedChannelwiseKeyCodecTests: kernel path \(k.path), segment scorings \(seen.sorted { "\($0.key)" < "\($1.key)" }), fused pages \(fused)")
        #expect((fused > 0) == k.avx2, "\(k): \(fused) pages scored by the fused kernel")
        #expect(((seen[.channelwiseVNNI] ?? 0) > 0) == (k.vnniScores || k.avx2), "\(k): \(seen)")
        #expect((seen[.channelwise] ?? 0) > 0 && (seen[.channelwiseInt3] ?? 0) > 0, "\(seen)")
    }

    /// Which kernel each segment takes follows the process's kernel set (and `kernels:`), exactly as
    /// a uniform per-channel tier of the segment's channels would.
    @Test func segmentScoringFollowsTheKernelSet() {
        let head = (0..<128).map { c -> CodeWidth in c % 4 == 0 ? .int8 : c % 4 == 1 ? .int2 : .int4 }  // 32 INT8, 32 INT2, 64 INT4
        let widths = ChannelWidths(widths: [head, head.map { $0 == .int2 ? .int3 : $0 }])
        let all = KernelSet(path: .avx512, features: [.avx512, .avx512VNNI, .avx512VBMI, .avx2])
        let avx2 = KernelSet(path: .avx2, features: [.avx512, .avx512VNNI, .avx2])
        for kernels in [KernelSet.current, .portable, all, avx2] {
            for h in 0..<2 {
                let codec = MixedChannelwiseKeyCodec(widths, kvHead: h, kernels: kernels)
                for s in codec.segments {
                    #expect(s.scoring == KeyScoring(keyFormat: .channelwise(s.codec.width), headDim: s.codec.headDim, kernels: kernels), "\(kernels) \(s.codec.width)")
                }
                #expect(codec.segments.map(\.codec.headDim) == [32, 64, 32], "\(codec.segments.map(\.codec.headDim))")
            }
        }
        #expect(MixedChannelwiseKeyCodec(widths, kvHead: 0, kernels: .portable).segments.allSatisfy { $0.scoring == .channelwise })
        #expect(MixedChannelwiseKeyCodec(widths, kvHead: 1, kernels: .portable).segments.last!.scoring == .channelwiseInt3)
        #expect(MixedChannelwiseKeyCodec(widths, kvHead: 0, kernels: all).segments.map(\.scoring) == [.channelwise, .channelwiseVNNI, .channelwise])
        #expect(MixedChannelwiseKeyCodec(widths, kvHead: 0, kernels: avx2).segments.map(\.scoring) == [.channelwise, .channelwiseVNNI, .channelwise])
        // The fused kernel: on both x86 paths, never on the portable one, never for one segment.
        #expect(MixedChannelwiseKeyCodec(widths, kvHead: 0, kernels: all).fusedScoring)
        #expect(MixedChannelwiseKeyCodec(widths, kvHead: 0, kernels: avx2).fusedScoring)
        #expect(!MixedChannelwiseKeyCodec(widths, kvHead: 0, kernels: .portable).fusedScoring)
        #expect(!MixedChannelwiseKeyCodec(ChannelWidths(widths: [[CodeWidth](repeating: .int4, count: 64)]), kvHead: 0, kernels: all).fusedScoring)
        // The store's format-level choice for the whole head.
        #expect(KeyScoring(keyFormat: .mixedChannelwise(widths), headDim: 128, kernels: all) == .mixedChannelwise)
    }

    /// One width: the page is byte for byte a `ChannelwiseKeyCodec` page, decodes alike and scores
    /// bit for bit as the entry the read path picks for that per-channel format.
    @Test func aSingleSegmentIsThePerChannelCodec() throws {
        try forEachSeededCase(40, base: 13_400) { g in
            let w = CodeWidth.allCases.randomElement(using: &g)!, d = [12, 20, 64, 96, 128, 7].randomElement(using: &g)!
            let n = Int.random(in: 1...40, using: &g)
            let (x, keys) = Self.randomKeys(n, d, using: &g)
            let page = try EncodedPage(ChannelWidths(widths: [[CodeWidth](repeating: w, count: d)]), x, tokenCount: n)
            let plain = try ChannelwiseKeyCodec(w, headDim: d)
            let context = "seed \(g.seed) \(w) d \(d) n \(n) \(keys)"
            #expect(page.codec.segments.count == 1 && page.codec.channels == Array(0..<d) && page.codec.rowByteCount == plain.rowByteCount)
            var codes = [UInt8](repeating: 0, count: n * plain.rowByteCount), params = [UInt8](repeating: 0, count: plain.parameterByteCount)
            try x.withUnsafeBufferPointer { xp in
                try codes.withUnsafeMutableBytes { cp in
                    try params.withUnsafeMutableBytes { try plain.encodePage(xp.baseAddress!, tokenCount: n, codes: cp.baseAddress!, params: $0.baseAddress!) }
                }
            }
            #expect(Array(page.codes.prefix(codes.count)) == codes && Array(page.params.prefix(params.count)) == params, "\(context): bytes")
            for t in 0..<n {
                var y = [Float](repeating: .nan, count: d)
                codes.withUnsafeBytes { cp in params.withUnsafeBytes { pp in y.withUnsafeMutableBufferPointer { plain.decode(cp.baseAddress! + t * plain.rowByteCount, params: pp.baseAddress!, into: $0.baseAddress!) } } }
                #expect(page.decoded(t).map(\.bitPattern) == y.map(\.bitPattern), "\(context) slot \(t): decode")
            }
            let rows = Int.random(in: 1...5, using: &g), stride = n + 1, scale = Float.random(in: 0.05...1, using: &g)
            let q = Self.randomQueries(rows, d, using: &g)
            var entry = [Float](repeating: .nan, count: rows * stride), work = [Float](repeating: .nan, count: (rows + 1) * (d + 1))
            q.withUnsafeBufferPointer { qp in
                codes.withUnsafeBytes { cp in
                    params.withUnsafeBytes { pp in
                        entry.withUnsafeMutableBufferPointer { ep in
                            work.withUnsafeMutableBufferPointer { wp in
                                switch KeyScoring(keyFormat: .channelwise(w), headDim: d) {
                                case .channelwiseVNNI:
                                    PageKernels.scoresChannelwiseVNNI(plain, qp.baseAddress!, rowCount: rows, codes: cp.baseAddress!, params: pp.baseAddress!,
                                                                      tokenCount: n, scale: scale, into: ep.baseAddress!, stride: stride, work: wp.baseAddress!)
                                case .channelwiseInt3:
                                    PageKernels.scoresChannelwiseInt3(plain, qp.baseAddress!, rowCount: rows, codes: cp.baseAddress!, params: pp.baseAddress!,
                                                                      tokenCount: n, scale: scale, into: ep.baseAddress!, stride: stride, work: wp.baseAddress!)
                                default:
                                    PageKernels.scoresChannelwise(plain, qp.baseAddress!, rowCount: rows, codes: cp.baseAddress!, params: pp.baseAddress!,
                                                                  tokenCount: n, scale: scale, into: ep.baseAddress!, stride: stride, work: wp.baseAddress!)
                                }
                            }
                        }
                    }
                }
            }
            let (fast, _) = Self.scores(page, q, rows: rows, stride: stride, scale: scale)
            #expect(fast.map(\.bitPattern) == entry.map(\.bitPattern), "\(context): scores ≠ the per-channel entry")
        }
    }

    /// Hand-made pages on head dims 12, 20 and 64 with all four widths present.
    static func allFourWidths(_ d: Int) -> [CodeWidth] {
        (0..<d).map { c in [CodeWidth.int2, .int8, .int3, .int4][(c * 7 + c / 3) % 4] }
    }

    @Test func nastyPages() throws {
        var g = SeededGenerator(seed: 13_500)
        for d in [12, 20, 64] {
            let head = Self.allFourWidths(d)
            #expect(Set(head).count == 4, "d \(d)")
            let widths = ChannelWidths(widths: [head])
            let q = Self.randomQueries(3, d, using: &g)
            // Zeros: exact zeros back, scores exactly 0.
            let zeros = try EncodedPage(widths, [Float](repeating: 0, count: 9 * d), tokenCount: 9)
            for t in 0..<9 { #expect(zeros.decoded(t).allSatisfy { $0.bitPattern == 0 }, "d \(d): zeros") }
            let z = Self.scores(zeros, q, rows: 3, stride: 9, scale: 0.125)
            #expect(z.fast.allSatisfy { $0 == 0 } && z.reference.allSatisfy { $0 == 0 }, "d \(d): scores of zero keys")
            // Constant channels of FP16 values (±65504 included) decode exactly; one token alike.
            let row: [Float] = (0..<d).map { c in [0, 1, -2, 0.5, 65504, -65504, 3.25, 0x1p-24, 100, -0.0][c % 10] }
            for n in [1, 5] {
                let page = try EncodedPage(widths, (0..<n).flatMap { _ in row }, tokenCount: n)
                for t in 0..<n { #expect(page.decoded(t) == row, "d \(d) n \(n): constant channels") }
                for c in 0..<d { #expect(page.parameters(ofChannel: c).scale == 0, "d \(d) n \(n) channel \(c): scale") }
                Self.expectScoresWithinBounds(page, q, rows: 3, stride: n + 2, scale: 0.125, "d \(d) n \(n) constant")
            }
            // One token of arbitrary values: each channel its FP16 rounding up (scale 0), within bound.
            let one = (0..<d).map { _ in Float(g.nextGaussian()) * 100 }
            let single = try EncodedPage(widths, one, tokenCount: 1)
            let y = single.decoded(0)
            for c in 0..<d {
                var h = Float16(one[c])
                if Float(h) < one[c] { h = h.nextUp }
                #expect(y[c] == Float(h), "d \(d) channel \(c): one token")
            }
            // The widest ranges: ±65504 in every channel, within each width's bound (decoded values may
            // pass 65504 by up to scale/2), scores within bound.
            let extremes = (0..<(8 * d)).map { i -> Float in (i / d + i % d) % 2 == 0 ? 65504 : -65504 }
            let wide = try EncodedPage(widths, extremes, tokenCount: 8)
            for t in 0..<8 {
                let y = wide.decoded(t)
                for c in 0..<d {
                    let b = wide.parameters(ofChannel: c).errorBound(width: head[c])
                    #expect(y[c].isFinite && abs(y[c] - extremes[t * d + c]) <= b, "d \(d) t \(t) channel \(c) (\(head[c])): \(y[c]) bound \(b)")
                }
            }
            Self.expectScoresWithinBounds(wide, q.map { $0 * 1e-3 }, rows: 3, stride: 8, scale: 0.125, "d \(d) extremes")
            // An outlier channel costs precision only in its own channel.
            let n = 32, outlier = d - 3
            var x = (0..<(n * d)).map { _ in Float(g.nextGaussian()) }
            for t in 0..<n { x[t * d + outlier] = 3000 + 500 * Float(g.nextGaussian()) }
            let page = try EncodedPage(widths, x, tokenCount: n)
            let bounds = (0..<d).map { page.parameters(ofChannel: $0).errorBound(width: head[$0]) }
            let others = bounds.enumerated().filter { $0.offset != outlier }.map(\.element).max()!
            #expect(others < 3 && bounds[outlier] > 1, "d \(d): bounds \(bounds)")
            for t in 0..<n {
                let y = page.decoded(t)
                for c in 0..<d { #expect(abs(y[c] - x[t * d + c]) <= bounds[c], "d \(d) t \(t) channel \(c): outlier page") }
            }
            Self.expectScoresWithinBounds(page, q, rows: 3, stride: n, scale: 0.125, "d \(d) outlier")
        }
    }

    /// Widths given for several heads: each head's codec reads its own widths, and two heads with
    /// different widths store the same keys differently but both within their bounds.
    @Test func eachHeadHasItsOwnSegments() throws {
        let d = 20
        let a = Self.allFourWidths(d), b = a.map { $0 == .int8 ? CodeWidth.int2 : $0 == .int2 ? .int8 : $0 }
        let widths = ChannelWidths(widths: [a, b])
        var g = SeededGenerator(seed: 13_600)
        let x = (0..<(10 * d)).map { _ in Float(g.nextGaussian()) }
        for h in 0..<2 {
            let page = try EncodedPage(widths, kvHead: h, x, tokenCount: 10)
            #expect(page.codec.channels == ChannelWidths.segmentOrder.flatMap { w in (0..<d).filter { widths.widths[h][$0] == w } }, "head \(h)")
            for c in 0..<d { #expect(page.codec.segments.first { $0.codec.width == widths.widths[h][c] } != nil) }
            for t in 0..<10 {
                let y = page.decoded(t)
                for c in 0..<d { #expect(abs(y[c] - x[t * d + c]) <= page.parameters(ofChannel: c).errorBound(width: widths.widths[h][c]), "head \(h) t \(t) c \(c)") }
            }
        }
        #expect(MixedChannelwiseKeyCodec(widths, kvHead: 0) != MixedChannelwiseKeyCodec(widths, kvHead: 1))
    }

    /// Unstorable values: a `QuantizationError` naming the first bad element by its flat index in the
    /// input (token·headDim + channel, channel order, not stored order), and nothing written.
    @Test func rejectsUnstorableValuesWithTheFlatIndexAndWritesNothing() throws {
        for d in [12, 20, 64] {
            let head = Self.allFourWidths(d)
            let codec = MixedChannelwiseKeyCodec(ChannelWidths(widths: [head], rowByteCount: ChannelWidths.segmentByteCount(head) + 2), kvHead: 0)
            // The first bad element sits in a channel stored late (INT2, the last segment); a second,
            // later in the input, in a channel stored first (INT8).
            let late = head.lastIndex(of: .int2)!, early = head.lastIndex(of: .int8)!
            for (value, isRange) in [(Float.nan, false), (.infinity, false), (-.infinity, false), (65520, true), (-1e6, true)] {
                var x = [Float](repeating: 1, count: 3 * d)
                x[1 * d + late] = value
                x[2 * d + early] = .nan
                if let after = head.indices.first(where: { $0 > late && head[$0] == .int8 }) { x[1 * d + after] = .infinity }
                var codes = [UInt8](repeating: 0xA5, count: 3 * codec.rowByteCount), params = [UInt8](repeating: 0xA5, count: 4 * d)
                var thrown: QuantizationError?
                x.withUnsafeBufferPointer { xp in
                    codes.withUnsafeMutableBytes { cp in
                        params.withUnsafeMutableBytes { pp in
                            do throws(QuantizationError) {
                                try codec.encodePage(xp.baseAddress!, tokenCount: 3, codes: cp.baseAddress!, params: pp.baseAddress!)
                            } catch { thrown = error }
                        }
                    }
                }
                #expect(thrown?.index == 1 * d + late, "d \(d) \(value): \(String(describing: thrown))")
                if case .outOfRange = thrown { #expect(isRange, "d \(d) \(value)") } else { #expect(!isRange && thrown != nil, "d \(d) \(value)") }
                #expect(codes.allSatisfy { $0 == 0xA5 } && params.allSatisfy { $0 == 0xA5 }, "d \(d) \(value): wrote on error")
            }
        }
    }
}
