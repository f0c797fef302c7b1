import Foundation
import KVQuantization

/// The element-wise kernels of the forward pass: RMSNorm, RoPE, the gated activations. (Matrix products: `MatrixProducts`.)
enum MatrixKernels {
    /// RMSNorm of each of the `count` rows of `x` (`n` wide), times `weight`: x·w / √(mean(x²) + ε)
    /// (each value fl(fl(x·inv)·w), eight lanes at a time: the same bits as element by element).
    static func rmsNorm(_ x: [Float], count: Int, weight: [Float], epsilon: Float) -> [Float] {
        let n = weight.count
        precondition(x.count == count * n, "MatrixKernels.rmsNorm: \(x.count) values for \(count) rows of \(n)")
        return [Float](unsafeUninitializedCapacity: x.count) { y, initialized in
            x.withUnsafeBufferPointer { xb in
                weight.withUnsafeBufferPointer { wb in
                    let w = UnsafeRawPointer(wb.baseAddress!), out = UnsafeMutableRawPointer(y.baseAddress!)
                    for t in 0..<count {
                        let row = xb.baseAddress! + t * n
                        let ms = sumOfSquares(row, n) / Float(n)
                        let inv = 1 / (ms + epsilon).squareRoot()
                        let r = UnsafeRawPointer(row)
                        var i = 0
                        while i + 8 <= n {
                            let v = r.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * inv
                                * w.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                            out.storeBytes(of: v, toByteOffset: 4 * (t * n + i), as: SIMD8<Float>.self)
                            i += 8
                        }
                        while i < n { y[t * n + i] = row[i] * inv * wb[i]; i += 1 }
                    }
                }
            }
            initialized = x.count
        }
    }

    /// Σ a[i]² with SIMD8 accumulation and a scalar tail.
    @inline(__always) static func sumOfSquares(_ a: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        let ar = UnsafeRawPointer(a)
        while i + 8 <= n {
            let v = ar.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            acc += v * v
            i += 8
        }
        var s = acc.sum()
        while i < n { s += a[i] * a[i]; i += 1 }
        return s
    }

    /// `[outer][inner][d]` → `[inner][outer][d]`.
    static func transpose(_ x: [Float], outer: Int, inner: Int, d: Int) -> [Float] {
        var y = [Float](repeating: 0, count: x.count)
        for o in 0..<outer {
            for i in 0..<inner {
                let src = (o * inner + i) * d, dst = (i * outer + o) * d
                for k in 0..<d { y[dst + k] = x[src + k] }
            }
        }
        return y
    }

    /// θ^(−2j/D) for j < D/2, in Double.
    static func inverseFrequencies(theta: Float, headDim d: Int) -> [Double] {
        (0..<(d / 2)).map { j in pow(Double(theta), -2 * Double(j) / Double(d)) }
    }

    /// cos and sin of (first + t)·f_j, `[t][j]` for the inverse frequencies f, computed in Double.
    static func ropeTables(first: Int, count: Int, inverseFrequencies: [Double]) -> ([Float], [Float]) {
        let half = inverseFrequencies.count
        var c = [Float](repeating: 0, count: count * half), s = c
        for t in 0..<count {
            for j in 0..<half {
                let angle = Double(first + t) * inverseFrequencies[j]
                c[t * half + j] = Float(cos(angle))
                s[t * half + j] = Float(sin(angle))
            }
        }
        return (c, s)
    }

    /// Rotate-half RoPE on `[token][head][D]`: (x_j, x_{j+D/2}) ↦ (x_j·cos − x_{j+D/2}·sin, x_{j+D/2}·cos + x_j·sin)
    /// (products and sums rounded separately, eight lanes at a time: the same bits as element by element).
    static func applyRoPE(_ x: inout [Float], heads: Int, headDim d: Int, count: Int, cosines: [Float], sines: [Float]) {
        let half = d / 2
        precondition(x.count == count * heads * d && cosines.count >= count * half && sines.count >= count * half,
                     "MatrixKernels.applyRoPE: \(x.count) values for \(count) tokens × \(heads) heads × \(d)")
        cosines.withUnsafeBufferPointer { cb in
            sines.withUnsafeBufferPointer { sb in
                x.withUnsafeMutableBufferPointer { xb in
                    let cr = UnsafeRawPointer(cb.baseAddress!), sr = UnsafeRawPointer(sb.baseAddress!)
                    let xr = UnsafeMutableRawPointer(xb.baseAddress!)
                    for t in 0..<count {
                        for h in 0..<heads {
                            let base = (t * heads + h) * d
                            var j = 0
                            while j + 8 <= half {
                                let a = xr.loadUnaligned(fromByteOffset: 4 * (base + j), as: SIMD8<Float>.self)
                                let b = xr.loadUnaligned(fromByteOffset: 4 * (base + j + half), as: SIMD8<Float>.self)
                                let c = cr.loadUnaligned(fromByteOffset: 4 * (t * half + j), as: SIMD8<Float>.self)
                                let s = sr.loadUnaligned(fromByteOffset: 4 * (t * half + j), as: SIMD8<Float>.self)
                                xr.storeBytes(of: a * c - b * s, toByteOffset: 4 * (base + j), as: SIMD8<Float>.self)
                                xr.storeBytes(of: b * c + a * s, toByteOffset: 4 * (base + j + half), as: SIMD8<Float>.self)
                                j += 8
                            }
                            while j < half {
                                let a = xb[base + j], b = xb[base + j + half]
                                let c = cb[t * half + j], s = sb[t * half + j]
                                xb[base + j] = a * c - b * s
                                xb[base + j + half] = b * c + a * s
                                j += 1
                            }
                        }
                    }
                }
            }
        }
    }

