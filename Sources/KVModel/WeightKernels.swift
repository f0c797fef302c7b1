import CKVKernels
import Foundation
import KVQuantization

/// Which implementation of the weight kernels runs: the AVX2 C kernels (`matvec_avx2.c`), the same
/// with the AVX-512 VNNI prefill product (`avx512`), or Swift.
///
/// All compute the same bits (the arithmetic is defined once, by the twins in
/// `WeightKernels+Reference.swift`, fused multiply-adds included), so the path changes speed only.
/// `current` is the first of `available` (`avx512` when the CPU has AVX-512 F/BW/VL/DQ and VNNI,
/// else `avx2` when it has AVX2, FMA and F16C), unless `KVCRUSH_KERNELS` asks for `avx2` or
/// `portable` (Swift only).
enum WeightKernelPath: String, Sendable, Hashable, CaseIterable {
    case avx512
    case avx2
    case portable

    /// The paths this CPU runs (`portable` always), fastest first.
    static let available: [WeightKernelPath] = {
        #if arch(x86_64)
        let cpu = CPUFeatures.detected
        guard cpu.contains(.avx2) else { return [.portable] }
        return cpu.isSuperset(of: [.avx512, .avx512VNNI]) ? [.avx512, .avx2, .portable] : [.avx2, .portable]
        #else
        [.portable]
        #endif
    }()

    /// The path of this process: `KernelPath.current`'s (`avx512` runs the best this CPU has), except
    /// that `portable`, the default path of a CPU without AVX-512, runs the AVX2 kernels unless
    /// `KVCRUSH_KERNELS=portable` asks for it.
    static let current: WeightKernelPath = {
        let best = available[0]
        guard best != .portable else { return .portable }
        switch KernelPath.current {
        case .avx512: return best
        case .avx2: return .avx2
        case .portable:
            return ProcessInfo.processInfo.environment[KernelPath.environmentVariable] == KernelPath.portable.rawValue ? .portable : best
        }
    }()

    /// Whether the AVX2 C kernels run (on `avx2` and on `avx512`, whose other kernels are AVX2's).
    var runsC: Bool { self != .portable }
}

/// Rows of a weight matrix as its file stores them, lent for the duration of a closure (never kept;
/// threads of one product may share it: the bytes are only read).
struct UnsafeWeightRows: @unchecked Sendable {
    let type: GGMLType
    let columns: Int
    let rowByteCount: Int
    let base: UnsafeRawPointer

    /// The bytes of rows `r ..< r + count`.
    @inline(__always) func bytes(from r: Int, count: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + r * rowByteCount, count: count * rowByteCount)
    }
}

/// A vector quantised to 16 bits in blocks of 32 for the decode product (integer dots with the
/// weights' codes, as ggml's with 8-bit activations, but 16 bits: 8 bits lose the small channels of
/// a block that holds one of the model's outlier channels).
///
/// Per block b of 32 values, with m = max_j |x_j|: `scales[b]` = dx = m/32767, `codes[32b + j]` =
/// rne(x_j·fl(32767/m)) (|·| ≤ 32767), `sums[b]` = Σ_j x_j (lanes j mod 8 summed in order, then
/// `WeightKernels.sum8`). Blocks with m < 2⁻⁹⁶ (zero ones included) get dx = 0 and codes 0; a
/// block with a non-finite value (or sum) gets dx = NaN and codes 0, so the product is NaN, not a
/// silent zero.
///
/// Error: |dx·code_j − x_j| ≤ dx/2 + 3ε·|x_j| (ε = 2⁻²⁴): half a step, plus the roundings of
/// 32767/m, x·(32767/m) and m/32767; a block's flush to zero errs by at most its |x_j| < 2⁻⁹⁶.
struct ActivationBlocks {
    /// The largest code.
    static let codeLimit: Float = 32767

    var codes: [Int16]
    var scales: [Float]
    var sums: [Float]

    /// Quantises `x` (a multiple of 32 values).
    init(_ x: UnsafeBufferPointer<Float>) {
        precondition(x.count % 32 == 0, "ActivationBlocks: \(x.count) values are not blocks of 32")
        let blocks = x.count / 32
        codes = [Int16](repeating: 0, count: x.count)
        scales = [Float](repeating: 0, count: blocks)
        sums = [Float](repeating: 0, count: blocks)
        codes.withUnsafeMutableBufferPointer { q in
            scales.withUnsafeMutableBufferPointer { d in
                sums.withUnsafeMutableBufferPointer { s in
                    Self.quantize(x.baseAddress!, blocks: blocks, codes: q.baseAddress!, scales: d.baseAddress!, sums: s.baseAddress!)
                }
            }
        }
    }

