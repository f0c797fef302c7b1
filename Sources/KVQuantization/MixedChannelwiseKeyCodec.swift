import CKVKernels

/// Per-channel keys of one KV head with a code width per channel (`StorageFormat.mixedChannelwise`):
/// the channels of each width form a segment, and each segment is stored and read exactly as a
/// `ChannelwiseKeyCodec` page of its own channels, so every per-channel kernel serves it.
///
/// Layout of the codes of a page of `n` tokens (segments widest first, each segment's channels in
/// ascending order; `channels[j]` is the channel at stored position j):
///
///     | segment 0: n rows of ⌈n₀·b₀/8⌉ bytes | segment 1: n rows | … | zeros | = n · rowByteCount bytes
///
/// and of its parameters: `(scale, zero)` FP16 per channel in stored order (4·d bytes), segment k's at
/// byte 4·start_k. A segment's block starts at n·rowOffset_k, so the n rows of all segments fill the
/// first n·rowByteCount code bytes, as rows of any page format do.
///
/// Error bound per element: that of `AffineParameters.errorBound` with the channel's parameters and
/// width. Scores: where `fusedScoring` holds (two or more segments, each a multiple of 8 channels,
/// and the AVX2 kernels in the kernel set), one FP32 pass over every segment's codes per token
/// (`kvk_scores_mixed_avx2`), within the per-channel FP32 kernel's bound for the whole head;
/// elsewhere the sum over segments of each segment's per-channel score, each within its kernel's
/// bound (`PageKernels.scoresChannelwise`, `scoresChannelwiseVNNI`, `scoresChannelwiseInt3`), plus
/// one rounding per added segment.
public struct MixedChannelwiseKeyCodec: Sendable, Hashable {
    /// The channels of one width.
    public struct Segment: Sendable, Hashable {
        /// A per-channel codec for the segment's channels (its `headDim` is their count).
        public let codec: ChannelwiseKeyCodec
        /// Stored position of the segment's first channel (its parameters start at byte 4·start).
        public let start: Int
        /// Code bytes per token of the segments before it (its block starts at n·rowOffset).
        public let rowOffset: Int
        /// How the read path scores the segment's codes.
        package let scoring: KeyScoring
    }

    public let headDim: Int
    /// Bytes of one token's codes (every segment, and the zero padding).
    public let rowByteCount: Int
    /// `channels[j]`: the channel at stored position j.
    public let channels: [Int]
    public let segments: [Segment]
    /// Code bytes per token the segments use (≤ rowByteCount).
    public let usedRowByteCount: Int
    /// Whether `scores` runs the fused kernel (`kvk_prepare_mixed_avx2` + `kvk_scores_mixed_avx2`):
    /// two or more segments, each a multiple of 8 channels, and the AVX2 kernels in the kernel set.
    /// One segment is scored exactly as the per-channel format of its width.
    package let fusedScoring: Bool
    /// `channels` as the fused kernel reads them.
    fileprivate let channels32: [Int32]
    /// (bits, channel count, code bytes per row, row offset) per segment, for the fused kernel.
    fileprivate let segmentTable: [Int32]

    /// The codec of KV head `kvHead` of `widths`.
    public init(_ widths: ChannelWidths, kvHead: Int, kernels: KernelSet = .current) {
        precondition(kvHead >= 0 && kvHead < widths.kvHeadCount, "MixedChannelwiseKeyCodec: KV head \(kvHead) outside 0..<\(widths.kvHeadCount)")
        let head = widths.widths[kvHead]
        headDim = head.count
        rowByteCount = widths.rowByteCount
        var channels = [Int](), segments = [Segment](), offset = 0
        for w in ChannelWidths.segmentOrder {
            let mine = head.indices.filter { head[$0] == w }
            guard !mine.isEmpty else { continue }
            let codec = try! ChannelwiseKeyCodec(w, headDim: mine.count)
            segments.append(Segment(codec: codec, start: channels.count, rowOffset: offset,
                                    scoring: KeyScoring(keyFormat: .channelwise(w), headDim: mine.count, kernels: kernels)))
            channels += mine
            offset += codec.rowByteCount
        }
        self.channels = channels
        self.segments = segments
        usedRowByteCount = offset
        channels32 = channels.map { Int32($0) }
        segmentTable = segments.flatMap { [Int32($0.codec.width.bits), Int32($0.codec.headDim), Int32($0.codec.rowByteCount), Int32($0.rowOffset)] }
        fusedScoring = segments.count > 1 && segments.allSatisfy { $0.codec.headDim % 8 == 0 }
            && PageKernels.runsFormatAVX2Kernels(headDim: headDim, on: kernels)
    }

