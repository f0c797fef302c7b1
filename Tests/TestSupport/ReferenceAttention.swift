import Foundation
import KVQuantization

/// Naive attention in FP64 for one query row over `n` key/value rows (`[n][d]`), the keys whose
/// index is in `visible` only: the ground truth the store's FP32 read path is held to.
public struct ReferenceAttention {
    /// The output (FP64).
    public var output: [Double]
    /// The softmax weight of every row (0 where not visible).
    public var weights: [Double]
    /// A bound on |FP32 output − output| per element, derived below.
    public var bound: [Double]

    /// - Parameters:
    ///   - q: the query (`d` values).
    ///   - keys, values: `[n][d]`, exactly the decoded rows the store reads.
    ///   - visible: which rows the query may see (causality).
    ///   - pageCount: pages the store visits (each adds an online-softmax rescaling).
    ///   - scoreErrors: per key row, a further bound on the store's score error beyond the FP32
    ///     dot (in score units, scale included): `PageKernels.channelwiseVNNIErrorBound` for keys
    ///     scored by the integer-domain VNNI kernel, else 0. It adds to Δⱼ below (the VNNI bound is
    ///     against the exact code-space score; the FP32 term still covers the decoded row's rounding).
    ///
    /// The bound, with u = 2⁻²⁴ and γₖ = k·u/(1 − k·u): each FP32 score sⱼ = fl(scale·fl(q·kⱼ))
    /// is within Δⱼ = scale·γ_{d+4}·Σᵢ|qᵢkⱼᵢ| + u·|sⱼ| (+ scoreErrorsⱼ) of the exact one (`RowCodec.dotErrorBound`),
    /// so each unnormalised weight exp(sⱼ − m) carries a relative error of at most
    /// e^{2Δ} − 1 + 4u (Δ = maxⱼ Δⱼ; the max cancels; exp and the subtraction round), the
    /// normaliser and the accumulation add γ_{n+p+4} relative each (p online-softmax rescalings of
    /// both), and the final division u. Relative error of a weighted mean of |v| with weights
    /// perturbed by a relative ε is ≤ 2ε, so per element
    ///
    ///     |ô − o| ≤ (2(e^{2Δ} − 1 + 4u) + 3γ_{n+p+d+8}) · Σⱼ wⱼ|vⱼ|
    ///
    /// Rows whose value format (`valueFormats`) the store accumulates in the integer domain
    /// (`ValueAccumulation(valueFormat:headDim:) == .integer`, the store's own choice) add, per element i of group g, the split residual of
    /// `PageKernels.accumulateInteger` in output units, (1/2 + 2⁻¹²)/(127·254)·maxⱼ(wⱼ·sⱼg)·Σⱼ cⱼᵢ
    /// over those rows (each block's σ1 is at most that maximum once the block's weights are
    /// rescaled to the final ones; × (1 + ε) for the weights' own error), and
    /// γ_{n+p+8}·Σⱼ wⱼ·(sⱼg·cⱼᵢ + |zⱼg|) for its roundings, which are relative to the
    /// decomposed terms rather than to |vⱼᵢ|. Scales and codes are recovered by re-encoding the
    /// decoded row (decode∘encode is a fixpoint of every grouped format).
    public init(q: [Float], keys: [Float], values: [Float], visible: [Bool], scale: Float, pageCount: Int = 1,
                scoreErrors: [Double]? = nil, valueFormats: [StorageFormat]? = nil) {
        let d = q.count, n = visible.count
        precondition(keys.count == n * d && values.count == n * d && (scoreErrors?.count ?? n) == n)
        let u = 0x1p-24
        func gamma(_ k: Int) -> Double { Double(k) * u / (1 - Double(k) * u) }
        var s = [Double](repeating: -.infinity, count: n)
        var delta = 0.0
        for j in 0..<n where visible[j] {
            var dot = 0.0, mag = 0.0
            for i in 0..<d {
                let p = Double(q[i]) * Double(keys[j * d + i])
                dot += p
                mag += abs(p)
            }
            s[j] = Double(scale) * dot
            delta = max(delta, Double(scale) * gamma(d + 4) * mag + u * abs(s[j]) + (scoreErrors?[j] ?? 0))
        }
        let m = s.max() ?? -.infinity
        weights = [Double](repeating: 0, count: n)
        output = [Double](repeating: 0, count: d)
        bound = [Double](repeating: 0, count: d)
        guard m > -.infinity else { return }
        var total = 0.0
        for j in 0..<n where visible[j] { weights[j] = exp(s[j] - m); total += weights[j] }
        for j in 0..<n { weights[j] /= total }
        let eps = 2 * (exp(2 * delta) - 1 + 4 * u) + 3 * gamma(n + pageCount + d + 8)
        for j in 0..<n where visible[j] {
            for i in 0..<d {
                output[i] += weights[j] * Double(values[j * d + i])
                bound[i] += weights[j] * abs(Double(values[j * d + i]))
            }
        }
        for i in 0..<d { bound[i] *= eps }
        guard let formats = valueFormats else { return }
        precondition(formats.count == n, "ReferenceAttention: one value format per row")
        var maxWS = [Double](repeating: 0, count: d), codeSum = maxWS, terms = maxWS
        for j in 0..<n where visible[j] && ValueAccumulation(valueFormat: formats[j], headDim: d) == .integer {
            let codec = try! RowCodec(formats[j], headDim: d), groupSize = d / codec.groupCount
            let row = try! codec.encode(Array(values[(j * d)..<((j + 1) * d)]))
            row.withUnsafeBytes { r in
                for i in 0..<d {
                    let p = codec.parameters(ofGroup: i / groupSize, in: r.baseAddress!)
                    let s = Double(Float(Float16(bitPattern: p.scaleBits))), z = Double(Float(Float16(bitPattern: p.zeroBits)))
                    let c = Double(codec.code(at: i, in: r.baseAddress!))
                    maxWS[i] = max(maxWS[i], weights[j] * s)
                    codeSum[i] += c
                    terms[i] += weights[j] * (s * c + abs(z))
                }
            }
        }
        for i in 0..<d {
            bound[i] += (0.5 + 0x1p-12) / (127 * 254) * maxWS[i] * codeSum[i] * (1 + eps) + gamma(n + pageCount + 8) * terms[i]
        }
    }
}

/// ‖a − b‖₂ / ‖b‖₂ (0 when both are zero).
public func relativeError(_ a: [Float], _ b: [Double]) -> Double {
    var num = 0.0, den = 0.0
    for i in a.indices {
        num += (Double(a[i]) - b[i]) * (Double(a[i]) - b[i])
        den += b[i] * b[i]
    }
    return den == 0 ? num.squareRoot() : (num / den).squareRoot()
}
