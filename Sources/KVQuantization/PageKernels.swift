import CKVKernels

/// Page-level kernels of the decode read path: the scores of a tile of query rows against all the
/// key rows of a page, one page of online softmax, and the weighted sum of all the value rows of a
/// page, each row converted to FP32 once for the whole query tile (a GQA group, a prefill chunk).
///
/// The fast versions are AVX-512 C (`CKVKernels`, chosen at run time by `isAccelerated`); each
/// has a scalar Swift reference twin here (`…Reference`) that defines it and that tests hold it to:
/// - `exp`, `accumulate`: bit-identical to the reference (the same operations: fused
///   multiply-adds in the same order per element; for grouped rows x̂ = fma(scale, code, zero),
///   which equals `zero + scale·code` exactly because scale·code is exact in `Float`);
/// - `scores`: differ from the reference only by summation order, each within the row codec's
///   `dotErrorBound` (FP16 and grouped keys) or `ChannelwiseKeyCodec`'s dot bound, times `scale`;
/// - `scoresChannelwiseVNNI` (per-channel keys on AVX512-VNNI CPUs, integer dots): bit-identical
///   to its reference, which is within `channelwiseVNNIErrorBound` of the exact score;
/// - `softmaxPage`: the weights are bit-identical (same `exp` of the same difference); the running
///   sum `l` differs by summation order only (γₙ relative).
///
/// All take raw pointers; shapes are the callers' responsibility (checked by `precondition` only in
/// the references). Row layouts are those of `StorageFormat`.
public enum PageKernels {
    /// True when this CPU runs the AVX-512 kernels (x86-64 with AVX-512 F/BW/VL/DQ, F16C, FMA).
    public static let isAccelerated: Bool = kvk_avx512_available() != 0

    /// True when the accelerated kernels handle rows of `format` with `headDim` elements (as keys
    /// when `asKeys`, else as values): headDim a multiple of 64 and, for grouped rows, a group size
    /// that is a multiple of the code block (16 elements at INT8, 32 at INT4, 64 at INT2) dividing
    /// headDim. Grouped keys are not accelerated (the defaults use per-channel keys).
    public static func supports(_ format: StorageFormat, headDim d: Int, asKeys: Bool) -> Bool {
        guard isAccelerated, d % 64 == 0 else { return false }
        switch format {
        case .fp16: return true
        case .channelwise: return asKeys
        case .grouped(let w, let g):
            let block = w == .int8 ? 16 : w == .int4 ? 32 : 64
            return !asKeys && g % block == 0 && d % g == 0 && d / g <= 32
        }
    }

    /// The sum of `count` floats read as four concurrent streams: a memory-bandwidth probe for
    /// benchmarks (AVX-512 when available, else portable C).
    public static func readSum(_ p: UnsafePointer<Float>, count: Int) -> Double { kvk_read_sum(p, count) }

    /// Starts loading `byteCount` bytes at `p` into the caches (software prefetch; a hint, never
    /// faults): the read path asks for the next page while it computes on the current one.
    @inlinable public static func prefetch(_ p: UnsafeRawPointer, byteCount: Int) { kvk_prefetch(p, byteCount) }

    // MARK: exp

    /// exp(x) for x ≤ 0 in FP32, |error| ≤ 2 ulp for x ≥ −87 (Cephes `expf`: Cody–Waite reduction
    /// by n = round(x·log₂e), a degree-5 polynomial, scaling by 2ⁿ with one rounding); 0 for
    /// x < −103 and for −∞. Accelerated: 16 lanes at a time.
    public static func exp(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count: Int) {
        if isAccelerated { kvk_exp(x, out, count) } else { for i in 0..<count { out[i] = expReference(x[i]) } }
    }