    /// The quantisation of `blocks` blocks of 32 values at `x` into `codes` (32 per block), `scales`
    /// and `sums` (one per block), as described on the type: the definition `kvk_quantize_q16_avx2` twins.
    static func quantize(_ x: UnsafePointer<Float>, blocks: Int, codes: UnsafeMutablePointer<Int16>,
                         scales: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>) {
        let raw = UnsafeRawPointer(x)
        for b in 0..<blocks {
            var lanes = SIMD8<Float>(), m: Float = 0
            for i in 0..<4 {
                let v = raw.loadUnaligned(fromByteOffset: 4 * (32 * b + 8 * i), as: SIMD8<Float>.self)
                lanes = i == 0 ? v : lanes + v
                for l in 0..<8 { m = max(m, v[l].magnitude) }
            }
            sums[b] = WeightKernels.sum8(lanes)
            (codes + 32 * b).update(repeating: 0, count: 32)
            // A NaN or ±∞ among the values makes the sum non-finite (as does a sum that overflows).
            if !m.isFinite || !sums[b].isFinite {
                scales[b] = .nan
                continue
            }
            guard m >= 0x1p-96 else { scales[b] = 0; continue }
            scales[b] = m / codeLimit
            let inverse = codeLimit / m
            for j in 0..<32 { codes[32 * b + j] = Int16((x[32 * b + j] * inverse).rounded(.toNearestOrEven)) }
        }
    }

    /// `count` vectors of `columns` values at `x` (`[count][columns]`), quantised as `quantize` each:
    /// codes `[count][columns]`, scales and sums `[count][columns/32]` (C on `path.runsC`).
    static func quantize(_ x: UnsafePointer<Float>, count: Int, columns: Int, codes: UnsafeMutablePointer<Int16>,
                         scales: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>, path: WeightKernelPath) {
        precondition(columns % 32 == 0, "ActivationBlocks.quantize: \(columns) values are not blocks of 32")
        #if arch(x86_64)
        if path.runsC { return kvk_quantize_q16_avx2(x, count, columns, codes, scales, sums) }
        #endif
        let p = columns / 32
        for t in 0..<count {
            quantize(x + t * columns, blocks: p, codes: codes + t * columns, scales: scales + t * p, sums: sums + t * p)
        }
    }
}

/// Scratch of one thread's integer prefill product: a packed panel of up to `rows` rows
/// (`kvk_weights_pack_q16_avx2`'s layout).
struct QuantizedPanel {
    let codes: UnsafeMutablePointer<Int16>
    let params: UnsafeMutablePointer<Float>

    /// Int16 codes and floats a panel of `rows` rows of `columns` takes.
    static func sizes(rows: Int, columns: Int) -> (codes: Int, params: Int) {
        let groups = (rows + 15) / 16, p = columns / 32
        return (groups * p * 512, groups * p * 48)
    }

    init(rows: Int, columns: Int) {
        let n = Self.sizes(rows: rows, columns: columns)
        codes = .allocate(capacity: n.codes)
        params = .allocate(capacity: n.params)
    }

    func deallocate() { codes.deallocate(); params.deallocate() }
}

/// The kernels of the weight products on the file's blocks, each on the AVX2 C kernels or in Swift
/// (`WeightKernelPath`), with scalar twins in `WeightKernels+Reference.swift`:
///
/// | kernel | arithmetic | C (`KVK_CPU_AVX2`) |
/// |---|---|---|
/// | `dequantize` | `GGUFDequantizer` (exact) | `kvk_weights_dequantize_avx2` |
/// | `multiplyVector` | FP32 dots in 8 lanes (`dotReference`) | `kvk_weights_matvec_avx2` |
/// | `multiplyQuantizedVector` | 16-bit activations (`quantizedDotReference`) | `kvk_weights_matvec_q16_avx2` |
/// | `multiply` | FP32 dots in 8 lanes, tiles of rows × vectors | `kvk_matmul_f32_avx2` |
/// | `multiplyQuantized` | 16-bit activations, one sum per piece (`quantizedPanelDotReference`) | `kvk_weights_matmul_q16_avx2`, `_vnni` |
///
/// Shapes are caller's business (checked by `MatrixProducts`); these trust them.
enum WeightKernels {
    /// ((a₀ + a₄) + (a₂ + a₆)) + ((a₁ + a₅) + (a₃ + a₇)): the lane sum of every kernel (and of the C ones).
    @inline(__always) static func sum8(_ a: SIMD8<Float>) -> Float {
        let s4 = a.lowHalf + a.highHalf, s2 = s4.lowHalf + s4.highHalf
        return s2[0] + s2[1]
    }

