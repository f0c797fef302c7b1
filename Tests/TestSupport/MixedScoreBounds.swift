import KVQuantization

/// The analytic score bounds of mixed-width per-channel key pages (`MixedChannelwiseKeyCodec`),
/// shared by the codec's tests and the store's attention checks.
extension MixedChannelwiseKeyCodec {
    /// Per segment (in segment order) of the key in `slot` of a page of `tokenCount` tokens, against
    /// the query row `q` (`headDim` values, channel order), in FP64 with the parameters as stored:
    /// the exact score `S_k = scale · Σ_c q_c·(zero_c + scale_c·code_c)` and the decomposed
    /// magnitude `M_k = Σ_c |q_c|·(scale_c·code_c + |zero_c|)` over the segment's channels.
    public func segmentTerms(_ q: UnsafePointer<Float>, slot: Int, tokenCount n: Int, codes: UnsafeRawPointer,
                             params: UnsafeRawPointer, scale: Float) -> [(exact: Double, magnitude: Double)] {
        segments.map { s in
            let row = codes + n * s.rowOffset + slot * s.codec.rowByteCount, p = params + 4 * s.start
            var exact = 0.0, magnitude = 0.0
            for i in 0..<s.codec.headDim {
                let a = s.codec.parameters(ofChannel: i, in: p), qc = Double(q[channels[s.start + i]])
                let code = Double(s.codec.code(at: i, in: row)), sc = Double(a.scale), z = Double(a.zero)
                exact += qc * (z + sc * code)
                magnitude += abs(qc) * (sc * code + abs(z))
            }
            return (Double(scale) * exact, magnitude)
        }
    }

    /// The exact score `Σ_k S_k` (FP64) of `segmentTerms`.
    public func exactScore(_ q: UnsafePointer<Float>, slot: Int, tokenCount n: Int, codes: UnsafeRawPointer,
                           params: UnsafeRawPointer, scale: Float) -> Double {
        segmentTerms(q, slot: slot, tokenCount: n, codes: codes, params: params, scale: scale).reduce(0) { $0 + $1.exact }
    }

    /// A bound on |score − S| (S = `exactScore`) for the score `scores` computes (`reference: false`)
    /// or `scoresReference` computes (`reference: true`), derived from the contracts the codec's
    /// documentation names, with u = 2⁻²⁴ and γₙ = n·u/(1 − n·u):
    ///
    /// - segment k of m channels scored in FP32 (`PageKernels.scoresChannelwise`,
    ///   `scoresChannelwiseInt3`, and every segment of the scalar reference, whose
    ///   `ChannelwiseKeyCodec.dotReference` rounds m + 2 times per term chain): the dot is within
    ///   γ_{m+4}·M_k of the exact code-space dot, and the product by `scale` rounds once more:
    ///   B_k = scale·γ_{m+4}·M_k·(1 + u) + u·|S_k|;
    /// - segment k scored in the integer domain (`KeyScoring.channelwiseVNNI`, the fast path only):
    ///   B_k = `PageKernels.channelwiseVNNIErrorBound` of that segment (scale included);
    /// - the K segment scores s_k (|s_k| ≤ |S_k| + B_k) are added left to right: K − 1 roundings,
    ///   at most γ_{K−1}·Σ_k |s_k|.
    ///
    /// So |score − S| ≤ Σ_k B_k + γ_{K−1}·Σ_k (|S_k| + B_k).
    ///
    /// The fused kernel (`fusedScoring`, fast path only) is one per-channel FP32 dot over all d stored
    /// channels, so its bound is the FP32 one above for the whole head: scale·γ_{d+4}·Σ_k M_k·(1 + u) + u·|Σ_k S_k|.
    public func scoreErrorBound(_ q: UnsafePointer<Float>, slot: Int, tokenCount n: Int, codes: UnsafeRawPointer,
                                params: UnsafeRawPointer, scale: Float, reference: Bool = false) -> Double {
        let u = 0x1p-24
        func gamma(_ k: Int) -> Double { Double(k) * u / (1 - Double(k) * u) }
        let terms = segmentTerms(q, slot: slot, tokenCount: n, codes: codes, params: params, scale: scale)
        if !reference && fusedScoring {
            let exact = terms.reduce(0) { $0 + $1.exact }, magnitude = terms.reduce(0) { $0 + $1.magnitude }
            return Double(scale) * gamma(headDim + 4) * magnitude * (1 + u) + u * abs(exact)
        }
        var total = 0.0, mass = 0.0
        withUnsafeTemporaryAllocation(of: Float.self, capacity: largestSegment) { buffer in
            let g = buffer.baseAddress!
            for (k, s) in segments.enumerated() {
                let m = s.codec.headDim
                let b: Double
                if !reference, s.scoring == .channelwiseVNNI {
                    for i in 0..<m { g[i] = q[channels[s.start + i]] }
                    b = PageKernels.channelwiseVNNIErrorBound(s.codec, g, row: codes + n * s.rowOffset + slot * s.codec.rowByteCount,
                                                              params: params + 4 * s.start, scale: scale)
                } else {
                    b = Double(scale) * gamma(m + 4) * terms[k].magnitude * (1 + u) + u * abs(terms[k].exact)
                }
                total += b
                mass += abs(terms[k].exact) + b
            }
        }
        return total + gamma(segments.count - 1) * mass
    }
}