    /// The scalar definition of `exp` (the same operations, one lane).
    public static func expReference(_ x0: Float) -> Float {
        guard x0 >= -103 else { return 0 }
        let x = x0
        let n = (x * 1.44269504088896341).rounded(.toNearestOrEven)
        var r = x.addingProduct(-n, 0.693359375)
        r = r.addingProduct(-n, -2.12194440e-4)
        var p: Float = 1.9875691500e-4
        p = (1.3981999507e-3 as Float).addingProduct(p, r)
        p = (8.3334519073e-3 as Float).addingProduct(p, r)
        p = (4.1665795894e-2 as Float).addingProduct(p, r)
        p = (1.6666665459e-1 as Float).addingProduct(p, r)
        p = (5.0000001201e-1 as Float).addingProduct(p, r)
        let y = r.addingProduct(p, r * r) + 1
        // y·2ⁿ with one rounding: 2ⁿ is exact for n ≥ −149 (subnormal included), n ≤ 127 here.
        return y * Float(sign: .plus, exponent: Int(n), significand: 1)
    }

    // MARK: Scores

    /// `scores[r·stride + j] = scale · (q_r · key_j)` for `rowCount` query rows (`q`, `headDim`
    /// each) against `tokenCount` FP16 key rows. Accelerated only: check `supports`.
    public static func scoresFP16(_ q: UnsafePointer<Float>, rowCount: Int, headDim: Int, keys: UnsafeRawPointer,
                                  tokenCount: Int, scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int) {
        kvk_scores_fp16(q, rowCount, headDim, keys.assumingMemoryBound(to: UInt16.self), tokenCount, scale, scores, stride)
    }

    /// Scalar reference of `scoresFP16`: `scale · RowCodec.dotReference` per pair.
    public static func scoresReference(_ codec: RowCodec, _ q: UnsafePointer<Float>, rowCount: Int, keys: UnsafeRawPointer,
                                       tokenCount: Int, scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int) {
        for r in 0..<rowCount {
            for j in 0..<tokenCount {
                scores[r * stride + j] = codec.dotReference(q + r * codec.headDim, keys + j * codec.rowByteCount) * scale
            }
        }
    }

    /// Per-channel key pages: folds `rowCount` query rows into the page's parameters
    /// (`PreparedChannelwise`, block-permuted for the accelerated kernel), then scores all
    /// `tokenCount` code rows: `scores[r·stride + j] = scale · (Σ_c (q_c·scale_c)·code_jc + Σ_c q_c·zero_c)`.
    /// `work` holds at least `rowCount·(headDim + 1)` floats. Accelerated only: check `supports`.
    public static func scoresChannelwise(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, rowCount: Int,
                                         codes: UnsafeRawPointer, params: UnsafeRawPointer, tokenCount: Int, scale: Float,
                                         into scores: UnsafeMutablePointer<Float>, stride: Int, work: UnsafeMutablePointer<Float>) {
        let d = codec.headDim, bits = Int32(codec.width.bits)
        let qs = work, zt = work + rowCount * d
        kvk_prepare_channelwise(bits, q, rowCount, d, params.assumingMemoryBound(to: UInt16.self), qs, zt)
        kvk_scores_codes(bits, qs, zt, rowCount, d, codes.assumingMemoryBound(to: UInt8.self), codec.rowByteCount,
                         tokenCount, scale, scores, stride)
    }

    /// Scalar reference of `scoresChannelwise`: `scale · ChannelwiseKeyCodec.dotReference` per pair.
    public static func scoresChannelwiseReference(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, rowCount: Int,
                                                  codes: UnsafeRawPointer, params: UnsafeRawPointer, tokenCount: Int,
                                                  scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int) {
        for r in 0..<rowCount {
            for j in 0..<tokenCount {
                scores[r * stride + j] = codec.dotReference(q + r * codec.headDim, codes + j * codec.rowByteCount, params: params) * scale
            }
        }
    }

    // MARK: Integer-domain (VNNI) scores of per-channel keys

    /// True when this CPU runs `scoresChannelwiseVNNI` (the AVX-512 kernels plus AVX512-VNNI).
    public static let isVNNIAccelerated: Bool = kvk_vnni_available() != 0

    /// Largest head dim of the VNNI kernels (512): the dots stay exact in int32 up to 66311 and
    /// convert to FP32 exactly (|D| ≤ d·255·127 < 2²⁴) up to 518.
    public static let vnniMaxHeadDim = Int(KVK_VNNI_MAX_HEAD_DIM)

