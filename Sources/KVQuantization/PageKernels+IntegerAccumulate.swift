import CKVKernels

extension PageKernels {
    // MARK: Integer-domain accumulate

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
    ///
    /// The C kernel where `KernelSet.current` has integer values and the shape is one of
    /// `runsIntegerAccumulateKernel` (INT4 or INT8 groups of whole code blocks); else the reference
    /// twin itself, so the result is the same on every CPU. (The read path uses it for INT4 values
    /// only: see `ValueAccumulation`.)
    ///
    /// - Precondition: grouped rows whose head dim is a multiple of the group size.
    public static func accumulateInteger(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                         rows: UnsafeRawPointer, tokenCount: Int, into out: UnsafeMutablePointer<Float>) {
        guard case .grouped(let width, let g) = codec.format else { preconditionFailure("PageKernels.accumulateInteger: grouped rows only") }
        #if arch(x86_64)
        if runsIntegerAccumulateKernel(codec.format, headDim: codec.headDim) {
            return kvk_accumulate_integer(Int32(width.bits), g, w, rowCount, stride, tokenCount, rows.assumingMemoryBound(to: UInt8.self),
                                          codec.rowByteCount, codec.codeByteCount, codec.headDim, out)
        }
        #endif
        accumulateIntegerReference(codec, weights: w, rowCount: rowCount, stride: stride, rows: rows, tokenCount: tokenCount, into: out)
    }

    /// Scalar reference of `accumulateInteger` (its definition; see the C header for the formula).
    public static func accumulateIntegerReference(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                                  rows: UnsafeRawPointer, tokenCount n: Int, into out: UnsafeMutablePointer<Float>) {
        guard case .grouped(_, let g) = codec.format else { preconditionFailure("PageKernels.accumulateIntegerReference: grouped rows only") }
        let d = codec.headDim, G = d / g
        precondition(d % g == 0, "PageKernels.accumulateIntegerReference: head dim \(d) is not a multiple of the group size \(g)")
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
