import CKVKernels

/// Page-level kernels of the decode read path: the scores of a tile of query rows against all the
/// key rows of a page, one page of online softmax, and the weighted sum of all the value rows of a
/// page, each row converted to FP32 once for the whole query tile (a GQA group, a prefill chunk).
///
/// Every entry is safe on any CPU: it runs the C kernel (`CKVKernels`, x86-64 only) when
/// `KernelSet.current` and the shape allow it (the rules are in `PageKernels+Dispatch.swift`), and
/// a Swift path otherwise (column "portable"), held to the same contract. Each has a scalar Swift
/// reference twin (`…Reference`) that defines it and that tests hold both paths to:
///
/// | C function | Swift entry | portable path | reference twin | contract |
/// |---|---|---|---|---|
/// | `kvk_cpu_features` | `CPUFeatures.detected` → `KernelPath.current` | (0 off x86-64) | — | — |
/// | `kvk_read_sum` | `readSum` | portable C | — | a bandwidth probe |
/// | `kvk_exp`, `kvk_exp_avx2` | `exp` | the reference | `expReference` | bit-exact |
/// | `kvk_softmax_page`, `kvk_softmax_page_avx2` | `softmaxPage` | `softmaxPagePortable` (exp unfused) | `softmaxPageReference` (`fusedExp:` per `softmaxUsesFusedExp`) | weights, m, out bit-exact; l by summation order, ≤ γₙ₊₂·l |
/// | `kvk_scores_fp16`, `kvk_scores_fp16_avx2` | `scoresFP16` | `scoresFP16Portable` (tiled) | `scoresReference` | each within `RowCodec.dotErrorBound`·scale of the exact dot (+1 rounding) |
/// | `kvk_prepare_channelwise`, `kvk_scores_channelwise` (and `_avx2`) | `scoresChannelwise` | `scoresChannelwisePortable` (tiled; INT3: `scoresChannelwiseInt3`) | `scoresChannelwiseReference` | each within γ_{d+4}·Σ_c\|q_c\|(scale_c·code_c + \|zero_c\|)·scale of the exact dot (+1 rounding) |
/// | `kvk_prepare_channelwise_vnni`, `kvk_scores_channelwise_vnni`; `kvk_scores_channelwise_int_avx2` (INT4) | `scoresChannelwiseVNNI` | the reference | `scoresChannelwiseVNNIReference` | bit-exact; the twin within `channelwiseVNNIErrorBound` of the exact score |
/// | `kvk_accumulate_fp16`, `kvk_accumulate_grouped` (and `_avx2`) | `accumulate` | `accumulatePortable` (tiled, unfused) | `accumulateReference` (`fused:` per `accumulateUsesFMA`) | bit-exact |
/// | `kvk_accumulate_integer` | `accumulateInteger` | the reference | `accumulateIntegerReference` | bit-exact; the twin within the split bound documented on `accumulateInteger` |
/// | `kvk_first_invalid`, `kvk_first_invalid_avx2` | `ValueCheck.firstInvalid` (`RowCodec.encode`, `ChannelwiseKeyCodec.encodePage`) | Swift SIMD | `ValueCheck.firstInvalidReference` | exact: the same first element |
/// | `kvk_float_to_half`, `kvk_float_to_half_avx2` | `RowCodec.encode` of `.fp16` rows | `Float16Bits.floatToHalf` | `Float16Bits.floatToHalfReference` | bit-exact |
/// | `kvk_normalized_weights_avx2` | `normalizedWeights` (`PageKernels+Weights.swift`) | `normalizedWeightsPortable` | the portable path | bit-exact where Swift's `exp(Float)` is glibc's `expf` (Linux); else within 1 ulp of the exp |
///
/// The INT3 and Lloyd–Max kernels are in `PageKernels+Formats.swift` (their own table).
///
/// Why the contracts hold: `exp`, `accumulate` use the same operations as their references (fused
/// multiply-adds in the same order per element, or on the Swift path a product and a sum each; for grouped rows x̂ = fma(scale, code, zero), which
/// equals `zero + scale·code` exactly because scale·code is exact in `Float`); the scores differ
/// from their references only by summation order; the integer kernels are defined by their twins.
///
/// The read path itself does not call the entries blindly: `KeyScoring` and `ValueAccumulation`
/// choose once per tier which of them (or the per-row `RowCodec` kernels) it uses.
///
/// All take raw pointers; shapes are the callers' responsibility (checked by `precondition` only in
/// the references). Row layouts are those of `StorageFormat`.
package enum PageKernels {
    /// Query rows per tile of every tiled score and accumulate kernel (C and Swift): rows are taken
    /// four at a time from the first, then the rest. Each row's result depends only on the row, the
    /// page and which tile shape computed it, so any run of a block's rows that starts on a
    /// multiple of `rowTile` is computed bit for bit as within the whole block (how `KVStore.attend`
    /// splits one stream's rows over threads).
    package static let rowTile = 4

    /// The sum of `count` floats read as four concurrent streams: a memory-bandwidth probe for
    /// benchmarks (AVX-512 loads when the CPU has them, whatever the kernel path, else portable C).
    public static func readSum(_ p: UnsafePointer<Float>, count: Int) -> Double { kvk_read_sum(p, count) }

    // MARK: exp

    /// exp(x) for x ≤ 0 in FP32, |error| ≤ 2 ulp for x ≥ −87 (Cephes `expf`: Cody–Waite reduction
    /// by n = round(x·log₂e), a degree-5 polynomial, scaling by 2ⁿ with one rounding); 0 for
    /// x < −103 and for −∞. Bit-identical to `expReference` (AVX-512: 16 lanes at a time).
    public static func exp(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count: Int) {
        #if arch(x86_64)
        if KernelSet.current.avx512 { return kvk_exp(x, out, count) }
        if KernelSet.current.avx2 { return kvk_exp_avx2(x, out, count) }
        #endif
        for i in 0..<count { out[i] = expReference(x[i]) }
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

    /// `expReference` with every fused multiply-add replaced by a product and a sum, each rounded:
    /// the exp of the Swift softmax (`softmaxPage` on the portable path), where a fused
    /// multiply-add may be a library call. |error| ≤ 2 ulp for −87 ≤ x ≤ 0, as for `expReference`
    /// (the reduction's first product n·0.693359375 is exact, so only the second and the polynomial
    /// round once more; `PageKernelTests` checks both against the exact exp).
    public static func expUnfusedReference(_ x0: Float) -> Float {
        guard x0 >= -103 else { return 0 }
        let x = x0
        let n = (x * 1.44269504088896341).rounded(.toNearestOrEven)
        var r = x - n * 0.693359375
        r = r - n * -2.12194440e-4
        var p: Float = 1.9875691500e-4
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let y = (r + p * (r * r)) + 1
        return y * Float(sign: .plus, exponent: Int(n), significand: 1)
    }

    // MARK: Scores

    /// `scores[r·stride + j] = scale · (q_r · key_j)` for `rowCount` query rows (`q`, `headDim`
    /// each) against `tokenCount` FP16 key rows, each dot within `RowCodec.dotErrorBound` of the
    /// exact one. AVX-512 for head dims that are multiples of 64, AVX2 for multiples of 16, else
    /// the tiled Swift kernel; each key row converted once per tile of four query rows.
    /// `work` holds at least `rowCount·headDim` floats (scratch: the Swift kernel's permuted queries).
    public static func scoresFP16(_ q: UnsafePointer<Float>, rowCount: Int, headDim: Int, keys: UnsafeRawPointer,
                                  tokenCount: Int, scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int,
                                  work: UnsafeMutablePointer<Float>) {
        precondition(headDim > 0, "PageKernels.scoresFP16: headDim \(headDim) must be positive")
        #if arch(x86_64)
        if runsFP32Kernels(headDim: headDim) {
            return kvk_scores_fp16(q, rowCount, headDim, keys.assumingMemoryBound(to: UInt16.self), tokenCount, scale, scores, stride)
        }
        if runsAVX2Kernels(headDim: headDim) {
            return kvk_scores_fp16_avx2(q, rowCount, headDim, keys.assumingMemoryBound(to: UInt16.self), tokenCount, scale, scores, stride)
        }
        #endif
        scoresFP16Portable(q, rowCount: rowCount, headDim: headDim, keys: keys, tokenCount: tokenCount, scale: scale, into: scores, stride: stride,
                           work: work)
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
    /// `work` holds at least `(rowCount + 1)·(headDim + 1)` floats (scratch). AVX-512 for head dims
    /// that are multiples of 64, AVX2 for multiples of 8, else the tiled Swift kernel (its own unit
    /// order).
    public static func scoresChannelwise(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, rowCount: Int,
                                         codes: UnsafeRawPointer, params: UnsafeRawPointer, tokenCount: Int, scale: Float,
                                         into scores: UnsafeMutablePointer<Float>, stride: Int, work: UnsafeMutablePointer<Float>) {
        let d = codec.headDim
        if codec.width == .int3 {
            return scoresChannelwiseInt3(codec, q, rowCount: rowCount, codes: codes, params: params, tokenCount: tokenCount, scale: scale,
                                         into: scores, stride: stride, work: work)
        }
        #if arch(x86_64)
        if runsFP32Kernels(headDim: d) {
            let bits = Int32(codec.width.bits), qs = work, zt = work + rowCount * d
            kvk_prepare_channelwise(bits, q, rowCount, d, params.assumingMemoryBound(to: UInt16.self), qs, zt)
            return kvk_scores_channelwise(bits, qs, zt, rowCount, d, codes.assumingMemoryBound(to: UInt8.self), codec.rowByteCount,
                                          tokenCount, scale, scores, stride)
        }
        if runsAVX2ChannelwiseKernels(headDim: d) {
            let bits = Int32(codec.width.bits), qs = work, zt = work + rowCount * d
            kvk_prepare_channelwise_avx2(bits, q, rowCount, d, params.assumingMemoryBound(to: UInt16.self), qs, zt)
            return kvk_scores_channelwise_avx2(bits, qs, zt, rowCount, d, codes.assumingMemoryBound(to: UInt8.self), codec.rowByteCount,
                                               tokenCount, scale, scores, stride)
        }
        #endif
        scoresChannelwisePortable(codec, q, rowCount: rowCount, codes: codes, params: params, tokenCount: tokenCount, scale: scale,
                                  into: scores, stride: stride, work: work)
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
    /// see `softmaxPageReference`. On return `s` holds the page's unnormalised weights. The C
    /// kernels (AVX-512, AVX2) use `expReference`; the Swift path `expUnfusedReference`
    /// (`fusedExp: false` in the reference; `softmaxUsesFusedExp` says which).
    public static func softmaxPage(_ s: UnsafeMutablePointer<Float>, rowCount: Int, tokenCount: Int, stride: Int,
                                   m: UnsafeMutablePointer<Float>, l: UnsafeMutablePointer<Float>,
                                   out: UnsafeMutablePointer<Float>, headDim: Int) {
        #if arch(x86_64)
        if KernelSet.current.avx512 { return kvk_softmax_page(s, rowCount, tokenCount, stride, m, l, out, headDim) }
        if KernelSet.current.avx2 { return kvk_softmax_page_avx2(s, rowCount, tokenCount, stride, m, l, out, headDim) }
        #endif
        softmaxPagePortable(s, rowCount: rowCount, tokenCount: tokenCount, stride: stride, m: m, l: l, out: out, headDim: headDim)
    }

    /// Whether `softmaxPage` uses `expReference` (the C kernels) rather than `expUnfusedReference`
    /// (the Swift path) on this kernel set.
    public static func softmaxUsesFusedExp(on kernels: KernelSet = .current) -> Bool {
        #if arch(x86_64)
        return kernels.avx512 || kernels.avx2
        #else
        return false
        #endif
    }

    /// The exp `softmaxPage` uses on this kernel set (`expReference` or `expUnfusedReference`): for
    /// rescaling other outputs by the factor it applies, bit for bit.
    public static func softmaxExp(_ x: Float) -> Float {
        softmaxUsesFusedExp() ? expReference(x) : expUnfusedReference(x)
    }

    /// Scalar reference of `softmaxPage`, per row: pm = maxⱼ sⱼ; if pm = −∞ the weights are 0 and
    /// nothing else changes; else M = max(m, pm), c = exp(m − M), and when c ≠ 1, l ← l·c and
    /// out ← out·c; sⱼ ← exp(sⱼ − M); l ← l + Σⱼ sⱼ (left to right here); m ← M. exp is
    /// `expReference`, or `expUnfusedReference` with `fusedExp: false`.
    public static func softmaxPageReference(_ s: UnsafeMutablePointer<Float>, rowCount: Int, tokenCount n: Int, stride: Int,
                                            m: UnsafeMutablePointer<Float>, l: UnsafeMutablePointer<Float>,
                                            out: UnsafeMutablePointer<Float>, headDim d: Int, fusedExp: Bool = true) {
        func exp(_ x: Float) -> Float { fusedExp ? expReference(x) : expUnfusedReference(x) }
        for r in 0..<rowCount {
            let sr = s + r * stride
            var pm = -Float.infinity
            for j in 0..<n { pm = max(pm, sr[j]) }
            guard pm > -.infinity else {
                for j in 0..<n { sr[j] = 0 }
                continue
            }
            let nm = max(m[r], pm)
            let c = exp(m[r] - nm)
            if c != 1 {
                l[r] *= c
                for i in 0..<d { out[r * d + i] *= c }
            }
            var sum: Float = 0
            for j in 0..<n { sr[j] = exp(sr[j] - nm); sum += sr[j] }
            l[r] += sum
            m[r] = nm
        }
    }

    // MARK: Accumulate

    /// `out[r·headDim + i] ← fma(w[r·stride + j], x̂_ji, out[r·headDim + i])` for j = 0..<tokenCount in
    /// order: the weighted sum of a page's value rows (`rows`, `codec.rowByteCount` apart) for
    /// `rowCount` output rows, each value row converted once per tile of four output rows.
    /// Bit-identical to `accumulateReference` on the C kernels: AVX-512 for the shapes of
    /// `runsAccumulateKernel` (head dim a multiple of 64; groups whole code blocks), AVX2 for those
    /// of `runsAVX2AccumulateKernel` (multiples of 16); else the tiled Swift kernel, bit-identical
    /// to `accumulateReference(…, fused: false)` (see `accumulateUsesFMA`).
    /// `work` holds at least `accumulateWorkCount(codec, tokenCount:)` floats (scratch: the Swift
    /// kernel's scales and zeros).
    public static func accumulate(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                  rows: UnsafeRawPointer, tokenCount: Int, into out: UnsafeMutablePointer<Float>,
                                  work: UnsafeMutablePointer<Float>) {
        let d = codec.headDim
        #if arch(x86_64)
        if runsAccumulateKernel(codec.format, headDim: d) {
            switch codec.format {
            case .fp16:
                return kvk_accumulate_fp16(w, rowCount, stride, tokenCount, rows.assumingMemoryBound(to: UInt16.self), d, out)
            case .grouped(let width, let g):
                return kvk_accumulate_grouped(Int32(width.bits), g, w, rowCount, stride, tokenCount, rows.assumingMemoryBound(to: UInt8.self),
                                              codec.rowByteCount, width.packedByteCount(codes: d), d, out)
            case .channelwise, .mixedChannelwise, .lloydMax:
                break
            }
        }
        if runsAVX2AccumulateKernel(codec.format, headDim: d) {
            switch codec.format {
            case .fp16:
                return kvk_accumulate_fp16_avx2(w, rowCount, stride, tokenCount, rows.assumingMemoryBound(to: UInt16.self), d, out)
            case .grouped(let width, let g):
                return kvk_accumulate_grouped_avx2(Int32(width.bits), g, w, rowCount, stride, tokenCount, rows.assumingMemoryBound(to: UInt8.self),
                                                   codec.rowByteCount, codec.codeByteCount, d, out)
            case .channelwise, .mixedChannelwise, .lloydMax:
                break
            }
        }
        #endif
        accumulatePortable(codec, weights: w, rowCount: rowCount, stride: stride, rows: rows, tokenCount: tokenCount, into: out, work: work)
    }

    /// Whether `accumulate` runs a C kernel (bit-identical to `accumulateReference`) for value rows
    /// of `format`, rather than the Swift one (`accumulateReference(…, fused: false)`).
    public static func accumulateUsesFMA(_ format: StorageFormat, headDim d: Int, on kernels: KernelSet = .current) -> Bool {
        #if arch(x86_64)
        return runsAccumulateKernel(format, headDim: d, on: kernels) || runsAVX2AccumulateKernel(format, headDim: d, on: kernels)
        #else
        return false
        #endif
    }

    /// Scalar reference of `accumulate`: element by element, tokens in order, one fused
    /// multiply-add each (with `fused: false`, a product and a sum, each rounded), with x̂ decoded by
    /// `RowCodec.decodeReference`.
    public static func accumulateReference(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                           rows: UnsafeRawPointer, tokenCount: Int, into out: UnsafeMutablePointer<Float>,
                                           fused: Bool = true) {
        let d = codec.headDim
        let x = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { x.deallocate() }
        for j in 0..<tokenCount {
            codec.decodeReference(rows + j * codec.rowByteCount, into: x)
            for r in 0..<rowCount {
                let wr = w[r * stride + j]
                if fused {
                    for i in 0..<d { out[r * d + i] = out[r * d + i].addingProduct(wr, x[i]) }
                } else {
                    for i in 0..<d { out[r * d + i] = out[r * d + i] + wr * x[i] }
                }
            }
        }
    }
}
