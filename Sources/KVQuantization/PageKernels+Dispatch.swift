// Which kernel runs: the C kernels' shape rules (asked by every `PageKernels` entry) and the read
// path's per-tier choice built on them (`KeyScoring`, `ValueAccumulation`). The one place where a
// kernel is picked; add a path's kernels here.

extension PageKernels {
    // MARK: AVX-512

    /// Whether the AVX-512 FP32 kernels (`kvk_scores_fp16`, `kvk_prepare_channelwise` +
    /// `kvk_scores_channelwise`, `kvk_accumulate_fp16`) run for rows of `headDim` elements: the
    /// `avx512` path and headDim a multiple of 64 (whole 64-element chunks).
    static func runsFP32Kernels(headDim d: Int, on kernels: KernelSet = .current) -> Bool {
        kernels.avx512 && d > 0 && d % 64 == 0
    }

    /// Whether `kvk_accumulate_fp16` / `kvk_accumulate_grouped` run for value rows of `format`:
    /// `runsFP32Kernels` and, for grouped rows, a group size that is a multiple of the code block
    /// (16 elements at INT8, 32 at INT4, 64 at INT2) dividing headDim, at most 32 groups.
    static func runsAccumulateKernel(_ format: StorageFormat, headDim d: Int, on kernels: KernelSet = .current) -> Bool {
        guard runsFP32Kernels(headDim: d, on: kernels) else { return false }
        switch format {
        case .fp16: return true
        case .channelwise, .mixedChannelwise, .lloydMax, .grouped(.int3, _): return false
        case .grouped(let w, let g):
            let block = w == .int8 ? 16 : w == .int4 ? 32 : 64
            return g % block == 0 && d % g == 0 && d / g <= 32
        }
    }

    // MARK: AVX-512 integer kernels

    /// Whether `kvk_prepare_channelwise_vnni` + `kvk_scores_channelwise_vnni` run for per-channel
    /// key pages of `headDim`: VNNI scores in the kernel set, headDim a multiple of 64 and at most
    /// `vnniMaxHeadDim`.
    static func runsVNNIScoreKernel(headDim d: Int, on kernels: KernelSet = .current) -> Bool {
        kernels.vnniScores && d > 0 && d % 64 == 0 && d <= vnniMaxHeadDim
    }

    /// Whether `kvk_accumulate_integer` runs for value rows of `format`: integer values in the
    /// kernel set, INT4 rows with a group size that is a multiple of 32 and a head dim that is a
    /// multiple of 128, or INT8 rows with a group size that is a multiple of 16 and a head dim that
    /// is a multiple of 64; at most 32 groups and 256 code bytes per row.
    static func runsIntegerAccumulateKernel(_ format: StorageFormat, headDim d: Int, on kernels: KernelSet = .current) -> Bool {
        guard kernels.integerValues, case .grouped(let w, let g) = format, d > 0, d % g == 0, d / g <= 32,
              w.packedByteCount(codes: d) <= 256 else { return false }
        switch w {
        case .int4: return g % 32 == 0 && d % 128 == 0
        case .int8: return g % 16 == 0 && d % 64 == 0
        case .int3, .int2: return false
        }
    }
}

extension PageKernels {
    // MARK: AVX2

    /// Whether the AVX2 FP32 kernels (`kvk_scores_fp16_avx2`, `kvk_prepare_channelwise_avx2` +
    /// `kvk_scores_channelwise_avx2`, `kvk_accumulate_fp16_avx2`) run for rows of `headDim`
    /// elements where the AVX-512 ones do not: AVX2 kernels in the kernel set and headDim a
    /// multiple of 16 (whole 16-element units).
    static func runsAVX2Kernels(headDim d: Int, on kernels: KernelSet = .current) -> Bool {
        kernels.avx2 && d > 0 && d % 16 == 0
    }

    /// Whether `kvk_prepare_channelwise_avx2` + `kvk_scores_channelwise_avx2` run for per-channel key
    /// pages of `headDim` where the AVX-512 ones do not: AVX2 kernels in the kernel set and headDim a
    /// multiple of 8 (16-element units and at most one 8-element half unit; the segments of
    /// mixed-width keys are multiples of 8).
    static func runsAVX2ChannelwiseKernels(headDim d: Int, on kernels: KernelSet = .current) -> Bool {
        kernels.avx2 && d > 0 && d % 8 == 0
    }

    /// Whether the AVX2 kernels of the INT3 and Lloyd–Max formats (`int3_avx2.c`,
    /// `lloydmax_avx2.c`; `PageKernels+Formats.swift`) run for rows of `headDim` elements: AVX2
    /// kernels in the kernel set (the `avx2` path, or `avx512`: the AVX-512 kernels do not take these
    /// formats) and headDim a multiple of 8.
    static func runsFormatAVX2Kernels(headDim d: Int, on kernels: KernelSet = .current) -> Bool {
        kernels.avx2 && d > 0 && d % 8 == 0
    }

