import CKVKernels

extension PageKernels {
    // MARK: Integer-domain (VNNI) scores of per-channel keys

    /// Largest head dim of the VNNI kernels (512): the dots stay exact in int32 up to 66311 and
    /// convert to FP32 exactly (|D| ≤ d·255·127 < 2²⁴) up to 518. The error bound of
    /// `scoresChannelwiseVNNI` assumes a head dim at most this.
    public static let vnniMaxHeadDim = Int(KVK_VNNI_MAX_HEAD_DIM)

    /// Largest head dim of the AVX2 integer scores (256): their int16 lanes add one `vpmaddubsw`
    /// pair of INT4 codes and pieces (|·| ≤ 2·15·127 = 3810) per 32 channels, and stay exact below
    /// 2¹⁵ for 8 such pairs.
    public static let avx2IntegerMaxHeadDim = Int(KVK_AVX2_INT_MAX_HEAD_DIM)

    /// A query row folded into one page's channel parameters and split into two int8 pieces, as
    /// `prepareChannelwiseVNNIReference` computes it (channels in natural order).
    public struct ChannelwiseVNNIQuery: Sendable, Equatable {
        /// σ0 = m/127 and σ1 = σ0/254 (FP32, m = max_c |q_c·scale_c|); both 0 when m < 2⁻⁹⁶, NaN
        /// when some q_c·scale_c is not finite.
        public var sigma0: Float, sigma1: Float
        /// zt = Σ_c q_c·zero_c (FP32, in the kernel's order).
        public var zeroTerm: Float
        /// The pieces, each in [−127, 127]: q_c·scale_c ≈ σ0·a0_c + σ1·a1_c.
        public var a0: [Int8], a1: [Int8]
    }

    /// The scalar definition of the VNNI kernels' query preparation, bit for bit:
    ///
    ///     qs_c = fl(q_c·scale_c), m = max_c |qs_c|, σ0 = fl(m/127), σ1 = fl(σ0/254)
    ///     a0_c = clamp(rint(qs_c·fl(1/σ0)), −127, 127)     (rint of the exact product, ties to even)
    ///     r_c  = fl(qs_c − σ0·a0_c)                         (one fused multiply-add)
    ///     a1_c = clamp(rint(r_c·fl(1/σ1)), −127, 127)
    ///     zt   = Σ_c q_c·zero_c: lane c mod 16 accumulates by fma in channel order, then the 16
    ///            lanes fold in halves (i + 8, i + 4, i + 2, i + 1).
    ///
    /// rint(x·inv) is computed as fl(M + x·inv) − M with M = 1.5·2²³ (one fma; exact for
    /// |x·inv| < 2²², where the FP32 spacing is 1). m < 2⁻⁹⁶ (zero queries included) gives
    /// σ0 = σ1 = 0 and a = 0 (the score is then scale·zt); a non-finite qs_c gives σ0 = σ1 = NaN and
    /// a = 0 (NaN scores).
    ///
    /// **Split residual.** With e_c = qs_c − σ0·a0_c − σ1·a1_c (exact, σ's the FP32 values used),
    /// |e_c| ≤ (σ1/2)·(1 + 2⁻¹⁴) when m ≥ 2⁻⁹⁶. Proof, u = 2⁻²⁴: σ0 ≥ (m/127)(1 − u), so
    /// |qs_c/σ0| ≤ 127/(1 − u); the reciprocal rounds once, so x0 = qs_c·fl(1/σ0) is within
    /// 127·u/(1 − u) < 2⁻¹⁶ of qs_c/σ0 and |x0| < 127.5: rint(x0) ∈ [−127, 127], the clamp never
    /// binds (and were it to bind, clamping a value of magnitude < 127.5 to ±127 stays within ½ of
    /// it), so |qs_c/σ0 − a0_c| ≤ ½ + 2⁻¹⁶ and the exact residual ρ = qs_c − σ0·a0_c has
    /// |ρ| ≤ σ0(½ + 2⁻¹⁶). The fma rounds it once: |r_c − ρ| ≤ u|ρ| (below 2⁻¹²⁶ the error is
    /// ≤ 2⁻¹⁵⁰ absolute, < 2⁻³⁹σ1 since σ1 > 2⁻¹¹¹). As σ0/σ1 ≤ 254/(1 − u),
    /// |r_c/σ1| ≤ 127(1 + 2⁻¹⁵)(1 + u)/(1 − u) < 127.01, and the same argument gives
    /// |r_c·fl(1/σ1)| < 127.5, a1_c ∈ [−127, 127] with no clamping, and |r_c/σ1 − a1_c| ≤ ½ + 2⁻¹⁶.
    /// Then |e_c| = |(ρ − r_c) + σ1(r_c/σ1 − a1_c)| ≤ u·σ0(½ + 2⁻¹⁶)(1 + u) + σ1(½ + 2⁻¹⁶) + 2⁻³⁹σ1
    /// ≤ σ1(127.01·u + ½ + 2⁻¹⁶ + 2⁻³⁹) ≤ σ1(½ + 2⁻¹⁵). (In exact arithmetic it would be σ1/2; the
    /// factor 1 + 2⁻¹⁴ pays for the FP32 reciprocals and residual.) When m < 2⁻⁹⁶, e_c = qs_c and
    /// |e_c| ≤ m.
    public static func prepareChannelwiseVNNIReference(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>,
                                                       params: UnsafeRawPointer) -> ChannelwiseVNNIQuery {
        let d = codec.headDim
        var qs = [Float](repeating: 0, count: d)
        var lanes = [Float](repeating: 0, count: 16)
        var m: Float = 0, finite = true
        for c in 0..<d {
            let p = codec.parameters(ofChannel: c, in: params)
            let s = Float(Float16(bitPattern: p.scaleBits)), z = Float(Float16(bitPattern: p.zeroBits))
            qs[c] = q[c] * s
            lanes[c % 16] = lanes[c % 16].addingProduct(q[c], z)
            if !qs[c].isFinite { finite = false } else { m = max(m, abs(qs[c])) }
        }
        var width = 8
        while width >= 1 {
            for i in 0..<width { lanes[i] = lanes[i] + lanes[i + width] }
            width /= 2
        }
        var result = ChannelwiseVNNIQuery(sigma0: 0, sigma1: 0, zeroTerm: lanes[0], a0: [Int8](repeating: 0, count: d),
                                          a1: [Int8](repeating: 0, count: d))
        guard finite else {
            result.sigma0 = .nan
            result.sigma1 = .nan
            return result
        }
        guard m >= 0x1p-96 else { return result }
        let s0 = m / 127, s1 = s0 / 254, inv0 = 1 / s0, inv1 = 1 / s1
        // rint of the exact product x·inv (ties to even): M + x·inv rounded once, minus M.
        let magic: Float = 0x1.8p23
        func piece(_ x: Float, _ inv: Float) -> Float { min(max(magic.addingProduct(x, inv) - magic, -127), 127) }
        result.sigma0 = s0
        result.sigma1 = s1
        for c in 0..<d {
            let h0 = piece(qs[c], inv0)
            let r = qs[c].addingProduct(-s0, h0)
            result.a0[c] = Int8(h0)
            result.a1[c] = Int8(piece(r, inv1))
        }
        return result
    }

