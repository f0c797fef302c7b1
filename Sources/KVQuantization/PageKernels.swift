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
