import CKVKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#elseif canImport(ucrt)
import ucrt
#endif

// The page kernels of the INT3 and Lloyd–Max formats: Lloyd–Max key scores, INT3 per-channel key
// scores, and the weighted sum of Lloyd–Max or grouped INT3 value rows. Each entry runs the AVX2 C
// kernel (`int3_avx2.c`, `lloydmax_avx2.c`) where `runsFormatAVX2Kernels` allows, else a Swift path
// tiled over query rows (each key or value row unpacked once per tile of four rows), and each is
// held to a scalar twin:
//
// | Swift entry | AVX2 kernel | portable path | twin | contract |
// |---|---|---|---|---|
// | `scoresLloydMax` | `kvk_scores_lloydmax_avx2` | `scoresLloydMaxPortable` (= `RowCodec.dot`·scale per pair, bit for bit) | `scoresReference` | within `RowCodec.dotErrorBound`·scale of the exact dot (+1 rounding) |
// | `scoresChannelwiseInt3` | `kvk_scores_channelwise_int3_avx2` | `scoresChannelwiseInt3Portable` (= `ChannelwiseKeyCodec.prepare` + `dot`, bit for bit) | `scoresChannelwiseReference` | within γ_{d+4}·Σ_c\|q_c\|(scale_c·code_c + \|zero_c\|)·scale (+1 rounding) |
// | `accumulateTiled` | `kvk_accumulate_lloydmax_avx2`, `kvk_accumulate_int3_avx2` | `accumulateTiledPortable` | AVX2: `accumulateReference` (fma per element); portable: `RowCodec.accumulateReference` per token and row | bit-exact |
//
// The portable accumulation rounds twice per element (out + w·x̂, like `RowCodec.accumulate`)
// instead of fusing: Swift's fused multiply-add is a library call per lane on the baseline x86-64
// target. AVX-512 CPUs run the AVX2 kernels for these formats (the AVX-512 kernels take FP16, INT8,
// INT4 and INT2 only).

extension PageKernels {
    /// Whether the AVX2 kernels of the INT3 and Lloyd–Max formats run: an x86-64 CPU with AVX2, F16C
    /// and FMA, unless `KVCRUSH_KERNELS=portable` forces Swift everywhere. (Until the kernel paths
    /// have an `avx2` member, this is the formats' own check; then it becomes that path's.)
    package static let runsFormatAVX2Kernels: Bool = {
        #if arch(x86_64)
        guard CPUFeatures.detected.contains(.avx2) else { return false }
        if let v = getenv(KernelPath.environmentVariable), String(cString: v) == KernelPath.portable.rawValue { return false }
        return true
        #else
        return false
        #endif
    }()

    /// Whether the AVX2 format kernels run for rows of `headDim` elements (a multiple of 8).
    static func runsFormatAVX2Kernels(headDim d: Int) -> Bool { runsFormatAVX2Kernels && d > 0 && d % 8 == 0 }

    // MARK: Lloyd–Max scores

    /// `scores[r·stride + j] = scale · (q_r · key_j)` for `rowCount` query rows against `tokenCount`
    /// Lloyd–Max key rows (`keys`, `codec.rowByteCount` apart), each within `RowCodec.dotErrorBound`
    /// of the exact dot with the decoded row (then one rounding for ·scale). `work` holds at least
    /// `headDim` floats.
    public static func scoresLloydMax(_ codec: RowCodec, _ q: UnsafePointer<Float>, rowCount: Int, keys: UnsafeRawPointer,
                                      tokenCount: Int, scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int,
                                      work: UnsafeMutablePointer<Float>) {
        guard let w = codec.lloydMaxWidth else { preconditionFailure("PageKernels.scoresLloydMax: \(codec.format) rows are not Lloyd–Max rows") }
        #if arch(x86_64)
        if runsFormatAVX2Kernels(headDim: codec.headDim) {
            var table = codec.levelTable
            return withUnsafeBytes(of: &table) { t in
                kvk_scores_lloydmax_avx2(Int32(w.bits), t.baseAddress!.assumingMemoryBound(to: Float.self), q, rowCount, codec.headDim,
                                         keys.assumingMemoryBound(to: UInt8.self), codec.rowByteCount, codec.codeByteCount,
                                         tokenCount, scale, scores, stride)
            }
        }
        #endif
        scoresLloydMaxPortable(codec, q, rowCount: rowCount, keys: keys, tokenCount: tokenCount, scale: scale, into: scores,
                               stride: stride, work: work)
    }