    /// `out[r·stride + k]` = value k of row `first + r`, for `count` rows.
    static func dequantize(_ w: UnsafeWeightRows, first: Int, count: Int, into out: UnsafeMutablePointer<Float>, stride: Int,
                           path: WeightKernelPath = .current) {
        #if arch(x86_64)
        if path.runsC {
            return kvk_weights_dequantize_avx2(Int32(w.type.rawValue), w.base + first * w.rowByteCount, w.rowByteCount, count, w.columns, out, stride)
        }
        #endif
        for r in 0..<count {
            GGUFDequantizer.dequantize(w.bytes(from: first + r, count: 1), type: w.type, count: w.columns, into: out + r * stride)
        }
    }

    /// `y[r] = row(first + r) · x` for `count` rows, FP32 (`dotReference`'s order).
    static func multiplyVector(_ w: UnsafeWeightRows, first: Int, count: Int, x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>,
                               path: WeightKernelPath = .current) {
        #if arch(x86_64)
        if path.runsC {
            return kvk_weights_matvec_avx2(Int32(w.type.rawValue), w.base + first * w.rowByteCount, w.rowByteCount, count, w.columns, x, y)
        }
        #endif
        let row = UnsafeMutablePointer<Float>.allocate(capacity: w.columns)
        defer { row.deallocate() }
        for r in 0..<count {
            dequantize(w, first: first + r, count: 1, into: row, stride: w.columns, path: .portable)
            y[r] = dot(row, x, w.columns)
        }
    }

    /// `y[r]` = the 16-bit-activation product of row `first + r` and `x` for `count` rows
    /// (`quantizedDotReference`). Block types only.
    static func multiplyQuantizedVector(_ w: UnsafeWeightRows, first: Int, count: Int, x: ActivationBlocks,
                                        into y: UnsafeMutablePointer<Float>, path: WeightKernelPath = .current) {
        precondition(w.type.isBlockQuantized && x.codes.count == w.columns, "WeightKernels.multiplyQuantizedVector: \(w.type) rows of \(w.columns) and \(x.codes.count) activations")
        #if arch(x86_64)
        if path.runsC {
            return x.codes.withUnsafeBufferPointer { q in
                kvk_weights_matvec_q16_avx2(Int32(w.type.rawValue), w.base + first * w.rowByteCount, w.rowByteCount, count, w.columns,
                                           q.baseAddress!, x.scales, x.sums, y)
            }
        }
        #endif
        for r in 0..<count { y[r] = quantizedDotReference(w.bytes(from: first + r, count: 1), type: w.type, x: x) }
    }

