/// The host policy: which middle tokens a stream keeps at FP16, from which scores.
///
/// | policy | scores | middle kept |
/// |---|---|---|
/// | `full` | none | all |
/// | `streamingLLM` | none | none (only sinks + recent window) |
/// | `h2o` | accumulated attention from all queries | top-B |
/// | `snapKV` | observation window, pooled | top-B |
/// | `tova` | last query | top-B |
/// | `random` | seeded uniform | top-B |
/// | `pyramidKV` | as `snapKV` | top-B_l, B_l falling linearly with depth (`PyramidBudget`) |
///
/// Top-B is by score with ties to the later position (`TokenRanking`). Sinks and the recent window
/// are always kept at FP16 and are counted inside every budget.
public enum EvictionPolicy: Sendable, Hashable {
    /// Keep everything.
    case full
    /// Keep S sinks and R recent tokens; drop (or demote) the middle.
    case streamingLLM
    /// Heavy hitters: accumulated attention.
    case h2o(H2ONormalization = .none)
    /// Observation-window attention, pooled along positions.
    case snapKV(SnapKVOptions = SnapKVOptions())
    /// Attention from the most recent query.
    case tova
    /// Seeded uniform scores.
    case random(seed: UInt64)
    /// SnapKV scores with a per-layer budget that falls linearly with depth (β, default 20).
    case pyramidKV(SnapKVOptions = SnapKVOptions(), beta: Double = PyramidBudget.defaultBeta)

    /// Whether the policy ranks tokens by score (everything but `full` and `streamingLLM`).
    public var usesScores: Bool {
        switch self {
        case .full, .streamingLLM: false
        default: true
        }
    }

    /// The per-query-head scores this policy ranks by, computed from `weights`; `nil` for `full` and
    /// `streamingLLM`. `random` ignores the weights' values and uses only their shape.
    ///
    /// - Complexity: that of the score function (at most O(heads · queries · keys)).
    public func queryHeadScores(_ weights: AttentionWeights) -> ImportanceScores? {
        switch self {
        case .full, .streamingLLM: nil
        case .h2o(let n): .h2o(weights, normalization: n)
        case .snapKV(let o), .pyramidKV(let o, _): .snapKV(weights, options: o)
        case .tova: .tova(weights)
        case .random(let seed): .random(headCount: weights.headCount, tokenCount: weights.keyCount, seed: seed)
        }
    }

    /// The token indices (ascending) a stream of `tokenCount` tokens keeps when the host may keep
    /// `middleTokenBudget` middle tokens: the protected regions plus the policy's middle choice.
    ///
    /// `scores` (one per token, e.g. one KV head's row) is required for score-based policies and
    /// ignored otherwise.
    ///
    /// - Complexity: O(n log n).
    public func keptTokenIndices(
        tokenCount: Int, regions: StreamRegions, scores: [Float]?, middleTokenBudget: Int
    ) -> [Int] {
        precondition(middleTokenBudget >= 0, "EvictionPolicy: middleTokenBudget must be non-negative")
        let r = regions.split(tokenCount: tokenCount)
        switch self {
        case .full:
            return Array(0..<tokenCount)
        case .streamingLLM:
            return Array(r.sinks) + Array(r.recent)
        default:
            guard let scores else { preconditionFailure("EvictionPolicy: \(self) needs scores") }
            precondition(scores.count == tokenCount, "EvictionPolicy: \(scores.count) scores for \(tokenCount) tokens")
            let middle = Array(scores[r.middle])
            let kept = TokenRanking.topIndices(middle, count: middleTokenBudget).map { $0 + r.middle.lowerBound }
            return Array(r.sinks) + kept + Array(r.recent)
        }
    }
}
