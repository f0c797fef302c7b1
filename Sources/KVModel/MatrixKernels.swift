import KVQuantization
import Dispatch
import Foundation

/// A pointer that threads may share because each writes a disjoint part of it.
struct UnsafeSharedPointer<T>: @unchecked Sendable {
    let base: UnsafeMutablePointer<T>
}

/// A dense FP32 weight matrix `[rows][columns]` (row `o` produces output `o`), applied to a batch of
/// input vectors on several threads.
struct DenseMatrix: Sendable {
    let rows: Int
    let columns: Int
    let values: [Float]

    init(rows: Int, columns: Int, values: [Float]) {
        precondition(values.count == rows * columns, "DenseMatrix: \(values.count) values for \(rows)×\(columns)")
        self.rows = rows
        self.columns = columns
        self.values = values
    }

    /// `y[t][o] = Σ_i W[o][i]·x[t][i]` for `count` inputs `x` (`[count][columns]`); returns `[count][rows]`.
    ///
    /// Rows are split in blocks over `threadCount` threads; each output is one thread's sum in a
    /// fixed order, so results do not depend on the thread count. Error: FP32 dot products, i.e.
    /// within `columns · ε · Σ|W·x|` of the exact sum.
    func apply(_ x: [Float], count: Int, threadCount: Int) -> [Float] {
        precondition(x.count == count * columns, "DenseMatrix.apply: \(x.count) inputs for \(count)×\(columns)")
        var y = [Float](repeating: 0, count: count * rows)
        let rowBlock = 16
        let blocks = (rows + rowBlock - 1) / rowBlock
        y.withUnsafeMutableBufferPointer { yb in
            let out = UnsafeSharedPointer(base: yb.baseAddress!)
            values.withUnsafeBufferPointer { wb in
                x.withUnsafeBufferPointer { xb in
                    let w = UnsafeSharedPointer(base: UnsafeMutablePointer(mutating: wb.baseAddress!))
                    let xin = UnsafeSharedPointer(base: UnsafeMutablePointer(mutating: xb.baseAddress!))
                    let (r, c) = (rows, columns)
                    let work: @Sendable (Int) -> Void = { b in
                        let start = b * rowBlock, end = min(r, start + rowBlock)
                        MatrixKernels.multiply(w.base + start * c, rows: end - start, columns: c, stride: r,
                                               x: xin.base, count: count, into: out.base + start)
                    }
                    let threads = max(1, min(threadCount, blocks))
                    if threads == 1 { for b in 0..<blocks { work(b) } } else {
                        // Interleave blocks over threads so each thread gets a similar share.
                        DispatchQueue.concurrentPerform(iterations: threads) { t in
                            var b = t
                            while b < blocks { work(b); b += threads }
                        }
                    }
                }
            }
        }
        return y
    }
}

