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
    /// Validates everything first; on error nothing is written.
    ///
    /// - Throws: `QuantizationError` with the flat index `token·headDim + channel` of the first bad
    ///   element.
    /// - Complexity: O(tokenCount·headDim).
    public func encodePage(_ x: UnsafePointer<Float>, tokenCount: Int, codes: UnsafeMutableRawPointer,
                           params: UnsafeMutableRawPointer) throws(QuantizationError) {
        precondition(tokenCount > 0, "ChannelwiseKeyCodec.encodePage: a page needs at least one token")
        if let e = ValueCheck.firstInvalid(x, count: tokenCount * headDim) { throw e }
        var lo = [Float](UnsafeBufferPointer(start: x, count: headDim))
        var hi = lo
        for t in 1..<max(tokenCount, 1) {
            let r = x + t * headDim
            for c in 0..<headDim { lo[c] = min(lo[c], r[c]); hi[c] = max(hi[c], r[c]) }
        }
        var scale = [Float](repeating: 0, count: headDim), zero = scale
        for c in 0..<headDim {
            let a = AffineParameters(lo: lo[c], hi: hi[c], width: width)
            params.storeBytes(of: a.scaleBits.littleEndian, toByteOffset: 4 * c, as: UInt16.self)
            params.storeBytes(of: a.zeroBits.littleEndian, toByteOffset: 4 * c + 2, as: UInt16.self)
            scale[c] = a.scale
            zero[c] = a.zero
        }
        let maxCode = Float(width.maxCode)
        for t in 0..<tokenCount {
            let r = x + t * headDim, row = codes + t * rowByteCount
            for b in 0..<rowByteCount { row.storeBytes(of: 0, toByteOffset: b, as: UInt8.self) }
            for c in 0..<headDim {
                var code: Float = 0
                // Same magic-number rounding as the grouped encoder: the quotient is in [0, 2^22].
                if scale[c] != 0 { code = min((max((r[c] - zero[c]) / scale[c], 0) + 0x1p23) - 0x1p23, maxCode) }
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
