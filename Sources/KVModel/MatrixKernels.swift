import Foundation

/// The element-wise kernels of the forward pass: RMSNorm, SiLU. (Matrix products: `MatrixProducts`.)
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

    /// x·σ(x).
    @inline(__always) static func silu(_ x: Float) -> Float { x / (1 + exp(-x)) }

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

    /// GELU, tanh form (Gemma's `gelu_pytorch_tanh`, ggml's `gelu`): x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    @inline(__always) static func geluTanh(_ x: Float) -> Float {
        0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    }
}