    /// Whether `kvk_scores_channelwise_int_avx2` (the VNNI scores' arithmetic on AVX2) runs for
    /// per-channel key pages of `width` and `headDim` where the VNNI kernels do not: AVX2 kernels
    /// in the kernel set, INT4 codes (`vpmaddubsw` pairs of 8-bit codes could overflow int16), and
    /// a head dim that is a multiple of 32 and at most `avx2IntegerMaxHeadDim`.
    static func runsAVX2IntegerScoreKernel(_ width: CodeWidth, headDim d: Int, on kernels: KernelSet = .current) -> Bool {
        kernels.avx2 && !runsVNNIScoreKernel(headDim: d, on: kernels) && width == .int4 && d > 0 && d % 32 == 0
            && d <= avx2IntegerMaxHeadDim
    }

    /// Whether `kvk_accumulate_fp16_avx2` / `kvk_accumulate_grouped_avx2` run for value rows of
    /// `format` (where the AVX-512 kernel does not): `runsAVX2Kernels` and, for grouped rows, a
    /// group size that is a multiple of 16 dividing headDim (a unit lies in one group).
    static func runsAVX2AccumulateKernel(_ format: StorageFormat, headDim d: Int, on kernels: KernelSet = .current) -> Bool {
        guard runsAVX2Kernels(headDim: d, on: kernels) else { return false }
        switch format {
        case .fp16: return true
        case .channelwise, .mixedChannelwise, .lloydMax, .grouped(.int3, _): return false
        case .grouped(_, let g): return g % 16 == 0 && d % g == 0
        }
    }
}

/// How the read path scores a page's keys against a tile of query rows: chosen once per tier and
/// key format (`KVStore` holds it in the tier's codecs) from the kernel set, the format and the
/// head dim. Each case names the entry and so the contract (its error bound); the entry itself
/// runs the fastest kernel of the path for the shape (AVX-512, AVX2 or the tiled Swift code).
package enum KeyScoring: Sendable, Hashable {
    /// FP16 keys: `PageKernels.scoresFP16`.
    case fp16
    /// Per-channel keys, `PageKernels.scoresChannelwiseVNNI` (integer dots: AVX512-VNNI, or AVX2
    /// `vpmaddubsw` for INT4): its scores carry `PageKernels.channelwiseVNNIErrorBound`.
    case channelwiseVNNI
    /// Per-channel keys, `PageKernels.scoresChannelwise` (FP32).
    case channelwise
    /// Per-channel INT3 keys, `PageKernels.scoresChannelwiseInt3` (AVX2 where it runs, else Swift
    /// tiled over query rows) on every path.
    case channelwiseInt3
    /// Lloyd–Max keys, `PageKernels.scoresLloydMax` (AVX2 where it runs, else Swift tiled over query
    /// rows) on every path.
    case lloydMax
    /// Grouped keys: `RowCodec.dot` per query row and key row, on every path.
    case grouped
    /// Mixed-width per-channel keys: `MixedChannelwiseKeyCodec.scores`, each segment by its own
    /// per-channel scoring.
    case mixedChannelwise

    /// The scoring of keys stored as `format` with `headDim` elements: per-channel keys by integer
    /// dots wherever they run (VNNI; INT4 on AVX2), else in FP32.
    public init(keyFormat format: StorageFormat, headDim d: Int, kernels: KernelSet = .current) {
        switch format {
        case .fp16: self = .fp16
        case .channelwise(.int3): self = .channelwiseInt3
        case .lloydMax: self = .lloydMax
        case .channelwise(let w):
            if PageKernels.runsVNNIScoreKernel(headDim: d, on: kernels) || PageKernels.runsAVX2IntegerScoreKernel(w, headDim: d, on: kernels) {
                self = .channelwiseVNNI
            } else {
                self = .channelwise
            }
        case .grouped: self = .grouped
        case .mixedChannelwise: self = .mixedChannelwise
        }
    }
}

/// How the read path adds a page's weighted value rows into the outputs: chosen once per tier
/// (`KVStore` holds it in the tier's codecs) from the kernel set, the value format and the head dim.
package enum ValueAccumulation: Sendable, Hashable {
    /// `PageKernels.accumulateInteger` (integer dots, AVX-512 VNNI + VBMI): adds the split residual
    /// bounded there.
    case integer
    /// `PageKernels.accumulate` in FP32: bit-identical to `accumulateReference` on the AVX-512 and
    /// AVX2 kernels, to its unfused form on the tiled Swift code.
    case floatingPoint
    /// Lloyd–Max and grouped INT3 rows on every path: `PageKernels.accumulateTiled` (AVX2 where it
    /// runs, else Swift tiled over output rows).
    case tiled

    /// The accumulation of value rows stored as `format` with `headDim` elements. The integer
    /// kernel is used for INT4 only, where it runs. Measured here (Zen 4): at INT4 it cut a cached
    /// decode step by about a third (mha-32x128, 1,024 tokens, one thread: 0.61 → 0.42 ms); at INT8
    /// it was no faster cached and slower from memory (16k tokens: 8.3 ms with `accumulate` against
    /// 9.7–15 ms: its 4-token transposition reads 136-byte rows with split loads), so INT8 keeps the
    /// FP32 kernel.
    public init(valueFormat format: StorageFormat, headDim d: Int, kernels: KernelSet = .current) {
        switch format {
        case .lloydMax, .grouped(.int3, _): self = .tiled; return
        default: break
        }
        if case .grouped(.int4, _) = format, PageKernels.runsIntegerAccumulateKernel(format, headDim: d, on: kernels) {
            self = .integer
        } else {
            self = .floatingPoint
        }
    }
}
