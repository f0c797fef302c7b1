import KVQuantization

/// Softmax attention weights of some queries over a prefix of keys, for every query head.
///
/// Layout: `values[(head · queryCount + query) · keyCount + key]`, i.e. `[heads][queries][keys]`
/// flattened row-major.
///
///     head 0: | query 0: keyCount weights | query 1 | … | query queryCount−1 |
///     head 1: | …                                                          |
///
/// Key `k` is the token at position `k` of the sequence. Query `q` sits at position
/// `firstQueryPosition + q` and (causally) sees keys `0 ... firstQueryPosition + q`; weights of keys
/// it cannot see are expected to be 0 and are not read by the normalised H2O score. By default the
/// queries are the last `queryCount` tokens (`firstQueryPosition = keyCount − queryCount`), which is
/// the prefill case (`queryCount == keyCount`) and the SnapKV observation-window case.
public struct AttentionWeights: Sendable, Hashable {
    /// Number of attention (query) heads.
    public let headCount: Int
    /// Number of queries per head.
    public let queryCount: Int
    /// Number of keys (tokens) each query row covers.
    public let keyCount: Int
    /// Position of query 0 in key space.
    public let firstQueryPosition: Int
    /// The weights, `[heads][queries][keys]` flattened.
    public let values: [Float]

    /// Wraps `values` with its shape, checking that every weight is finite and non-negative.
    ///
    /// - Throws: `SelectionError.weightCountMismatch` when `values.count` is not
    ///   `headCount · queryCount · keyCount`; `.invalidWeight` for a NaN, infinite or negative weight.
    /// - Precondition: counts are non-negative and the queries lie inside the keys
    ///   (`0 ≤ firstQueryPosition`, `firstQueryPosition + queryCount ≤ keyCount`).
    /// - Complexity: O(values.count).
    public init(
        headCount: Int, queryCount: Int, keyCount: Int, firstQueryPosition: Int? = nil, values: [Float]
    ) throws(SelectionError) {
        precondition(headCount >= 0 && queryCount >= 0 && keyCount >= 0,
                     "AttentionWeights: counts must be non-negative")
        let first = firstQueryPosition ?? (keyCount - queryCount)
        precondition(first >= 0 && first + queryCount <= keyCount,
                     "AttentionWeights: queries \(first)..<\(first + queryCount) must lie inside \(keyCount) keys")
        let expected = headCount * queryCount * keyCount
        guard values.count == expected else {
            throw .weightCountMismatch(expected: expected, actual: values.count)
        }
        for (i, v) in values.enumerated() where !(v.isFinite && v >= 0) {
            throw .invalidWeight(index: i, value: v)
        }
        self.headCount = headCount
        self.queryCount = queryCount
        self.keyCount = keyCount
        self.firstQueryPosition = first
        self.values = values
    }

    /// The weight query `query` of head `head` gives key `key`.
    ///
    /// - Complexity: O(1).
    @inlinable public func weight(head: Int, query: Int, key: Int) -> Float {
        precondition(head >= 0 && head < headCount && query >= 0 && query < queryCount
                     && key >= 0 && key < keyCount, "AttentionWeights: index out of range")
        return values[(head * queryCount + query) * keyCount + key]
    }

    /// Number of this object's queries that can causally see key `key`.
    ///
    /// - Complexity: O(1).
    public func visibleQueryCount(key: Int) -> Int {
        // Query q sees key iff firstQueryPosition + q >= key.
        let firstSeeing = max(0, key - firstQueryPosition)
        return max(0, queryCount - firstSeeing)
    }
}
