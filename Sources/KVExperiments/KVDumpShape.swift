import KVQuantization

/// The dimensions shared by every layer of a KV dump, and the grouped-query-attention mapping.
///
/// Tokens are positions `0 ..< tokenCount`; queries exist for the last `queryCount` positions,
/// `queryStart ..< tokenCount`. Query head `h` reads KV head `h / groupSize`, where
/// `groupSize = headCount / kvHeadCount`.
public struct KVDumpShape: Sendable, Hashable, CustomStringConvertible {
    /// Query heads per layer (`num_heads`).
    public let headCount: Int
    /// Key/value heads per layer (`num_kv_heads`); divides `headCount`.
    public let kvHeadCount: Int
    /// Elements of one head vector (`head_dim`).
    public let headDim: Int
    /// Tokens in the cache (`tokens`).
    public let tokenCount: Int
    /// First position that has a query (`query_start`).
    public let queryStart: Int

    /// Checks and stores the dimensions.
    ///
    /// - Throws: `invalidMetadata` for a non-positive count or a `queryStart` outside
    ///   `0 ... tokenCount`, or a tensor size that overflows; `headsNotDivisible`.
    public init(headCount: Int, kvHeadCount: Int, headDim: Int, tokenCount: Int, queryStart: Int)
        throws(KVDumpError)
    {
        for (key, value) in [("num_heads", headCount), ("num_kv_heads", kvHeadCount),
                             ("head_dim", headDim), ("tokens", tokenCount)] where value <= 0 {
            throw .invalidMetadata(key: key, value: String(value), expected: "a positive integer")
        }
        guard (0...tokenCount).contains(queryStart) else {
            throw .invalidMetadata(key: "query_start", value: String(queryStart),
                                   expected: "an integer in 0...\(tokenCount) (tokens)")
        }
        guard headCount % kvHeadCount == 0 else {
            throw .headsNotDivisible(heads: headCount, kvHeads: kvHeadCount)
        }
        for (key, dims) in [("tokens", [kvHeadCount, tokenCount, headDim]),
                            ("num_heads", [headCount, tokenCount, headDim])] {
            var product = 1
            for d in dims {
                let (p, overflow) = product.multipliedReportingOverflow(by: d)
                guard !overflow else {
                    throw .invalidMetadata(key: key, value: String(d), expected: "a tensor size that fits in memory")
                }
                product = p
            }
        }
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim
        self.tokenCount = tokenCount
        self.queryStart = queryStart
    }

    /// Positions with a query: `tokenCount − queryStart`.
    public var queryCount: Int { tokenCount - queryStart }

    /// Query heads that share one KV head: `headCount / kvHeadCount`.
    public var groupSize: Int { headCount / kvHeadCount }

    /// The KV head that query head `head` reads: `head / groupSize`.
    ///
    /// - Precondition: `0 <= head < headCount`.
    public func kvHead(forQueryHead head: Int) -> Int {
        precondition((0..<headCount).contains(head), "KVDumpShape: query head \(head) not in 0..<\(headCount)")
        return head / groupSize
    }

    /// Shape of a layer's `keys` and `values`: `[kvHeadCount, tokenCount, headDim]`.
    public var kvShape: [Int] { [kvHeadCount, tokenCount, headDim] }

    /// Shape of a layer's `queries`: `[headCount, queryCount, headDim]`.
    public var queryShape: [Int] { [headCount, queryCount, headDim] }

    /// Elements of one layer's `keys` (or `values`).
    public var kvElementCount: Int { kvHeadCount * tokenCount * headDim }

    /// Elements of one layer's `queries`.
    public var queryElementCount: Int { headCount * queryCount * headDim }

    public var description: String {
        "\(headCount) heads / \(kvHeadCount) KV heads × \(headDim), \(tokenCount) tokens, queries from \(queryStart)"
    }
}