    /// A codec that lives as long as the process, for holders that must stay trivially copyable (the
    /// store's per-tier codecs reference it `unowned(unsafe)`: no reference counting on the read path).
    public final class Shared: @unchecked Sendable {
        public let codec: MixedChannelwiseKeyCodec
        private let fused: Bool
        private let headDim: Int, segmentCount: Int
        /// The channel order (headDim values), then the segment table (4 per segment): immutable, never freed.
        private let tables: UnsafeMutablePointer<Int32>

        init(_ codec: MixedChannelwiseKeyCodec) {
            self.codec = codec
            fused = codec.fusedScoring
            headDim = codec.headDim
            segmentCount = codec.segments.count
            let t = codec.channels32 + codec.segmentTable
            tables = .allocate(capacity: t.count)
            tables.initialize(from: t, count: t.count)
        }

        /// `codec.scores`, reading the fused kernel's tables from process-lifetime storage (no
        /// reference counting per call).
        public func scores(_ q: UnsafePointer<Float>, rowCount: Int, codes: UnsafeRawPointer, params: UnsafeRawPointer,
                           tokenCount n: Int, scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int,
                           work: UnsafeMutablePointer<Float>) {
            if fused {
                MixedChannelwiseKeyCodec.fusedScores(q, rowCount: rowCount, headDim: headDim, channels: tables, segments: tables + headDim,
                                                     segmentCount: segmentCount, codes: codes, params: params, tokenCount: n, scale: scale,
                                                     into: scores, stride: stride, work: work)
            } else {
                codec.scores(q, rowCount: rowCount, codes: codes, params: params, tokenCount: n, scale: scale, into: scores, stride: stride,
                             work: work)
            }
        }
    }

    /// The codec of KV head `kvHead` of `widths` for `KernelSet.current`, built once per process and
    /// never freed (as `ChannelWidths` are interned).
    public static func shared(_ widths: ChannelWidths, kvHead: Int) -> Shared {
        ChannelWidthsRegistry.shared.sharedCodec(widths.id, kvHead: kvHead) { Shared(MixedChannelwiseKeyCodec(widths, kvHead: kvHead)) }
    }

    /// The largest segment's channel count.
    public var largestSegment: Int { segments.map(\.codec.headDim).max()! }

    /// Floats of scratch `scores` needs for `rowCount` query rows and pages of `pageCapacity` slots.
    public func scoreWorkCount(rowCount: Int, pageCapacity: Int) -> Int {
        rowCount * headDim + rowCount * pageCapacity + (rowCount + 1) * (largestSegment + 1)
    }

    /// Quantises `tokenCount` keys (`x`, row-major, `headDim` each) into a page's codes and parameters.
    ///
    /// Validates everything first; on error nothing is written. Bit-identical to
    /// `encodePageReference`.
    ///
    /// - Throws: `QuantizationError` with the flat index `token·headDim + channel` of the first bad element.
    /// - Complexity: O(tokenCount·headDim).
    public func encodePage(_ x: UnsafePointer<Float>, tokenCount: Int, codes: UnsafeMutableRawPointer,
                           params: UnsafeMutableRawPointer) throws(QuantizationError) {
        precondition(tokenCount > 0, "MixedChannelwiseKeyCodec.encodePage: a page needs at least one token")
        if let e = ValueCheck.firstInvalid(x, count: tokenCount * headDim) { throw e }
        encodePageUnchecked(x, tokenCount: tokenCount, codes: codes, params: params)
    }

    /// `encodePage` without the value check (each segment by `ChannelwiseKeyCodec.encodePageUnchecked`).
    ///
    /// - Precondition: every value is finite with magnitude ≤ 65504 (not checked).
    package func encodePageUnchecked(_ x: UnsafePointer<Float>, tokenCount n: Int, codes: UnsafeMutableRawPointer,
                                     params: UnsafeMutableRawPointer) {
        encode(x, tokenCount: n, codes: codes, params: params) { $0.codec.encodePageUnchecked($1, tokenCount: n, codes: $2, params: $3) }
    }

