import Foundation

/// The element-wise kernels of the forward pass: RMSNorm, SiLU. (Matrix products: `MatrixProducts`.)
enum MatrixKernels {
    /// RMSNorm of each of the `count` rows of `x` (`n` wide), times `weight`: x·w / √(mean(x²) + ε).
    static func rmsNorm(_ x: [Float], count: Int, weight: [Float], epsilon: Float) -> [Float] {
        let n = weight.count
        var y = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { xb in
            for t in 0..<count {
                let row = xb.baseAddress! + t * n
                let ms = sumOfSquares(row, n) / Float(n)
                let inv = 1 / (ms + epsilon).squareRoot()
                for i in 0..<n { y[t * n + i] = row[i] * inv * weight[i] }
            }
        }
        return y
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
}
