/// Per-channel affine quantisation of keys across the tokens of one page (KIVI style).
///
/// Channel `c` of every token in the page shares one FP16 scale and zero, chosen from that
/// channel's minimum and maximum over the page's tokens with the same rules as `AffineParameters`.
/// Outlier channels (a few key channels many times larger than the rest, common after RoPE) then
/// cost precision only in their own channel instead of in every group they fall in.
///
/// Layout of one page (see `StorageFormat.channelwise`):
///
///     | row 0 codes | row 1 codes | … | row P−1 codes | (scale, zero) × headDim |
///       ⌈d·b/8⌉ bytes each                              4·d bytes
///
/// The whole page is quantised at once (`encodePage`): its parameters depend on every token in it,
/// so a store seals a page before quantising it this way.
///
/// Error bound per element: that of `AffineParameters.errorBound` with the channel's parameters.
/// Dot products are computed with the query folded into the channel scales once per page
/// (`prepare`), then Σ (q_c·scale_c)·code_c + Σ q_c·zero_c per token.
public struct ChannelwiseKeyCodec: Sendable, Hashable {
    public let width: CodeWidth
    public let headDim: Int
    /// Bytes of one token's codes.
    public let rowByteCount: Int
    /// Bytes of the page-wide parameters (4·headDim).
    public var parameterByteCount: Int { 4 * headDim }

    public init(_ width: CodeWidth, headDim: Int) throws(FormatError) {
        guard headDim > 0 else { throw .invalidHeadDim(headDim) }
        self.width = width
        self.headDim = headDim
        self.rowByteCount = width.packedByteCount(codes: headDim)
    }

    /// The scale and zero of channel `c`.
    @inlinable
    public func parameters(ofChannel c: Int, in params: UnsafeRawPointer) -> AffineParameters {
        AffineParameters(
            scaleBits: UInt16(littleEndian: params.loadUnaligned(fromByteOffset: 4 * c, as: UInt16.self)),
            zeroBits: UInt16(littleEndian: params.loadUnaligned(fromByteOffset: 4 * c + 2, as: UInt16.self)))
    }

    /// Quantises `tokenCount` rows (`x`, row-major, `headDim` each) into `tokenCount` code rows at
    /// `codes` and the page parameters at `params`.
    ///
    /// Validates everything first; on error nothing is written. Bit-identical to
    /// `encodePageReference` (by `EncodeKernels`: AVX2 C or Swift SIMD).
    ///
    /// - Throws: `QuantizationError` with the flat index `token·headDim + channel` of the first bad
    ///   element.
    /// - Complexity: O(tokenCount·headDim).
    public func encodePage(_ x: UnsafePointer<Float>, tokenCount: Int, codes: UnsafeMutableRawPointer,
                           params: UnsafeMutableRawPointer) throws(QuantizationError) {
        precondition(tokenCount > 0, "ChannelwiseKeyCodec.encodePage: a page needs at least one token")
        if let e = ValueCheck.firstInvalid(x, count: tokenCount * headDim) { throw e }
        encodePageUnchecked(x, tokenCount: tokenCount, codes: codes, params: params)
    }

    /// `encodePage` without the value check.
    ///
    /// - Precondition: every value is finite with magnitude ≤ 65504 (not checked).
    package func encodePageUnchecked(_ x: UnsafePointer<Float>, tokenCount: Int, codes: UnsafeMutableRawPointer,
                                     params: UnsafeMutableRawPointer) {
        precondition(tokenCount > 0, "ChannelwiseKeyCodec.encodePage: a page needs at least one token")
        EncodeKernels.encodeChannelwise(self, x, tokenCount: tokenCount, codes: codes, params: params)
    }