    /// Scalar reference of `scoresChannelwiseVNNI`, bit for bit: per query row the preparation of
    /// `prepareChannelwiseVNNIReference`, then per token the exact integer dots
    /// D0 = Σ_c a0_c·code_c and D1 = Σ_c a1_c·code_c and
    /// `score = fl(fl(fma(σ0, D0, fma(σ1, D1, zt)))·scale)`.
    public static func scoresChannelwiseVNNIReference(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, rowCount: Int,
                                                      codes: UnsafeRawPointer, params: UnsafeRawPointer, tokenCount: Int,
                                                      scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int) {
        let d = codec.headDim
        for r in 0..<rowCount {
            let p = prepareChannelwiseVNNIReference(codec, q + r * d, params: params)
            for j in 0..<tokenCount {
                let (d0, d1) = vnniDots(codec, p, codes + j * codec.rowByteCount)
                let t = p.zeroTerm.addingProduct(p.sigma1, Float(d1))
                scores[r * stride + j] = t.addingProduct(p.sigma0, Float(d0)) * scale
            }
        }
    }

    /// The exact integer dots (Σ a0_c·code_c, Σ a1_c·code_c) of a prepared query with a code row.
    public static func vnniDots(_ codec: ChannelwiseKeyCodec, _ p: ChannelwiseVNNIQuery, _ row: UnsafeRawPointer) -> (Int, Int) {
        var d0 = 0, d1 = 0
        for c in 0..<codec.headDim {
            let k = codec.code(at: c, in: row)
            d0 += Int(p.a0[c]) * k
            d1 += Int(p.a1[c]) * k
        }
        return (d0, d1)
    }

