import KVQuantization

extension WeightKernels {
    /// The FP32 dot product every FP32 weight kernel computes, written plainly: lanes l = k mod 8
    /// accumulate a_l = fma(w_k, x_k, a_l) in k order over k < n & ~7, then s = `sum8`(a), then
    /// s = fma(w_k, x_k, s) for the tail k ≥ n & ~7.
    ///
    /// Error: |s − Σ w_k·x_k| ≤ γ_{n/8 + 3}·Σ|w_k·x_k| with γ_m = m·ε/(1 − m·ε), ε = 2⁻²⁴ (n/8 fused
    /// steps per lane, three levels of the lane sum; the tail's steps are fewer than 8).
    static func dotReference(_ w: [Float], _ x: [Float]) -> Float {
        precondition(w.count == x.count, "WeightKernels.dotReference: \(w.count) weights and \(x.count) values")
        let n8 = w.count & ~7
        var lanes = [Float](repeating: 0, count: 8)
        for k in 0..<n8 { lanes[k % 8] = lanes[k % 8].addingProduct(w[k], x[k]) }
        var s = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
        for k in n8..<w.count { s = s.addingProduct(w[k], x[k]) }
        return s
    }

    /// The decode product of one row of `type` blocks (`raw`, `x.codes.count` values) with 16-bit
    /// activations, written plainly. Per piece b of 32 values (`GGUFDequantizer.piece`: codes q,
    /// scales a, offset c), half h of 16 values and int32 lane l < 8:
    ///
    ///     I_hl = q_{16h+2l}·code_{16h+2l} + q_{16h+2l+1}·code_{16h+2l+1}      (exact)
    ///     acc_l = fma(fl(a·dx_b), I_0l + I_1l, acc_l)     (|I_0l + I_1l| ≤ 4·128·32767 < 2²⁴: exact in FP32)
    ///         Q6_K (a scale per half): acc_l = fma(fl(a_1·dx_b), I_1l, fma(fl(a_0·dx_b), I_0l, acc_l))
    ///     off = fma(c_b, sum_b, off)                      (affine types only)
    ///     y = sum8(acc) + off                             (pieces b in order)
    ///
    /// Error against Σ_j w_j·x_j (w_j the dequantised weights, x the unquantised activations):
    /// with ŵ_j = a_j·q_j, at most Σ_j |ŵ_j|·(dx_b/2 + 3ε|x_j|) from the activations' rounding
    /// (`ActivationBlocks`), plus 2ε·Σ_j (|ŵ_j| + |c_j|)·|x_j| from the weights' own FP32 rounding,
    /// plus γ_{2B+5}·(Σ_b Σ_l |a·dx_b·I_bl| + Σ_b |c_b|·(|sum_b| + γ_35·Σ_j|x_j|)) from the FP32
    /// sums (B pieces, up to two fused steps each; the sums' own error γ_35 from 32 additions and
    /// the lane sum). The first term dominates: about 2⁻¹⁶ of the block's largest activation times
    /// Σ|ŵ|, against FP32's n/8·ε·Σ|w·x|.
    static func quantizedDotReference(_ raw: UnsafeRawBufferPointer, type: GGMLType, x: ActivationBlocks) -> Float {
        precondition(type.isBlockQuantized && x.codes.count % type.blockSize == 0, "WeightKernels.quantizedDotReference: \(type) and \(x.codes.count) values")
        var acc = [Float](repeating: 0, count: 8)
        var off: Float = 0
        for b in 0..<(x.codes.count / 32) {
            let piece = GGUFDequantizer.piece(raw, type: type, index: b)
            for l in 0..<8 {
                let dots = (0..<2).map { h in
                    (0..<2).reduce(Int32(0)) { $0 + piece.codes[16 * h + 2 * l + $1] * Int32(x.codes[32 * b + 16 * h + 2 * l + $1]) }
                }
                if type == .q6_K {
                    acc[l] = acc[l].addingProduct(piece.lowScale * x.scales[b], Float(dots[0]))
                    acc[l] = acc[l].addingProduct(piece.highScale * x.scales[b], Float(dots[1]))
                } else {
                    acc[l] = acc[l].addingProduct(piece.lowScale * x.scales[b], Float(dots[0] + dots[1]))
                }
            }
            if let c = piece.offset { off = off.addingProduct(c, x.sums[b]) }
        }
        return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + off
    }

    /// The prefill product of one row (its `pieces`, `GGUFDequantizer.piece` of each 32 values) with
    /// one 16-bit-quantised vector (`ActivationBlocks.quantize`: `codes`, and per piece b `scales[b]`
    /// = dx_b, `sums[b]`), written plainly. Per piece b in order:
    ///
    ///     I_b = Σ_j q_j·code_j                                  (exact in Int32: |I| ≤ 32·128·32767 < 2³¹)
    ///     acc = fma(fl(I_b), fl(a·dx_b), acc)                   (Q6_K: per half, I_b0 with a_0, then I_b1 with a_1)
    ///     off = fma(c_b, sums[b], off)                          (affine types)
    ///     y = acc + off
    ///
    /// Error against Σ_j w_j·x_j: the activations' rounding as in `quantizedDotReference` (at most
    /// Σ_j |ŵ_j|·(dx_b/2 + 3ε|x_j|), about 2⁻¹⁶ of a block's largest activation times Σ|ŵ|), the
    /// weights' FP32 rounding 2ε·Σ_j (|ŵ_j| + |c_j|)·|x_j|, plus fl(I_b) (ε·|I_b|) and the FP32 sums
    /// γ_{2B+2}·(Σ_b |a·dx_b·I_b| + Σ_b |c_b|·(|sums_b| + γ_35·Σ_j|x_j|)) over B pieces.
    static func quantizedPanelDotReference(_ pieces: [WeightPiece], codes: UnsafePointer<Int16>, scales: UnsafePointer<Float>,
                                           sums: UnsafePointer<Float>, splitsHalves: Bool) -> Float {
        var acc: Float = 0, off: Float = 0
        for (b, piece) in pieces.enumerated() {
            var half = [Int32](repeating: 0, count: 2)
            for j in 0..<32 { half[j / 16] += piece.codes[j] * Int32(codes[32 * b + j]) }
            if splitsHalves {
                acc = acc.addingProduct(Float(half[0]), piece.lowScale * scales[b])
                acc = acc.addingProduct(Float(half[1]), piece.highScale * scales[b])
            } else {
                acc = acc.addingProduct(Float(half[0] + half[1]), piece.lowScale * scales[b])
            }
            if let c = piece.offset { off = off.addingProduct(c, sums[b]) }
        }
        return acc + off
    }
}
