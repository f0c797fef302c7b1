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

// The read path's attention weights (`returnWeights`): each row's raw scores, gathered into
// position order and normalised by the row's final softmax state.
extension PageKernels {
    /// Writes one row's normalised weights in position order:
    /// `out[k] = s > −∞ ? exp(s − m) / l : 0` with `s = scores[order[k]]`, `k < count`.
    ///
    /// `m` is the row's largest score and `l > 0` its softmax sum Σ exp(s − m) (the online softmax's
    /// final state), so every weight is in [0, 1] and the weights sum to 1 within the rounding of
    /// `l`. On the AVX2 and AVX-512 kernel paths this is `kvk_normalized_weights_avx2` (glibc's expf
    /// algorithm vectorised in double precision, eight weights per step), bit-identical to
    /// `normalizedWeightsPortable` where Swift's `exp(Float)` is glibc's `expf` (Linux; checked for
    /// every float x ≤ 0 on glibc 2.36); elsewhere the exps differ from the platform's by at most
    /// one ulp. Otherwise the portable path.
    ///
    /// - Precondition: every `order[k]` indexes `scores`; `l > 0` (callers zero rows without weights).
    package static func normalizedWeights(scores: UnsafePointer<Float>, order: UnsafePointer<Int32>, count: Int,
                                          max m: Float, sum l: Float, into out: UnsafeMutablePointer<Float>,
                                          on kernels: KernelSet = .current) {
        #if arch(x86_64)
        if kernels.avx2 { return kvk_normalized_weights_avx2(scores, order, count, m, l, out) }
        #endif
        normalizedWeightsPortable(scores: scores, order: order, count: count, max: m, sum: l, into: out)
    }

    /// The Swift path of `normalizedWeights`, and its definition: one `exp(Float)` (the platform's
    /// `expf`) and one division per weight.
    package static func normalizedWeightsPortable(scores: UnsafePointer<Float>, order: UnsafePointer<Int32>, count: Int,
                                                  max m: Float, sum l: Float, into out: UnsafeMutablePointer<Float>) {
        for k in 0..<count {
            let s = scores[Int(order[k])]
            out[k] = s > -.infinity ? platformExp(s - m) / l : 0
        }
    }
}

/// The platform's `expf` (outside `PageKernels`, whose own `exp` is the softmax's).
private func platformExp(_ x: Float) -> Float { exp(x) }