    /// True when `scoresChannelwiseVNNI` handles pages of `codec`: a VNNI CPU, headDim a multiple
    /// of 64 and at most `vnniMaxHeadDim` (callers fall back to `scoresChannelwise` otherwise).
    public static func supportsVNNI(_ codec: ChannelwiseKeyCodec) -> Bool {
        isVNNIAccelerated && codec.headDim % 64 == 0 && codec.headDim <= vnniMaxHeadDim
    }

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
    /// pieces → s32): the same contract as `scoresChannelwise`, computed as its reference twin
    /// `scoresChannelwiseVNNIReference` defines, bit for bit. `work` holds at least
    /// `rowCount·(headDim/2 + 4)` floats (`rowCount·(headDim + 1)` suffices). Check `supportsVNNI`.
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
        let d = codec.headDim, bits = Int32(codec.width.bits)
        // Pieces: rowCount·2d bytes at the start of `work`; then (σ0, σ1, zt, 0) per row.
        let a = UnsafeMutableRawPointer(work).assumingMemoryBound(to: Int8.self) // written and read by C only
        let coef = work + rowCount * d / 2
        kvk_prepare_vnni(bits, q, rowCount, d, params.assumingMemoryBound(to: UInt16.self), a, coef)
        kvk_scores_vnni(bits, a, coef, rowCount, d, codes.assumingMemoryBound(to: UInt8.self), codec.rowByteCount,
                        tokenCount, scale, scores, stride)
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

    // MARK: Softmax

    /// One page of online softmax for `rowCount` rows of scores (`s`, `stride` apart, `tokenCount`
    /// used; −∞ = masked), with running maxima `m`, sums `l` and outputs `out` (`headDim` each):
    /// see `softmaxPageReference`. On return `s` holds the page's unnormalised weights.
    public static func softmaxPage(_ s: UnsafeMutablePointer<Float>, rowCount: Int, tokenCount: Int, stride: Int,
                                   m: UnsafeMutablePointer<Float>, l: UnsafeMutablePointer<Float>,
                                   out: UnsafeMutablePointer<Float>, headDim: Int) {
        if isAccelerated {
            kvk_softmax_page(s, rowCount, tokenCount, stride, m, l, out, headDim)
        } else {
            softmaxPageReference(s, rowCount: rowCount, tokenCount: tokenCount, stride: stride, m: m, l: l, out: out, headDim: headDim)
        }
    }

    /// Scalar reference of `softmaxPage`, per row: pm = maxⱼ sⱼ; if pm = −∞ the weights are 0 and
    /// nothing else changes; else M = max(m, pm), c = exp(m − M), and when c ≠ 1, l ← l·c and
    /// out ← out·c; sⱼ ← exp(sⱼ − M); l ← l + Σⱼ sⱼ (left to right here); m ← M.
    public static func softmaxPageReference(_ s: UnsafeMutablePointer<Float>, rowCount: Int, tokenCount n: Int, stride: Int,
                                            m: UnsafeMutablePointer<Float>, l: UnsafeMutablePointer<Float>,
                                            out: UnsafeMutablePointer<Float>, headDim d: Int) {
        for r in 0..<rowCount {
            let sr = s + r * stride
            var pm = -Float.infinity
            for j in 0..<n { pm = max(pm, sr[j]) }
            guard pm > -.infinity else {
                for j in 0..<n { sr[j] = 0 }
                continue
            }
            let nm = max(m[r], pm)
            let c = expReference(m[r] - nm)
            if c != 1 {
                l[r] *= c
                for i in 0..<d { out[r * d + i] *= c }
            }
            var sum: Float = 0
            for j in 0..<n { sr[j] = expReference(sr[j] - nm); sum += sr[j] }
            l[r] += sum
            m[r] = nm
        }
    }

    // MARK: Accumulate