    /// `y[t·yStride + r] = w_r · x_t` for FP32 rows `w_r` at `w + r·wStride` (r < rows) and vectors
    /// `x_t` at `x + t·xStride` (t < count), in `dotReference`'s order. Swift: tiles of 4 rows × 2
    /// vectors; C: 3 × 4.
    static func multiply(_ w: UnsafePointer<Float>, wStride: Int, rows: Int, columns c: Int, x: UnsafePointer<Float>, xStride: Int,
                         count: Int, into y: UnsafeMutablePointer<Float>, yStride: Int, path: WeightKernelPath = .current) {
        #if arch(x86_64)
        if path.runsC { return kvk_matmul_f32_avx2(w, wStride, rows, c, x, xStride, count, y, yStride) }
        #endif
        let c8 = c & ~7
        @inline(__always) func load(_ p: UnsafePointer<Float>, _ i: Int) -> SIMD8<Float> {
            UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
        }
        @inline(__always) func finish(_ a: SIMD8<Float>, _ wr: UnsafePointer<Float>, _ xt: UnsafePointer<Float>) -> Float {
            var s = sum8(a)
            for i in c8..<c { s = s.addingProduct(wr[i], xt[i]) }
            return s
        }
        var o = 0
        while o + 4 <= rows {
            let w0 = w + o * wStride, w1 = w0 + wStride, w2 = w1 + wStride, w3 = w2 + wStride
            var t = 0
            while t + 2 <= count {
                let x0 = x + t * xStride, x1 = x0 + xStride
                var a00 = SIMD8<Float>(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00
                var i = 0
                while i < c8 {
                    let u0 = load(x0, i), u1 = load(x1, i)
                    let v0 = load(w0, i), v1 = load(w1, i), v2 = load(w2, i), v3 = load(w3, i)
                    a00.addProduct(v0, u0); a01.addProduct(v0, u1)
                    a10.addProduct(v1, u0); a11.addProduct(v1, u1)
                    a20.addProduct(v2, u0); a21.addProduct(v2, u1)
                    a30.addProduct(v3, u0); a31.addProduct(v3, u1)
                    i += 8
                }
                let y0 = y + t * yStride + o, y1 = y0 + yStride
                y0[0] = finish(a00, w0, x0); y0[1] = finish(a10, w1, x0); y0[2] = finish(a20, w2, x0); y0[3] = finish(a30, w3, x0)
                y1[0] = finish(a01, w0, x1); y1[1] = finish(a11, w1, x1); y1[2] = finish(a21, w2, x1); y1[3] = finish(a31, w3, x1)
                t += 2
            }
            while t < count {
                for r in 0..<4 { y[t * yStride + o + r] = dot(w0 + r * wStride, x + t * xStride, c) }
                t += 1
            }
            o += 4
        }
        while o < rows {
            for t in 0..<count { y[t * yStride + o] = dot(w + o * wStride, x + t * xStride, c) }
            o += 1
        }
    }

    /// `y[t·yStride + r]` = the 16-bit-activation prefill product of row `first + r` (r < count) and
    /// vector t < tokens (`quantizedPanelDotReference`): x's codes `[tokens][columns]`, scales and
    /// sums `[tokens][columns/32]` (`ActivationBlocks.quantize`). Block types only; `panel` must hold
    /// `count` rows. C: the rows packed into `panel`, then 8 × 4 (AVX2) or 16 × 8 (AVX-512 VNNI) tiles.
    static func multiplyQuantized(_ w: UnsafeWeightRows, first: Int, count: Int, codes: UnsafePointer<Int16>,
                                  scales: UnsafePointer<Float>, sums: UnsafePointer<Float>, tokens: Int,
                                  into y: UnsafeMutablePointer<Float>, yStride: Int, panel: QuantizedPanel,
                                  path: WeightKernelPath = .current) {
        precondition(w.type.isBlockQuantized && w.columns % 32 == 0, "WeightKernels.multiplyQuantized: \(w.type) rows of \(w.columns)")
        #if arch(x86_64)
        if path.runsC {
            kvk_weights_pack_q16_avx2(Int32(w.type.rawValue), w.base + first * w.rowByteCount, w.rowByteCount, count, w.columns,
                                      panel.codes, panel.params)
            if path == .avx512 {
                return kvk_weights_matmul_q16_vnni(Int32(w.type.rawValue), count, w.columns, panel.codes, panel.params,
                                                   codes, scales, sums, tokens, y, yStride)
            }
            return kvk_weights_matmul_q16_avx2(Int32(w.type.rawValue), count, w.columns, panel.codes, panel.params,
                                               codes, scales, sums, tokens, y, yStride)
        }
        #endif
        let p = w.columns / 32
        for r in 0..<count {
            let raw = w.bytes(from: first + r, count: 1)
            let pieces = (0..<p).map { GGUFDequantizer.piece(raw, type: w.type, index: $0) }
            for t in 0..<tokens {
                y[t * yStride + r] = quantizedPanelDotReference(pieces, codes: codes + t * w.columns, scales: scales + t * p,
                                                                sums: sums + t * p, splitsHalves: w.type == .q6_K)
            }
        }
    }

    /// Σ a[i]·b[i] in `dotReference`'s order (SIMD8 lanes, fused).
    @inline(__always) static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= n {
            acc.addProduct(UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self), UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self))
            i += 8
        }
        var s = sum8(acc)
        while i < n { s = s.addingProduct(a[i], b[i]); i += 1 }
        return s
    }
}