    /// Scalar reference of `encodePage` (values storable): each segment by
    /// `ChannelwiseKeyCodec.encodePageReference`.
    public func encodePageReference(_ x: UnsafePointer<Float>, tokenCount n: Int, codes: UnsafeMutableRawPointer,
                                    params: UnsafeMutableRawPointer) {
        precondition(n > 0, "MixedChannelwiseKeyCodec.encodePageReference: a page needs at least one token")
        encode(x, tokenCount: n, codes: codes, params: params) { $0.codec.encodePageReference($1, tokenCount: n, codes: $2, params: $3) }
    }

    private func encode(_ x: UnsafePointer<Float>, tokenCount n: Int, codes: UnsafeMutableRawPointer, params: UnsafeMutableRawPointer,
                        _ segmentEncoder: (Segment, UnsafePointer<Float>, UnsafeMutableRawPointer, UnsafeMutableRawPointer) -> Void) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: n * largestSegment) { buffer in
            let g = buffer.baseAddress!
            for s in segments {
                let m = s.codec.headDim
                for t in 0..<n { for i in 0..<m { g[t * m + i] = x[t * headDim + channels[s.start + i]] } }
                segmentEncoder(s, UnsafePointer(g), codes + n * s.rowOffset, params + 4 * s.start)
            }
        }
        if usedRowByteCount < rowByteCount {
            (codes + n * usedRowByteCount).initializeMemory(as: UInt8.self, repeating: 0, count: n * (rowByteCount - usedRowByteCount))
        }
    }

    /// Decodes the key in slot `slot` of a page of `tokenCount` tokens into `out[0..<headDim]`.
    public func decode(slot: Int, tokenCount n: Int, codes: UnsafeRawPointer, params: UnsafeRawPointer,
                       into out: UnsafeMutablePointer<Float>) {
        precondition(slot >= 0 && slot < n, "MixedChannelwiseKeyCodec.decode: slot \(slot) outside 0..<\(n)")
        for s in segments {
            let row = codes + n * s.rowOffset + slot * s.codec.rowByteCount, p = params + 4 * s.start
            for i in 0..<s.codec.headDim {
                let a = s.codec.parameters(ofChannel: i, in: p)
                out[channels[s.start + i]] = a.zero + a.scale * Float(s.codec.code(at: i, in: row))
            }
        }
    }

    /// Decodes slots `slot ..< slot + count` into `out` (`count · headDim` floats), as `decode` each.
    public func decodeRows(slot: Int, count: Int, tokenCount n: Int, codes: UnsafeRawPointer, params: UnsafeRawPointer,
                           into out: UnsafeMutablePointer<Float>) {
        for k in 0..<count { decode(slot: slot + k, tokenCount: n, codes: codes, params: params, into: out + k * headDim) }
    }

    /// The channel parameters of stored position `j`.
    public func parameters(atStored j: Int, in params: UnsafeRawPointer) -> AffineParameters {
        AffineParameters(scaleBits: UInt16(littleEndian: params.loadUnaligned(fromByteOffset: 4 * j, as: UInt16.self)),
                         zeroBits: UInt16(littleEndian: params.loadUnaligned(fromByteOffset: 4 * j + 2, as: UInt16.self)))
    }

    /// `scores[r·stride + j] = scale · (q_r · k̂_j)` for `rowCount` query rows `q` (`headDim` each, in
    /// channel order) and the `tokenCount` keys of a page. With `fusedScoring`, one pass per token over
    /// every segment's codes (the query folded into the parameters in stored order); otherwise the
    /// queries are gathered into stored order once, each segment is scored by its kernel
    /// (`Segment.scoring`) and the segments' scores are added in segment order. `work` holds `scoreWorkCount(rowCount:pageCapacity:)` floats for
    /// pages of up to `stride` slots.
    public func scores(_ q: UnsafePointer<Float>, rowCount: Int, codes: UnsafeRawPointer, params: UnsafeRawPointer,
                       tokenCount n: Int, scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int,
                       work: UnsafeMutablePointer<Float>) {
        if fusedScoring {
            return segmentTable.withUnsafeBufferPointer { st in
                channels32.withUnsafeBufferPointer { ch in
                    Self.fusedScores(q, rowCount: rowCount, headDim: headDim, channels: ch.baseAddress!, segments: st.baseAddress!,
                                     segmentCount: segments.count, codes: codes, params: params, tokenCount: n, scale: scale, into: scores,
                                     stride: stride, work: work)
                }
            }
        }
        let gathered = work, partial = work + rowCount * headDim, kernelWork = partial + rowCount * stride
        for s in segments {
            let m = s.codec.headDim, qs = gathered + rowCount * s.start
            for r in 0..<rowCount { for i in 0..<m { qs[r * m + i] = q[r * headDim + channels[s.start + i]] } }
        }
        for (k, s) in segments.enumerated() {
            let qs = gathered + rowCount * s.start, c = codes + n * s.rowOffset, p = params + 4 * s.start
            let out = k == 0 ? scores : partial
            switch s.scoring {
            case .channelwiseVNNI:
                PageKernels.scoresChannelwiseVNNI(s.codec, qs, rowCount: rowCount, codes: c, params: p, tokenCount: n, scale: scale,
                                                  into: out, stride: stride, work: kernelWork)
            case .channelwiseInt3:
                PageKernels.scoresChannelwiseInt3(s.codec, qs, rowCount: rowCount, codes: c, params: p, tokenCount: n, scale: scale,
                                                  into: out, stride: stride, work: kernelWork)
            default:
                PageKernels.scoresChannelwise(s.codec, qs, rowCount: rowCount, codes: c, params: p, tokenCount: n, scale: scale,
                                              into: out, stride: stride, work: kernelWork)
            }
            if k > 0 {
                for r in 0..<rowCount { for j in 0..<n { scores[r * stride + j] += partial[r * stride + j] } }
            }
        }
    }

    /// The fused kernel of `scores` (`fusedScoring`) for the codec's channel order and segment table
    /// (`channels32`, `segmentTable`); `work` holds rowCount·(headDim + 1) floats.
    static func fusedScores(_ q: UnsafePointer<Float>, rowCount: Int, headDim: Int, channels: UnsafePointer<Int32>, segments: UnsafePointer<Int32>,
                            segmentCount: Int, codes: UnsafeRawPointer, params: UnsafeRawPointer, tokenCount n: Int, scale: Float,
                            into scores: UnsafeMutablePointer<Float>, stride: Int, work: UnsafeMutablePointer<Float>) {
        #if arch(x86_64)
        let qs = work, zt = work + rowCount * headDim
        kvk_prepare_mixed_avx2(q, rowCount, headDim, channels, params.assumingMemoryBound(to: UInt16.self), segments, segmentCount, qs, zt)
        kvk_scores_mixed_avx2(qs, zt, rowCount, headDim, segments, segmentCount, codes.assumingMemoryBound(to: UInt8.self), n, scale, scores, stride)
        #else
        preconditionFailure("MixedChannelwiseKeyCodec: the fused kernel is x86-64 only")
        #endif
    }

    /// Scalar reference of `scores`: `scale · Σ_segments Σ_c q_c·(zero_c + scale_c·code_c)`, each
    /// segment left to right (`ChannelwiseKeyCodec.dotReference`), segments added in order.
    public func scoresReference(_ q: UnsafePointer<Float>, rowCount: Int, codes: UnsafeRawPointer, params: UnsafeRawPointer,
                                tokenCount n: Int, scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: largestSegment) { buffer in
            let g = buffer.baseAddress!
            for r in 0..<rowCount {
                for j in 0..<n {
                    var total: Float = 0
                    for (k, s) in segments.enumerated() {
                        for i in 0..<s.codec.headDim { g[i] = q[r * headDim + channels[s.start + i]] }
                        let row = codes + n * s.rowOffset + j * s.codec.rowByteCount
                        let v = s.codec.dotReference(UnsafePointer(g), row, params: params + 4 * s.start) * scale
                        total = k == 0 ? v : total + v
                    }
                    scores[r * stride + j] = total
                }
            }
        }
    }
}