    /// `out[r·headDim + i] ← fma(w[r·stride + j], x̂_ji, out[r·headDim + i])` for j = 0..<tokenCount in
    /// order: the weighted sum of a page's value rows (`rows`, `codec.rowByteCount` apart) for
    /// `rowCount` output rows. Bit-identical to `accumulateReference`. Accelerated only: check
    /// `supports(codec.format, headDim:asKeys: false)`.
    public static func accumulate(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                  rows: UnsafeRawPointer, tokenCount: Int, into out: UnsafeMutablePointer<Float>) {
        let d = codec.headDim
        switch codec.format {
        case .fp16:
            kvk_accumulate_fp16(w, rowCount, stride, tokenCount, rows.assumingMemoryBound(to: UInt16.self), d, out)
        case .grouped(let width, let g):
            kvk_accumulate_grouped(Int32(width.bits), g, w, rowCount, stride, tokenCount, rows.assumingMemoryBound(to: UInt8.self),
                                   codec.rowByteCount, width.packedByteCount(codes: d), d, out)
        case .channelwise:
            preconditionFailure("PageKernels.accumulate: channelwise rows are keys, not values")
        }
    }

    /// Scalar reference of `accumulate`: element by element, tokens in order, one fused
    /// multiply-add each, with x̂ decoded by `RowCodec.decodeReference`.
    public static func accumulateReference(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                           rows: UnsafeRawPointer, tokenCount: Int, into out: UnsafeMutablePointer<Float>) {
        let d = codec.headDim
        let x = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { x.deallocate() }
        for j in 0..<tokenCount {
            codec.decodeReference(rows + j * codec.rowByteCount, into: x)
            for r in 0..<rowCount {
                let wr = w[r * stride + j]
                for i in 0..<d { out[r * d + i] = out[r * d + i].addingProduct(wr, x[i]) }
            }
        }
    }

    // MARK: Integer-domain accumulate

    /// True when `accumulateInteger` runs on this CPU for grouped value rows of `format`: AVX-512
    /// VNNI and VBMI present, INT4 rows with a group size that is a multiple of 32 and a head dim
    /// that is a multiple of 128, or INT8 rows with a group size that is a multiple of 16 and a head
    /// dim that is a multiple of 64; at most 32 groups and 256 code bytes per row.
    public static func supportsInteger(_ format: StorageFormat, headDim d: Int) -> Bool {
        guard hasIntegerKernels, case .grouped(let w, let g) = format, d % g == 0, d / g <= 32,
              w.packedByteCount(codes: d) <= 256 else { return false }
        switch w {
        case .int4: return g % 32 == 0 && d % 128 == 0
        case .int8: return g % 16 == 0 && d % 64 == 0
        case .int2: return false
        }
    }

    /// Whether the read path should accumulate value rows of `format` with `accumulateInteger`
    /// (what `KVStore.attend` does): INT4 only, where supported. Measured here (Zen 4): at INT4 it
    /// cut a cached decode step by about a third (mha-32x128, 1,024 tokens, one thread: 0.61 →
    /// 0.42 ms); at INT8 it was no faster cached and slower from memory (16k tokens: 8.3 ms with
    /// `accumulate` against 9.7–15 ms: its 4-token transposition reads 136-byte rows with split
    /// loads), so INT8 keeps the FP32 kernel.
    public static func prefersInteger(_ format: StorageFormat, headDim d: Int) -> Bool {
        guard case .grouped(.int4, _) = format else { return false }
        return supportsInteger(format, headDim: d)
    }

    static let hasIntegerKernels: Bool = kvk_integer_values_available() != 0

