import KVQuantization

/// The host policy: which middle tokens a stream keeps at FP16, from which scores.
///
/// | policy | scores | middle kept |
/// |---|---|---|
/// | `full` | none | all |
/// | `streamingLLM` | recency (position) | the latest B: the recent window widened to the budget |
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
    /// StreamingLLM: keep S sinks and the most recent tokens the budget holds (the recent window
    /// widened to the budget); drop (or demote) the rest. It ranks by position only: no attention
    /// scores (KVCrush representatives, if asked for, still use H2O scores for their signatures).
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

    /// Whether the policy ranks tokens by attention scores (everything but `full` and
    /// `streamingLLM`, which ranks by position).
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

    /// The scores the host ranks one stream's tokens by: StreamingLLM ranks by position (later is
    /// higher), the score-based policies by their KV head's row of `kvHeadScores` (the query-head
    /// scores reduced over the group), `full` ranks nothing (`nil`).
    ///
    /// - Parameters:
    ///   - positions: the stream's token positions (ascending).
    ///   - kvHeadScores: the policy's scores reduced to KV heads, columns = the stream's tokens
    ///     (`nil` for the policies that do not use scores).
    ///   - kvHead: the stream's KV head.
    /// - Complexity: O(tokens).
    public func hostScores(positions: [Int32], kvHeadScores: ImportanceScores?, kvHead: Int) -> [Float]? {
        switch self {
        case .full: return nil
        // Positions are below 2^31; as Float they keep their order (ties only above 2^24, broken
        // to the later position by TokenRanking anyway).
        case .streamingLLM: return positions.map { Float($0) + 1 }
        default:
            guard let kvHeadScores else { preconditionFailure("EvictionPolicy.hostScores: \(self) needs scores") }
            return kvHeadScores.scores(head: kvHead)
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
            return Array(r.sinks) + Array(r.middle.suffix(middleTokenBudget)) + Array(r.recent)
        default:
            guard let scores else { preconditionFailure("EvictionPolicy: \(self) needs scores") }
            precondition(scores.count == tokenCount, "EvictionPolicy: \(scores.count) scores for \(tokenCount) tokens")
            let middle = Array(scores[r.middle])
            let kept = TokenRanking.topIndices(middle, count: middleTokenBudget).map { $0 + r.middle.lowerBound }
            return Array(r.sinks) + kept + Array(r.recent)
        }
    }
}
