import KVQuantization

/// Importance of each token for each head: a `headCount × tokenCount` matrix of finite,
/// non-negative scores, higher meaning more important.
///
/// Layout: `values[head · tokenCount + token]`. The heads are query heads when the scores come
/// from attention weights, or KV heads after `groupedByKVHead(kvHeadCount:reduction:)`.
public struct ImportanceScores: Sendable, Hashable {
    /// Number of heads (rows).
    public let headCount: Int
    /// Number of tokens (columns).
    public let tokenCount: Int
    /// The scores, `[heads][tokens]` flattened.
    public let values: [Float]

    /// Wraps a score matrix.
    ///
    /// - Precondition: `values.count == headCount · tokenCount`; every score finite and
    ///   non-negative (scores computed by this module always are; callers supplying their own must
    ///   check).
    /// - Complexity: O(values.count).
    public init(headCount: Int, tokenCount: Int, values: [Float]) {
        precondition(headCount >= 0 && tokenCount >= 0, "ImportanceScores: counts must be non-negative")
        precondition(values.count == headCount * tokenCount,
                     "ImportanceScores: \(values.count) values for \(headCount) heads × \(tokenCount) tokens")
        precondition(values.allSatisfy { $0.isFinite && $0 >= 0 },
                     "ImportanceScores: scores must be finite and non-negative")
        self.headCount = headCount
        self.tokenCount = tokenCount
        self.values = values
    }

    /// The score of `token` for `head`.
    ///
    /// - Complexity: O(1).
    @inlinable public subscript(head head: Int, token token: Int) -> Float {
        precondition(head >= 0 && head < headCount && token >= 0 && token < tokenCount,
                     "ImportanceScores: index out of range")
        return values[head * tokenCount + token]
    }

    /// The scores of one head, one per token.
    ///
    /// - Complexity: O(tokenCount).
    public func scores(head: Int) -> [Float] {
        precondition(head >= 0 && head < headCount, "ImportanceScores: head \(head) out of range")
        return Array(values[head * tokenCount ..< (head + 1) * tokenCount])
    }

    /// The scores restricted to the tokens at `tokenIndices` (in that order), for every head.
    ///
    /// - Complexity: O(headCount · tokenIndices.count).
    public func columns(_ tokenIndices: [Int]) -> ImportanceScores {
        var out: [Float] = []
        out.reserveCapacity(headCount * tokenIndices.count)
        for h in 0..<headCount {
            for t in tokenIndices {
                precondition(t >= 0 && t < tokenCount, "ImportanceScores: token \(t) out of range")
                out.append(values[h * tokenCount + t])
            }
        }
        return ImportanceScores(headCount: headCount, tokenCount: tokenIndices.count, values: out)
    }

    /// Per-token sum over all heads.
    ///
    /// - Complexity: O(headCount · tokenCount).
    public func summedOverHeads() -> [Float] {
        var out = [Float](repeating: 0, count: tokenCount)
        for h in 0..<headCount {
            for t in 0..<tokenCount { out[t] += values[h * tokenCount + t] }
        }
        return out
    }

    /// Scores of the KV heads under grouped-query attention: query head `h` belongs to KV head
    /// `h / (headCount / kvHeadCount)`, and a KV head's score is the mean (default) or the maximum
    /// over its group.
    ///
    /// - Precondition: `kvHeadCount > 0` divides `headCount`.
    /// - Complexity: O(headCount · tokenCount).
    public func groupedByKVHead(kvHeadCount: Int, reduction: GroupReduction = .mean) -> ImportanceScores {
        precondition(kvHeadCount > 0 && headCount >= kvHeadCount && headCount % kvHeadCount == 0,
                     "ImportanceScores: kvHeadCount \(kvHeadCount) must divide headCount \(headCount)")
        let group = headCount / kvHeadCount
        var out = [Float](repeating: 0, count: kvHeadCount * tokenCount)
        for kv in 0..<kvHeadCount {
            for t in 0..<tokenCount {
                var acc: Float = reduction == .mean ? 0 : -.infinity
                for g in 0..<group {
                    let v = values[(kv * group + g) * tokenCount + t]
                    switch reduction {
                    case .mean: acc += v
                    case .max: acc = Swift.max(acc, v)
                    }
                }
                out[kv * tokenCount + t] = reduction == .mean ? acc / Float(group) : acc
            }
        }
        return ImportanceScores(headCount: kvHeadCount, tokenCount: tokenCount, values: out)
    }
}

/// How the scores of the query heads sharing one KV head (grouped-query attention) are combined.
public enum GroupReduction: Sendable, Hashable {
    /// The mean over the group (default).
    case mean
    /// The maximum over the group.
    case max
}
