// Which kernel runs: the C kernels' shape rules (asked by every `PageKernels` entry) and the read
// path's per-tier choice built on them (`KeyScoring`, `ValueAccumulation`). The one place where a
// kernel is picked; add a path's kernels here.

extension PageKernels {
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
        case .channelwise, .lloydMax, .grouped(.int3, _): return false
        case .grouped(let w, let g):
            let block = w == .int8 ? 16 : w == .int4 ? 32 : 64
            return g % block == 0 && d % g == 0 && d / g <= 32
        }
    }

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

/// How the read path scores a page's keys against a tile of query rows: chosen once per tier and
/// key format (`KVStore` holds it in the tier's codecs) from the kernel set, the format and the
/// head dim.
package enum KeyScoring: Sendable, Hashable {
    /// FP16 keys, `PageKernels.scoresFP16` on the AVX-512 kernel.
    case fp16Accelerated
    /// Per-channel keys, `PageKernels.scoresChannelwiseVNNI` (integer dots, AVX512-VNNI): its
    /// scores carry `PageKernels.channelwiseVNNIErrorBound`.
    case channelwiseVNNI
    /// Per-channel keys, `PageKernels.scoresChannelwise` on the AVX-512 FP32 kernel.
    case channelwiseAccelerated
    /// Per-channel INT3 keys, `PageKernels.scoresChannelwiseInt3` (AVX2 where it runs, else Swift
    /// tiled over query rows) on every path.
    case channelwiseInt3
    /// Lloyd–Max keys, `PageKernels.scoresLloydMax` (AVX2 where it runs, else Swift tiled over query
    /// rows) on every path.
    case lloydMax
    /// The per-row Swift kernels: `RowCodec.dot` (FP16 and grouped keys; grouped keys use it on
    /// every path) or `ChannelwiseKeyCodec.prepare` + `dot`.
    case portable

    /// The scoring of keys stored as `format` with `headDim` elements: per-channel keys by VNNI
    /// wherever it runs, else by the FP32 kernel where that runs.
    public init(keyFormat format: StorageFormat, headDim d: Int, kernels: KernelSet = .current) {
        switch format {
        case .fp16:
            self = PageKernels.runsFP32Kernels(headDim: d, on: kernels) ? .fp16Accelerated : .portable
        case .channelwise(.int3):
            self = .channelwiseInt3
        case .lloydMax:
            self = .lloydMax
        case .channelwise:
            if PageKernels.runsVNNIScoreKernel(headDim: d, on: kernels) { self = .channelwiseVNNI }
            else if PageKernels.runsFP32Kernels(headDim: d, on: kernels) { self = .channelwiseAccelerated }
            else { self = .portable }
        case .grouped:
            self = .portable
        }
    }
}

/// How the read path adds a page's weighted value rows into the outputs: chosen once per tier
/// (`KVStore` holds it in the tier's codecs) from the kernel set, the value format and the head dim.
package enum ValueAccumulation: Sendable, Hashable {
    /// `PageKernels.accumulateInteger` (integer dots, AVX-512 VNNI + VBMI): adds the split residual
    /// bounded there.
    case integer
    /// `PageKernels.accumulate` on the AVX-512 kernel (bit-identical to `accumulateReference`).
    case accelerated
    /// Lloyd–Max and grouped INT3 rows on every path: `PageKernels.accumulateTiled` (AVX2 where it
    /// runs, else Swift tiled over output rows).
    case tiled
    /// The per-row Swift kernel `RowCodec.accumulate`, tokens of weight 0 skipped.
    case portable

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
        } else if PageKernels.runsAccumulateKernel(format, headDim: d, on: kernels) {
            self = .accelerated
        } else {
            self = .portable
        }
    }
}
