import KVQuantization

/// What a planner knows about one stream: the tokens it holds, their current tiers, and the scores
/// to rank them by.
///
/// Tokens are ordered by position; index `i` of every array refers to the same token.
public struct StreamInput: Sendable, Hashable {
    /// Positions of the tokens the stream holds, strictly ascending.
    public var positions: [Int32]
    /// Current tier of each token (none `.dropped`). Planners only move tokens down from here.
    public var tiers: [Tier]
    /// The host policy's score of each token for this stream's KV head (e.g. one row of
    /// `ImportanceScores.groupedByKVHead`); `nil` when the policy ranks nothing (StreamingLLM: the
    /// host keeps no middle token).
    public var hostScores: [Float]?
    /// Per-query-head scores of each token (columns = this stream's tokens), from which KVCrush
    /// signatures are built; needed only when representatives are requested.
    public var queryHeadScores: ImportanceScores?

    /// A stream input. `tiers` defaults to all FP16 (a freshly prefilled stream).
    ///
    /// - Precondition: positions strictly ascending; array lengths agree; no token `.dropped`;
    ///   scores finite and non-negative.
    public init(positions: [Int32], tiers: [Tier]? = nil, hostScores: [Float]?, queryHeadScores: ImportanceScores?) {
        let n = positions.count
        for i in positions.indices.dropFirst() {
            precondition(positions[i - 1] < positions[i], "StreamInput: positions must be strictly ascending")
        }
        let tiers = tiers ?? [Tier](repeating: .fp16, count: n)
        precondition(tiers.count == n, "StreamInput: \(tiers.count) tiers for \(n) tokens")
        precondition(!tiers.contains(.dropped), "StreamInput: a stream does not hold dropped tokens")
        if let hostScores {
            precondition(hostScores.count == n, "StreamInput: \(hostScores.count) host scores for \(n) tokens")
            precondition(hostScores.allSatisfy { $0.isFinite && $0 >= 0 }, "StreamInput: host scores must be finite and non-negative")
        }
        if let queryHeadScores {
            precondition(queryHeadScores.tokenCount == n, "StreamInput: query-head scores cover \(queryHeadScores.tokenCount) tokens, stream has \(n)")
        }
        self.positions = positions
        self.tiers = tiers
        self.hostScores = hostScores
        self.queryHeadScores = queryHeadScores
    }

    /// A freshly prefilled stream of `tokenCount` tokens at positions `0 ..< tokenCount`, all FP16.
    public static func prefill(tokenCount: Int, hostScores: [Float]?, queryHeadScores: ImportanceScores?) -> StreamInput {
        StreamInput(positions: (0..<tokenCount).map { Int32($0) }, hostScores: hostScores, queryHeadScores: queryHeadScores)
    }

    /// Number of tokens held.
    public var tokenCount: Int { positions.count }
}