    /// Integer-domain scores of per-channel key pages (AVX512-VNNI `vpdpbusd`, u8 codes × s8 query
    /// pieces → s32; on AVX2, `vpmaddubsw` into int16 lanes and `vpmaddwd`): the same contract as
    /// `scoresChannelwise`, computed as its reference twin `scoresChannelwiseVNNIReference` defines,
    /// bit for bit. `work` holds at least `rowCount·(headDim/2 + 4)` floats (`rowCount·(headDim + 1)`
    /// suffices; scratch). The C kernels where `KernelSet.current` has VNNI scores and the head dim
    /// is a multiple of 64 and at most `vnniMaxHeadDim`, or the AVX2 kernel for INT4 codes and head
    /// dims that are multiples of 32 up to `avx2IntegerMaxHeadDim` (`runsAVX2IntegerScoreKernel`);
    /// else the reference twin itself, so the result is the same on every CPU.
    ///
    /// **Error bound** against the exact score S = scale·Σ_c q_c·(scale_c·code_c + zero_c) (the
    /// FP16 parameters as stored), with u = 2⁻²⁴, γₙ = n·u/(1 − n·u), K = Σ_c code_c, and σ0, σ1,
    /// D0, D1, zt as in the reference (see `channelwiseVNNIErrorBound`):
    ///
    ///     |score − S| ≤ scale · [ E·K + u·Σ_c |q_c·scale_c|·code_c + γ_{d/16+4}·Σ_c |q_c·zero_c|
    ///                             + γ₃·(|σ0·D0| + |σ1·D1| + |zt|) ]
    ///
    /// E = (σ1/2)(1 + 2⁻¹⁴) (m ≥ 2⁻⁹⁶; E = m below). Derivation: Σ_c qs_c·code_c = σ0·D0 + σ1·D1 +
    /// Σ_c e_c·code_c exactly, with |e_c| ≤ E (the split residual, proved on
    /// `prepareChannelwiseVNNIReference`); qs_c = q_c·scale_c·(1 + δ), |δ| ≤ u; zt is a chain of
    /// d/16 fmas per lane then 4 additions, so within γ_{d/16+4}·Σ|q_c·zero_c| of Σ q_c·zero_c; D0,
    /// D1 are exact and convert to FP32 exactly (|D| ≤ d·255·127 < 2²⁴ for d ≤ 512); the two fmas
    /// and the product by scale round three times, ≤ γ₃·(|σ0·D0| + |σ1·D1| + |zt|)·scale. As for the
    /// FP32 bounds, q_c·scale_c and q_c·zero_c are assumed not to underflow.
    public static func scoresChannelwiseVNNI(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, rowCount: Int,
                                             codes: UnsafeRawPointer, params: UnsafeRawPointer, tokenCount: Int, scale: Float,
                                             into scores: UnsafeMutablePointer<Float>, stride: Int, work: UnsafeMutablePointer<Float>) {
        let d = codec.headDim
        #if arch(x86_64)
        if runsVNNIScoreKernel(headDim: d), codec.width != .int3 {
            let bits = Int32(codec.width.bits)
            // Pieces: rowCount·2d bytes at the start of `work`; then (σ0, σ1, zt, 0) per row.
            let a = UnsafeMutableRawPointer(work).assumingMemoryBound(to: Int8.self) // written and read by C only
            let coef = work + rowCount * d / 2
            kvk_prepare_channelwise_vnni(bits, q, rowCount, d, params.assumingMemoryBound(to: UInt16.self), a, coef)
            return kvk_scores_channelwise_vnni(bits, a, coef, rowCount, d, codes.assumingMemoryBound(to: UInt8.self),
                                               codec.rowByteCount, tokenCount, scale, scores, stride)
        }
        if runsAVX2IntegerScoreKernel(codec.width, headDim: d) {
            return kvk_scores_channelwise_int_avx2(q, rowCount, d, params.assumingMemoryBound(to: UInt16.self),
                                                   codes.assumingMemoryBound(to: UInt8.self), codec.rowByteCount, tokenCount, scale,
                                                   scores, stride)
        }
        #endif
        scoresChannelwiseVNNIReference(codec, q, rowCount: rowCount, codes: codes, params: params, tokenCount: tokenCount,
                                       scale: scale, into: scores, stride: stride)
    }

    /// The bound of `scoresChannelwiseVNNI` on |score − S| for one query row and one code row,
    /// evaluated in FP64 (see there for the formula and its derivation).
    public static func channelwiseVNNIErrorBound(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, row: UnsafeRawPointer,
                                                 params: UnsafeRawPointer, scale: Float) -> Double {
        let d = codec.headDim, u = 0x1p-24
        func gamma(_ k: Int) -> Double { Double(k) * u / (1 - Double(k) * u) }
        let p = prepareChannelwiseVNNIReference(codec, q, params: params)
        var k = 0.0, qsTerm = 0.0, zTerm = 0.0, m = 0.0
        for c in 0..<d {
            let a = codec.parameters(ofChannel: c, in: params)
            let code = Double(codec.code(at: c, in: row))
            let qs = abs(Double(q[c]) * Double(Float(Float16(bitPattern: a.scaleBits))))
            k += code
            qsTerm += qs * code
            zTerm += abs(Double(q[c]) * Double(Float(Float16(bitPattern: a.zeroBits))))
            m = max(m, Double(abs(q[c] * Float(Float16(bitPattern: a.scaleBits)))))
        }
        let e = p.sigma1 > 0 ? Double(p.sigma1) / 2 * (1 + 0x1p-14) : m
        let (d0, d1) = vnniDots(codec, p, row)
        let combined = abs(Double(p.sigma0) * Double(d0)) + abs(Double(p.sigma1) * Double(d1)) + abs(Double(p.zeroTerm))
        return Double(scale) * (e * k + u * qsTerm + gamma(d / 16 + 4) * zTerm + gamma(3) * combined)
    }
}