    /// The weighted sum of a page's grouped value rows with integer dot products (`vpdpbusd`):
    /// per output row and per block of up to 64 tokens, each weight-times-scale a_j = w_j·s_jk is
    /// split into two int8 pieces, a_j ≈ σ0·a0_j + σ1·a1_j (σ0 = max_j|a_j|/127, σ1 = σ0/254, per
    /// group k and block), the codes are multiplied by the pieces exactly in int32, and
    /// `out[i] += fma(σ0, Σ a0·c, fma(σ1, Σ a1·c, Σ_j w_j·z_jk))`. Bit-identical to
    /// `accumulateIntegerReference`, which defines it exactly.
    ///
    /// Error against the exact Σ_j w_j·(s_jk·c_ji + z_jk), per element i of group k:
    /// |Δ| ≤ Σ_j c_ji·(σ1·(1/2 + 2⁻¹²) + u·|a_j|) + γ_{n+3}·Σ_j |w_j·z_jk| + 2u·|Σ_j w_j·x̂_ji| + FP32
    /// rounding of `out` (u = 2⁻²⁴): the first term is the split residual (|a − σ0·a0| ≤ σ0/2 up to
    /// rounding: a·(1/σ0) is within 2u·127 of a/σ0, and the fma residual is rounded once, so a1 needs
    /// no clamping beyond rounding and leaves |a − σ0·a0 − σ1·a1| ≤ σ1·(1/2 + 2⁻¹²)),
    /// the others the rounded products and sums. σ1/2 ≈ 1.55·10⁻⁵·max|a_j|: FP32-level accuracy
    /// for a page of weights (`IntegerAccumulateTests` checks this bound).
    /// Accelerated only: check `supportsInteger`.
    public static func accumulateInteger(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                         rows: UnsafeRawPointer, tokenCount: Int, into out: UnsafeMutablePointer<Float>) {
        guard case .grouped(let width, let g) = codec.format else { preconditionFailure("PageKernels.accumulateInteger: grouped rows only") }
        kvk_accumulate_grouped_integer(Int32(width.bits), g, w, rowCount, stride, tokenCount, rows.assumingMemoryBound(to: UInt8.self),
                                       codec.rowByteCount, codec.codeByteCount, codec.headDim, out)
    }

    /// Scalar reference of `accumulateInteger` (its definition; see the C header for the formula).
    public static func accumulateIntegerReference(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                                  rows: UnsafeRawPointer, tokenCount n: Int, into out: UnsafeMutablePointer<Float>) {
        guard case .grouped(_, let g) = codec.format else { preconditionFailure("PageKernels.accumulateIntegerReference: grouped rows only") }
        let d = codec.headDim, G = d / g
        func code(_ j: Int, _ i: Int) -> Int32 { Int32(codec.code(at: i, in: rows + j * codec.rowByteCount)) }
        for r in 0..<rowCount {
            let wr = w + r * stride, o = out + r * d
            var j0 = 0
            while j0 < n {
                let nb = min(64, n - j0)
                for k in 0..<G {
                    var a = [Float](repeating: 0, count: nb), z = [Float](repeating: 0, count: 4), m: Float = 0
                    for t in 0..<nb {
                        let row = rows + (j0 + t) * codec.rowByteCount
                        let p = codec.parameters(ofGroup: k, in: row)
                        let s = Float(Float16(bitPattern: p.scaleBits)), zero = Float(Float16(bitPattern: p.zeroBits))
                        a[t] = wr[j0 + t] * s
                        z[t % 4] += wr[j0 + t] * zero
                        m = max(m, abs(a[t]))
                    }
                    let zsum = (z[0] + z[1]) + (z[2] + z[3])
                    let s0 = m / 127, s1 = s0 / 254
                    let d0: Float = s0 == 0 ? 1 : s0, d1: Float = s1 == 0 ? 1 : s1
                    let inv0 = 1 / d0, inv1 = 1 / d1
                    var a0 = [Int32](repeating: 0, count: nb), a1 = a0
                    for t in 0..<nb {
                        a0[t] = min(127, max(-127, Int32((a[t] * inv0).rounded(.toNearestOrEven))))
                        let rest = a[t].addingProduct(-d0, Float(a0[t]))
                        a1[t] = min(127, max(-127, Int32((rest * inv1).rounded(.toNearestOrEven))))
                    }
                    for i in (k * g)..<((k + 1) * g) {
                        var dot0: Int32 = 0, dot1: Int32 = 0
                        for t in 0..<nb {
                            let c = code(j0 + t, i)
                            dot0 += a0[t] * c
                            dot1 += a1[t] * c
                        }
                        o[i] += zsum.addingProduct(s1, Float(dot1)).addingProduct(s0, Float(dot0))
                    }
                }
                j0 += 64
            }
        }
    }
}