    /// The Swift SIMD path of `encodePage` (values storable): per-channel minima and maxima eight
    /// channels at a time, the parameters per channel, then each token's codes eight at a time as
    /// float bit patterns (see `RowCodec`'s grouped encoder), a channel of scale 0 taking code 0.
    package func encodePagePortable(_ x: UnsafePointer<Float>, tokenCount n: Int, codes: UnsafeMutableRawPointer,
                                    params: UnsafeMutableRawPointer) {
        let d = headDim, raw = UnsafeRawPointer(x), full = d / 8 * 8
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 4 * d) { buffer in
            let lo = buffer.baseAddress!, hi = lo + d, zero = hi + d, scale = zero + d
            var c = 0
            while c < full {
                var l = raw.loadUnaligned(fromByteOffset: 4 * c, as: SIMD8<Float>.self), h = l
                for t in 1..<max(n, 1) {
                    let v = raw.loadUnaligned(fromByteOffset: 4 * (t * d + c), as: SIMD8<Float>.self)
                    l = l.lanewiseMin(v)
                    h = h.lanewiseMax(v)
                }
                UnsafeMutableRawPointer(lo).storeBytes(of: l, toByteOffset: 4 * c, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(hi).storeBytes(of: h, toByteOffset: 4 * c, as: SIMD8<Float>.self)
                c += 8
            }
            while c < d {
                var l = x[c], h = l
                for t in 1..<max(n, 1) { l = Swift.min(l, x[t * d + c]); h = Swift.max(h, x[t * d + c]) }
                lo[c] = l
                hi[c] = h
                c += 1
            }
            for c in 0..<d {
                let a = AffineParameters(lo: lo[c], hi: hi[c], width: width)
                params.storeBytes(of: a.scaleBits.littleEndian, toByteOffset: 4 * c, as: UInt16.self)
                params.storeBytes(of: a.zeroBits.littleEndian, toByteOffset: 4 * c + 2, as: UInt16.self)
                scale[c] = a.scale
                zero[c] = a.zero
            }
            let top = SIMD8<Float>(repeating: 0x1p23 + Float(width.maxCode))
            let z = UnsafeRawPointer(zero), s = UnsafeRawPointer(scale)
            for t in 0..<n {
                let r = raw + 4 * t * d, row = codes + t * rowByteCount
                // Partial trailing code bytes are filled code by code: clear them first.
                for b in width.packedByteCount(codes: full)..<rowByteCount { row.storeBytes(of: 0, toByteOffset: b, as: UInt8.self) }
                var c = 0
                while c < full {
                    let s8 = s.loadUnaligned(fromByteOffset: 4 * c, as: SIMD8<Float>.self)
                    let q = (r.loadUnaligned(fromByteOffset: 4 * c, as: SIMD8<Float>.self) - z.loadUnaligned(fromByteOffset: 4 * c, as: SIMD8<Float>.self)) / s8
                    let v = (q.lanewiseMax(.zero) + 0x1p23).lanewiseMin(top)
                    let bits = (unsafeBitCast(v, to: SIMD8<UInt32>.self) &- 0x4B00_0000).replacing(with: 0, where: s8 .== .zero)
                    CodePacking.store8(width, bits, row, element: c)
                    c += 8
                }
                while c < d {
                    var code: Float = 0
                    if scale[c] != 0 { code = Swift.min((Swift.max((x[t * d + c] - zero[c]) / scale[c], 0) + 0x1p23) - 0x1p23, Float(width.maxCode)) }
                    CodePacking.store(width, UInt32(code), row, element: c)
                    c += 1
                }
            }
        }
    }

