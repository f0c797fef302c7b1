import Foundation
import KVQuantization

/// The expected relative error of keeping a token at each tier, for `TieredPlanner`'s cost model.
///
/// The model: keeping token `j` at tier `t` costs an expected error `score_j × e_t`, with
/// `e_dropped = 1` (the token's whole contribution is lost) and `e_fp16 = 0` (FP16 is the
/// reference). The default for a quantised tier is derived from its formats: round-to-nearest with
/// `2^b − 1` steps across a group's range leaves a uniform error of RMS `step/√12`, i.e.
///
///     e(format) = 1 / ((2^b − 1) · √12)        relative to the group's range
///
/// (int8 ≈ 0.00113, int4 ≈ 0.0192, int2 ≈ 0.0962), and a tier's error is the mean of its key and
/// value formats'. This is a proxy, not a measurement: it compares quantisation noise relative to a
/// range with losing a token entirely, ignores how errors propagate through softmax and later
/// layers, and treats tokens as independent. Callers with measured per-tier errors (e.g. attention
/// output error on real tensors, normalised so that dropping is 1) should pass them instead.
public struct TierErrorModel: Sendable, Hashable {
    /// `e_t` indexed by `Tier.rawValue`.
    private var errors: [Double]

    /// A model with explicit relative errors for the stored tiers; `.fp16` defaults to 0 and
    /// `.dropped` is always 1. Tiers not named are derived from `TierFormats.standard`.
    ///
    /// - Throws: `.invalidTierError` for a value that is NaN, infinite or outside `0...1`.
    public init(relativeErrors: [Tier: Double]) throws(SelectionError) {
        var model = TierErrorModel.derived(from: .standard)
        for (t, e) in relativeErrors {
            guard e.isFinite && e >= 0 && e <= 1 else { throw .invalidTierError(t, e) }
            if t != .dropped { model.errors[t.rawValue] = e }
        }
        self = model
    }

    private init(errors: [Double]) { self.errors = errors }

    /// The default errors derived from `formats` (see the type's discussion).
    public static func derived(from formats: TierFormats) -> TierErrorModel {
        func e(_ f: StorageFormat) -> Double {
            // Mixed widths: the step of a uniform code at their average bits (not of their widest channel).
            if case .mixedChannelwise(let m) = f { return 1 / ((pow(2, m.averageBits) - 1) * 3.4641016151377544) }
            guard let w = f.codeWidth else { return 0 }
            return 1 / (Double(w.maxCode) * 3.4641016151377544)  // √12
        }
        var errors = [Double](repeating: 1, count: Tier.allCases.count)
        for t in Tier.stored {
            guard let k = formats.keys[t], let v = formats.values[t] else { continue }
            errors[t.rawValue] = (e(k) + e(v)) / 2
        }
        return TierErrorModel(errors: errors)
    }

    /// `e_t` for `tier` (1 for `.dropped`).
    public func relativeError(_ tier: Tier) -> Double { errors[tier.rawValue] }
}