    /// The Swift path of `scoresLloydMax`: per key row, the levels are looked up once (into `work`),
    /// then dotted with every query row as `RowCodec.dot` does (bit-identical to it).
    public static func scoresLloydMaxPortable(_ codec: RowCodec, _ q: UnsafePointer<Float>, rowCount: Int, keys: UnsafeRawPointer,
                                              tokenCount: Int, scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int,
                                              work: UnsafeMutablePointer<Float>) {
        guard let w = codec.lloydMaxWidth else { preconditionFailure("PageKernels.scoresLloydMax: \(codec.format) rows are not Lloyd–Max rows") }
        let d = codec.headDim, levels = UnsafeMutableRawPointer(work), full = d / 8 * 8
        for j in 0..<tokenCount {
            let row = keys + j * codec.rowByteCount
            var i = 0
            while i < full {
                levels.storeBytes(of: codec.levels8(CodePacking.load8(w, row, element: i)), toByteOffset: 4 * i, as: SIMD8<Float>.self)
                i += 8
            }
            while i < d { work[i] = codec.levelTable[Int(CodePacking.load(w, row, element: i))]; i += 1 }
            let n = codec.norm(of: row)
            for r in 0..<rowCount {
                let qr = UnsafeRawPointer(q + r * d)
                var acc = SIMD8<Float>()
                var i = 0
                while i < full {
                    acc += qr.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * levels.load(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                    i += 8
                }
                var s = acc.sum()
                while i < d { s += q[r * d + i] * work[i]; i += 1 }
                scores[r * stride + j] = n * s * scale
            }
        }
    }

    // MARK: INT3 per-channel scores

    /// Per-channel INT3 key pages: `scores[r·stride + j] = scale · (Σ_c (q_c·scale_c)·code_jc +
    /// Σ_c q_c·zero_c)` (the contract of `scoresChannelwise`). `work` holds at least
    /// `rowCount·(headDim + 1)` floats.
    public static func scoresChannelwiseInt3(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, rowCount: Int,
                                             codes: UnsafeRawPointer, params: UnsafeRawPointer, tokenCount: Int, scale: Float,
                                             into scores: UnsafeMutablePointer<Float>, stride: Int, work: UnsafeMutablePointer<Float>) {
        precondition(codec.width == .int3, "PageKernels.scoresChannelwiseInt3: \(codec.width) codes")
        let d = codec.headDim, qs = work, zt = work + rowCount * d
        prepareChannelwise(codec, q, rowCount: rowCount, params: params, into: qs, zeroTerms: zt)
        #if arch(x86_64)
        if runsFormatAVX2Kernels(headDim: d) {
            return kvk_scores_channelwise_int3_avx2(qs, zt, rowCount, d, codes.assumingMemoryBound(to: UInt8.self), codec.rowByteCount,
                                                    tokenCount, scale, scores, stride)
        }
        #endif
        scoresChannelwisePrepared(codec, qs, zeroTerms: zt, rowCount: rowCount, codes: codes, tokenCount: tokenCount, scale: scale,
                                  into: scores, stride: stride)
    }

    /// The Swift path of `scoresChannelwiseInt3`: `ChannelwiseKeyCodec.prepare` and `dot` per row
    /// and token, bit for bit, with each token's codes unpacked once per tile of four query rows.
    public static func scoresChannelwiseInt3Portable(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, rowCount: Int,
                                                     codes: UnsafeRawPointer, params: UnsafeRawPointer, tokenCount: Int, scale: Float,
                                                     into scores: UnsafeMutablePointer<Float>, stride: Int, work: UnsafeMutablePointer<Float>) {
        let d = codec.headDim, qs = work, zt = work + rowCount * d
        prepareChannelwise(codec, q, rowCount: rowCount, params: params, into: qs, zeroTerms: zt)
        scoresChannelwisePrepared(codec, qs, zeroTerms: zt, rowCount: rowCount, codes: codes, tokenCount: tokenCount, scale: scale,
                                  into: scores, stride: stride)
    }

    /// `qs[r·d + c] = q_rc·scale_c`, `zt[r] = Σ_c q_rc·zero_c` left to right (`ChannelwiseKeyCodec.prepare`).
    static func prepareChannelwise(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, rowCount: Int, params: UnsafeRawPointer,
                                   into qs: UnsafeMutablePointer<Float>, zeroTerms zt: UnsafeMutablePointer<Float>) {
        let d = codec.headDim
        for r in 0..<rowCount {
            var z: Float = 0
            for c in 0..<d {
                let a = codec.parameters(ofChannel: c, in: params)
                qs[r * d + c] = q[r * d + c] * a.scale
                z += q[r * d + c] * a.zero
            }
            zt[r] = z
        }
    }

    static func scoresChannelwisePrepared(_ codec: ChannelwiseKeyCodec, _ qs: UnsafePointer<Float>, zeroTerms zt: UnsafePointer<Float>,
                                          rowCount: Int, codes: UnsafeRawPointer, tokenCount: Int, scale: Float,
                                          into scores: UnsafeMutablePointer<Float>, stride: Int) {
        let d = codec.headDim, w = codec.width, full = d / 8 * 8
        var r0 = 0
        while r0 < rowCount {
            let rt = min(4, rowCount - r0)
            for j in 0..<tokenCount {
                let row = codes + j * codec.rowByteCount
                var acc = (SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>())
                var c = 0
                while c < full {
                    let x = CodePacking.load8f(w, row, element: c)
                    func q8(_ r: Int) -> SIMD8<Float> { UnsafeRawPointer(qs + (r0 + r) * d).loadUnaligned(fromByteOffset: 4 * c, as: SIMD8<Float>.self) }
                    acc.0 += q8(0) * x
                    if rt > 1 { acc.1 += q8(1) * x }
                    if rt > 2 { acc.2 += q8(2) * x }
                    if rt > 3 { acc.3 += q8(3) * x }
                    c += 8
                }
                for r in 0..<rt {
                    var s = r == 0 ? acc.0.sum() : r == 1 ? acc.1.sum() : r == 2 ? acc.2.sum() : acc.3.sum()
                    for c in full..<d { s += qs[(r0 + r) * d + c] * Float(CodePacking.load(w, row, element: c)) }
                    scores[(r0 + r) * stride + j] = (s + zt[r0 + r]) * scale
                }
            }
            r0 += rt
        }
    }

    // MARK: Lloyd–Max and INT3 values

    /// The weighted sum of a page's Lloyd–Max or grouped INT3 value rows into `rowCount` output rows:
    /// `out[r·headDim + i] += w[r·stride + j] · x̂_ji` for j = 0..<tokenCount in order. AVX2 (where
    /// `runsFormatAVX2Kernels`): one fused multiply-add per element, bit-identical to
    /// `accumulateReference`; else `accumulateTiledPortable`.
    public static func accumulateTiled(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                       rows: UnsafeRawPointer, tokenCount: Int, into out: UnsafeMutablePointer<Float>) {
        let d = codec.headDim
        #if arch(x86_64)
        if runsFormatAVX2Kernels(headDim: d) {
            switch codec.format {
            case .lloydMax(let width):
                var table = codec.levelTable
                return withUnsafeBytes(of: &table) { t in
                    kvk_accumulate_lloydmax_avx2(Int32(width.bits), t.baseAddress!.assumingMemoryBound(to: Float.self), w, rowCount, stride,
                                                 tokenCount, rows.assumingMemoryBound(to: UInt8.self), codec.rowByteCount,
                                                 codec.codeByteCount, d, out)
                }
            case .grouped(.int3, let g):
                return kvk_accumulate_int3_avx2(g, w, rowCount, stride, tokenCount, rows.assumingMemoryBound(to: UInt8.self),
                                                codec.rowByteCount, codec.codeByteCount, d, out)
            default:
                break
            }
        }
        #endif
        accumulateTiledPortable(codec, weights: w, rowCount: rowCount, stride: stride, rows: rows, tokenCount: tokenCount, into: out)
    }

    /// The Swift path of `accumulateTiled`, for any row format: each value row is decoded once
    /// (`RowCodec.decode`, into chunks of eight on the fly), then added to every output row as
    /// out + w·x̂ (two roundings): bit-identical to `RowCodec.accumulateReference` for every token and
    /// row in order.
    public static func accumulateTiledPortable(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                               rows: UnsafeRawPointer, tokenCount: Int, into out: UnsafeMutablePointer<Float>) {
        let d = codec.headDim
        let x = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { x.deallocate() }
        let xr = UnsafeRawPointer(x), full = d / 8 * 8
        for j in 0..<tokenCount {
            codec.decode(rows + j * codec.rowByteCount, into: x)
            for r in 0..<rowCount {
                let wr = w[r * stride + j], o = out + r * d, or = UnsafeMutableRawPointer(o)
                var i = 0
                while i < full {
                    let acc = or.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                    or.storeBytes(of: acc + wr * xr.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self), toByteOffset: 4 * i, as: SIMD8<Float>.self)
                    i += 8
                }
                while i < d { o[i] = o[i] + wr * x[i]; i += 1 }
            }
        }
    }
}