/// The numeric kernels of the forward pass: a register-tiled matrix product, RMSNorm, SiLU.
enum MatrixKernels {
    /// `y[t·stride + o] = W[o]·x[t]` for `rows` rows of `w` (row-major, `columns` wide) and `count`
    /// inputs. Tiles of 4 rows × 2 inputs with SIMD8 accumulators, then scalar tails.
    static func multiply(_ w: UnsafePointer<Float>, rows: Int, columns c: Int, stride: Int,
                         x: UnsafePointer<Float>, count: Int, into y: UnsafeMutablePointer<Float>) {
        let c8 = c & ~7
        let wr = UnsafeRawPointer(w), xr = UnsafeRawPointer(x)
        @inline(__always) func load(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
            p.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
        }
        var o = 0
        while o + 4 <= rows {
            let w0 = o * c, w1 = w0 + c, w2 = w1 + c, w3 = w2 + c
            var t = 0
            while t + 2 <= count {
                let x0 = t * c, x1 = x0 + c
                var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a10 = SIMD8<Float>(), a11 = SIMD8<Float>()
                var a20 = SIMD8<Float>(), a21 = SIMD8<Float>(), a30 = SIMD8<Float>(), a31 = SIMD8<Float>()
                var i = 0
                while i < c8 {
                    let u0 = load(xr, x0 + i), u1 = load(xr, x1 + i)
                    let v0 = load(wr, w0 + i), v1 = load(wr, w1 + i), v2 = load(wr, w2 + i), v3 = load(wr, w3 + i)
                    a00 += v0 * u0; a01 += v0 * u1
                    a10 += v1 * u0; a11 += v1 * u1
                    a20 += v2 * u0; a21 += v2 * u1
                    a30 += v3 * u0; a31 += v3 * u1
                    i += 8
                }
                var s00 = a00.sum(), s01 = a01.sum(), s10 = a10.sum(), s11 = a11.sum()
                var s20 = a20.sum(), s21 = a21.sum(), s30 = a30.sum(), s31 = a31.sum()
                while i < c {
                    let u0 = x[x0 + i], u1 = x[x1 + i]
                    s00 += w[w0 + i] * u0; s01 += w[w0 + i] * u1
                    s10 += w[w1 + i] * u0; s11 += w[w1 + i] * u1
                    s20 += w[w2 + i] * u0; s21 += w[w2 + i] * u1
                    s30 += w[w3 + i] * u0; s31 += w[w3 + i] * u1
                    i += 1
                }
                let y0 = y + t * stride + o, y1 = y0 + stride
                y0[0] = s00; y0[1] = s10; y0[2] = s20; y0[3] = s30
                y1[0] = s01; y1[1] = s11; y1[2] = s21; y1[3] = s31
                t += 2
            }
            while t < count {
                let x0 = t * c
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                var i = 0
                while i < c8 {
                    let u = load(xr, x0 + i)
                    a0 += load(wr, w0 + i) * u; a1 += load(wr, w1 + i) * u
                    a2 += load(wr, w2 + i) * u; a3 += load(wr, w3 + i) * u
                    i += 8
                }
                var s0 = a0.sum(), s1 = a1.sum(), s2 = a2.sum(), s3 = a3.sum()
                while i < c {
                    let u = x[x0 + i]
                    s0 += w[w0 + i] * u; s1 += w[w1 + i] * u; s2 += w[w2 + i] * u; s3 += w[w3 + i] * u
                    i += 1
                }
                y[t * stride + o] = s0; y[t * stride + o + 1] = s1; y[t * stride + o + 2] = s2; y[t * stride + o + 3] = s3
                t += 1
            }
            o += 4
        }
        while o < rows {
            for t in 0..<count { y[t * stride + o] = dot(w + o * c, x + t * c, c) }
            o += 1
        }
    }

    /// Σ a[i]·b[i] with SIMD8 accumulation and a scalar tail.
    @inline(__always) static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        let ar = UnsafeRawPointer(a), br = UnsafeRawPointer(b)
        while i + 8 <= n {
            acc += ar.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) * br.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        var s = acc.sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// Scalar reference of `multiply`: one plain dot product per output.
    static func multiplyReference(_ w: [Float], rows: Int, columns: Int, x: [Float], count: Int) -> [Float] {
        var y = [Float](repeating: 0, count: rows * count)
        for t in 0..<count {
            for o in 0..<rows {
                var s: Float = 0
                for i in 0..<columns { s += w[o * columns + i] * x[t * columns + i] }
                y[t * rows + o] = s
            }
        }
        return y
    }

    /// RMSNorm of each of the `count` rows of `x` (`n` wide), times `weight`: x·w / √(mean(x²) + ε).
    static func rmsNorm(_ x: [Float], count: Int, weight: [Float], epsilon: Float) -> [Float] {
        let n = weight.count
        var y = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { xb in
            for t in 0..<count {
                let row = xb.baseAddress! + t * n
                let ms = dot(row, row, n) / Float(n)
                let inv = 1 / (ms + epsilon).squareRoot()
                for i in 0..<n { y[t * n + i] = row[i] * inv * weight[i] }
            }
        }
        return y
    }

    /// x·σ(x).
    @inline(__always) static func silu(_ x: Float) -> Float { x / (1 + exp(-x)) }
}