    /// The activation of a gated MLP: SiLU (Llama) or GELU, tanh form (Gemma's `gelu_pytorch_tanh`, ggml's `gelu`).
    enum GatedActivation { case silu, geluTanh }

    /// gate[i] ← act(gate[i])·up[i], with act(x) = x·σ(z): z = x (SiLU), z = 2·√(2/π)·(x + 0.044715·x³)
    /// (GELU-tanh, as ½(1 + tanh u) = σ(2u)); σ(z) = (z ≥ 0 ? 1 : t)/(1 + t) with t = exp(−|z|) by
    /// `PageKernels.exp` (≤ 2 ulp for arguments ≤ 0, bit-identical on every kernel path, so the
    /// result is too); the element-wise steps are the same Swift operations, eight lanes at a time.
    ///
    /// Error: act(x) within (10 + 6·|z|·σ(−z))·ε·|act(x)| + |x|·2⁻¹²⁶ (ε = 2⁻²⁴) of the exact function
    /// of the FP32 x: t's 4ε, the sum and quotient's 2ε, the products with x and up 2ε, and z's five
    /// roundings (γ₅, GELU only), which move ln σ by |z|·σ(−z)·γ₅ (≤ 0.28·γ₅ for z > 0, about |z|·γ₅
    /// for z ≪ 0, where act is tiny); the last term t's underflow (subnormal for z < −87, 0 below
    /// −103). NaN in x gives NaN.
    /// - Complexity: O(n), in blocks of 1024 through a stack-sized scratch.
    static func applyGated(_ gate: inout [Float], _ up: [Float], _ activation: GatedActivation) {
        precondition(gate.count == up.count, "MatrixKernels.applyGated: \(gate.count) gates and \(up.count) ups")
        let n = gate.count, block = 1024
        let e = UnsafeMutablePointer<Float>.allocate(capacity: block), t = UnsafeMutablePointer<Float>.allocate(capacity: block)
        defer { e.deallocate(); t.deallocate() }
        let c = Float(2 * 0.7978845608028654), k: Float = 0.044715
        @inline(__always) func z(_ x: SIMD8<Float>) -> SIMD8<Float> {
            activation == .silu ? x : c * (x + k * (x * x * x))
        }
        @inline(__always) func z1(_ x: Float) -> Float { activation == .silu ? x : c * (x + k * (x * x * x)) }
        gate.withUnsafeMutableBufferPointer { gb in
            up.withUnsafeBufferPointer { ub in
                let g = UnsafeMutableRawPointer(gb.baseAddress!), u = UnsafeRawPointer(ub.baseAddress!)
                var start = 0
                while start < n {
                    let m = min(block, n - start)
                    var i = 0
                    while i + 8 <= m {
                        let x = g.loadUnaligned(fromByteOffset: 4 * (start + i), as: SIMD8<Float>.self)
                        UnsafeMutableRawPointer(e).storeBytes(of: { $0.lanewiseMin(-$0) }(z(x)), toByteOffset: 4 * i, as: SIMD8<Float>.self)
                        i += 8
                    }
                    while i < m { e[i] = -abs(z1(gb[start + i])); i += 1 }
                    PageKernels.exp(e, into: t, count: m)
                    i = 0
                    while i + 8 <= m {
                        let x = g.loadUnaligned(fromByteOffset: 4 * (start + i), as: SIMD8<Float>.self)
                        let tv = UnsafeRawPointer(t).loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                        let num = SIMD8<Float>(repeating: 1).replacing(with: tv, where: .!(z(x) .>= 0))
                        let y = x * (num / (1 + tv)) * u.loadUnaligned(fromByteOffset: 4 * (start + i), as: SIMD8<Float>.self)
                        g.storeBytes(of: y, toByteOffset: 4 * (start + i), as: SIMD8<Float>.self)
                        i += 8
                    }
                    while i < m {
                        let x = gb[start + i], tv = t[i]
                        gb[start + i] = x * ((z1(x) >= 0 ? 1 : tv) / (1 + tv)) * ub[start + i]
                        i += 1
                    }
                    start += m
                }
            }
        }
    }
}