    /// Scalar reference of `encodePage` (values storable): minima and maxima channel by channel,
    /// `AffineParameters`, and code = round-half-even((x − zero)/scale) clamped to [0, M] (0 where
    /// scale is 0), stored one at a time.
    public func encodePageReference(_ x: UnsafePointer<Float>, tokenCount: Int, codes: UnsafeMutableRawPointer,
                                    params: UnsafeMutableRawPointer) {
        precondition(tokenCount > 0, "ChannelwiseKeyCodec.encodePageReference: a page needs at least one token")
        for c in 0..<headDim {
            var lo = x[c], hi = lo
            for t in 1..<tokenCount { lo = min(lo, x[t * headDim + c]); hi = max(hi, x[t * headDim + c]) }
            let a = AffineParameters(lo: lo, hi: hi, width: width)
            params.storeBytes(of: a.scaleBits.littleEndian, toByteOffset: 4 * c, as: UInt16.self)
            params.storeBytes(of: a.zeroBits.littleEndian, toByteOffset: 4 * c + 2, as: UInt16.self)
            let s = Float(Float16(bitPattern: a.scaleBits)), z = Float(Float16(bitPattern: a.zeroBits))
            for t in 0..<tokenCount {
                let row = codes + t * rowByteCount
                if c == 0 { for b in 0..<rowByteCount { row.storeBytes(of: 0, toByteOffset: b, as: UInt8.self) } }
                var code: Float = 0
                if s != 0 { code = min(max(((x[t * headDim + c] - z) / s).rounded(.toNearestOrEven), 0), Float(width.maxCode)) }
                CodePacking.store(width, UInt32(code), row, element: c)
            }
        }
    }

    /// Decodes token row `row` (its codes) with the page parameters into `out[0..<headDim]`.
    public func decode(_ row: UnsafeRawPointer, params: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        for c in 0..<headDim {
            let a = parameters(ofChannel: c, in: params)
            out[c] = a.zero + a.scale * Float(CodePacking.load(width, row, element: c))
        }
    }

    /// A query folded into one page's channel parameters, for `dot`.
    public struct PreparedQuery: Sendable {
        /// q_c · scale_c per channel.
        public var scaledQuery: [Float]
        /// Σ_c q_c · zero_c.
        public var zeroTerm: Float
    }

    /// Folds `q` into the page's parameters: O(headDim) once per page and query.
    public func prepare(_ q: UnsafePointer<Float>, params: UnsafeRawPointer) -> PreparedQuery {
        var scaled = [Float](repeating: 0, count: headDim)
        var z: Float = 0
        for c in 0..<headDim {
            let a = parameters(ofChannel: c, in: params)
            scaled[c] = q[c] * a.scale
            z += q[c] * a.zero
        }
        return PreparedQuery(scaledQuery: scaled, zeroTerm: z)
    }

    /// The dot product of the prepared query with one token's decoded key, in code space.
    ///
    /// Error: |dot − Σ q_c·x̂_c| ≤ γ_{headDim+3}·Σ_c |q_c|·(scale_c·code_c + |zero_c|), γₙ = n·u/(1 − n·u),
    /// u = 2⁻²⁴ (one rounding for q_c·scale_c, one per product, headDim sums, one final add).
    public func dot(_ p: PreparedQuery, _ row: UnsafeRawPointer) -> Float {
        p.scaledQuery.withUnsafeBufferPointer { qs in
            let qr = UnsafeRawPointer(qs.baseAddress!)
            var acc = SIMD8<Float>()
            var c = 0
            while c + 8 <= headDim {
                acc += qr.loadUnaligned(fromByteOffset: 4 * c, as: SIMD8<Float>.self) * CodePacking.load8f(width, row, element: c)
                c += 8
            }
            var s = acc.sum()
            while c < headDim { s += qs[c] * Float(CodePacking.load(width, row, element: c)); c += 1 }
            return s + p.zeroTerm
        }
    }

    /// Scalar reference of `dot`: Σ_c q_c·(zero_c + scale_c·code_c), left to right.
    public func dotReference(_ q: UnsafePointer<Float>, _ row: UnsafeRawPointer, params: UnsafeRawPointer) -> Float {
        var s: Float = 0
        for c in 0..<headDim {
            let a = parameters(ofChannel: c, in: params)
            s += q[c] * (Float(Float16(bitPattern: a.zeroBits)) + Float(Float16(bitPattern: a.scaleBits)) * Float(CodePacking.load(width, row, element: c)))
        }
        return s
    }

    /// The code of channel `c` in a token row.
    public func code(at c: Int, in row: UnsafeRawPointer) -> Int { Int(CodePacking.load(width, row, element: c)) }
}
