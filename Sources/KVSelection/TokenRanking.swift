import KVQuantization

/// Deterministic ranking of tokens by score, shared by every host policy and by KVCrush signatures.
///
/// Order: higher score first; among equal scores the later token (higher index, which is the later
/// position because streams are ordered by position) comes first. No platform-dependent sort
/// stability is relied on: the order is total.
package enum TokenRanking {
    /// The indices of `scores`, best first: by score descending, ties to the later index.
    ///
    /// - Precondition: no NaN scores.
    /// - Complexity: O(n log n).
    public static func descendingOrder(_ scores: [Float]) -> [Int] {
        precondition(!scores.contains { $0.isNaN }, "TokenRanking: scores must not be NaN")
        return scores.indices.sorted { a, b in
            scores[a] != scores[b] ? scores[a] > scores[b] : a > b
        }
    }

    /// The indices of the `count` best scores (ties to the later index), in ascending index order.
    /// `count` larger than `scores.count` returns every index.
    ///
    /// - Complexity: O(n log n); O(n) when `count ≥ scores.count` (every index, no ranking needed).
    public static func topIndices(_ scores: [Float], count: Int) -> [Int] {
        precondition(count >= 0, "TokenRanking: count must be non-negative")
        if count >= scores.count {
            precondition(!scores.contains { $0.isNaN }, "TokenRanking: scores must not be NaN")
            return Array(scores.indices)
        }
        return descendingOrder(scores).prefix(count).sorted()
    }
}
