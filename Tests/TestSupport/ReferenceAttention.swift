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
    ///
    /// Rows the store keeps rotated (`rotatedKeys`, `rotatedValues`: the store holds Rkⱼ, Rvⱼ and the
    /// row reader returns fl(Rᵀ·stored)) are read in rotated coordinates, so, with ρ = γ_{L+3}
    /// (L = log₂d, `HadamardRotation.roundingCoefficient`: |fl(Rx)ᵢ − (Rx)ᵢ| ≤ ρ‖x‖₁/√d) and
    /// f = 1/(1 − ρ√d) (so that ‖stored‖₂ ≤ f·‖reader's row‖₂):
    /// - a rotated key's FP32 dot is against fl(Rq), its magnitude bounded by ‖q‖₂(1 + ρ√d)·f‖k̂ⱼ‖₂
    ///   (Cauchy–Schwarz) instead of Σᵢ|qᵢk̂ⱼᵢ|; rotating q and the reader's un-rotation each move the
    ///   score by at most ρ‖q‖₁·f‖k̂ⱼ‖₂: Δⱼ gains scale·2ρ‖q‖₁f‖k̂ⱼ‖₂;
    /// - a rotated value's accumulation error, bounded element by element in rotated coordinates,
    ///   reaches every output element through Rᵀ as (1/√d)·Σₖ, i.e. at most the same ε times
    ///   wⱼ·‖stored‖₁/√d ≤ wⱼ·f‖v̂ⱼ‖₂; the final un-rotation and the reader's add 2ρ·wⱼf‖v̂ⱼ‖₂, the
    ///   sum of the two outputs u: per element, (ε + 2ρ + u)·Σ_rotated wⱼf‖v̂ⱼ‖₂ replaces
    ///   ε·Σ wⱼ|v̂ⱼᵢ| for those rows (and plain rows gain u). Their integer-accumulation term (where it
    ///   runs) is computed on the rotated rows (`valueRotation` applied to the reader's rows) and
    ///   spread the same way, (1/√d)·Σₖ.
    public init(q: [Float], keys: [Float], values: [Float], visible: [Bool], scale: Float, pageCount: Int = 1,
                scoreErrors: [Double]? = nil, valueFormats: [StorageFormat]? = nil,
                rotatedKeys: [Bool]? = nil, rotatedValues: [Bool]? = nil, valueRotation: HadamardRotation? = nil) {
        let d = q.count, n = visible.count
        precondition(keys.count == n * d && values.count == n * d && (scoreErrors?.count ?? n) == n)
        let u = 0x1p-24
        func gamma(_ k: Int) -> Double { Double(k) * u / (1 - Double(k) * u) }
        let rho = gamma(d.trailingZeroBitCount + 3), root = Double(d).squareRoot(), f = 1 / (1 - rho * root)
        func norm2(_ x: ArraySlice<Float>) -> Double { x.reduce(0) { $0 + Double($1) * Double($1) }.squareRoot() }
        let q2 = norm2(q[...]), q1 = q.reduce(0) { $0 + abs(Double($1)) }
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
            var rotation = 0.0
            if rotatedKeys?[j] == true {
                let k2 = f * norm2(keys[(j * d)..<((j + 1) * d)])
                mag = max(mag, q2 * (1 + rho * root) * k2)
                rotation = Double(scale) * 2 * rho * q1 * k2
            }
            delta = max(delta, Double(scale) * gamma(d + 4) * mag + u * abs(s[j]) + rotation + (scoreErrors?[j] ?? 0))
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
        var rotatedMass = 0.0
        for j in 0..<n where visible[j] {
            let rotated = rotatedValues?[j] == true
            if rotated { rotatedMass += weights[j] * f * norm2(values[(j * d)..<((j + 1) * d)]) }
            for i in 0..<d {
                output[i] += weights[j] * Double(values[j * d + i])
                if !rotated { bound[i] += weights[j] * abs(Double(values[j * d + i])) }
            }
        }
        for i in 0..<d { bound[i] = bound[i] * (eps + u) + rotatedMass * (eps + 2 * rho + u) }
        guard let formats = valueFormats else { return }
        precondition(formats.count == n, "ReferenceAttention: one value format per row")
        var maxWS = [Double](repeating: 0, count: d), codeSum = maxWS, terms = maxWS
        var rotatedMaxWS = maxWS, rotatedCodeSum = maxWS, rotatedTerms = maxWS
        for j in 0..<n where visible[j] && ValueAccumulation(valueFormat: formats[j], headDim: d) == .integer {
            let codec = try! RowCodec(formats[j], headDim: d), groupSize = d / codec.groupCount
            let rotated = rotatedValues?[j] == true
            var v = Array(values[(j * d)..<((j + 1) * d)])
            if rotated, let r = valueRotation { v = r.rotated(v) }
            let row = try! codec.encode(v.map { min(max($0, -65504), 65504) })
            row.withUnsafeBytes { r in
                for i in 0..<d {
                    let p = codec.parameters(ofGroup: i / groupSize, in: r.baseAddress!)
                    let s = Double(Float(Float16(bitPattern: p.scaleBits))), z = Double(Float(Float16(bitPattern: p.zeroBits)))
                    let c = Double(codec.code(at: i, in: r.baseAddress!))
                    if rotated {
                        rotatedMaxWS[i] = max(rotatedMaxWS[i], weights[j] * s)
                        rotatedCodeSum[i] += c
                        rotatedTerms[i] += weights[j] * (s * c + abs(z))
                    } else {
                        maxWS[i] = max(maxWS[i], weights[j] * s)
                        codeSum[i] += c
                        terms[i] += weights[j] * (s * c + abs(z))
                    }
                }
            }
        }
        func integerTerm(_ i: Int, _ m: [Double], _ c: [Double], _ t: [Double]) -> Double {
            (0.5 + 0x1p-12) / (127 * 254) * m[i] * c[i] * (1 + eps) + gamma(n + pageCount + 8) * t[i]
        }
        // Rotated rows' terms reach every output element through Rᵀ: (1/√d)·Σₖ (with the
        // re-encoding of rotated-back rows a little off the stored codes, doubled for margin).
        let spread = (0..<d).reduce(0) { $0 + integerTerm($1, rotatedMaxWS, rotatedCodeSum, rotatedTerms) } / root * 2
        for i in 0..<d { bound[i] += integerTerm(i, maxWS, codeSum, terms) + spread }
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
