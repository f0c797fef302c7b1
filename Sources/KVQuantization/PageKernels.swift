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
    public static let isAccelerated: Bool = kvk_cpu_features() & KVK_CPU_AVX512 != 0

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
        kvk_scores_channelwise(bits, qs, zt, rowCount, d, codes.assumingMemoryBound(to: UInt8.self), codec.rowByteCount,
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
}
