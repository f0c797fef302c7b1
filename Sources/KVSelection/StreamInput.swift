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

/// Why a token got its tier in a plan.
public enum TokenRole: Sendable, Hashable {
    /// One of the first S tokens.
    case sink
    /// One of the last R tokens.
    case recent
    /// Kept by the host policy (or upgraded by the tiered planner).
    case kept
    /// A KVCrush representative.
    case representative
    /// Neither: sent to the rest tier.
    case rest
}

/// A planner's decision for one stream: the tier of every token, its byte count, and the budget it
/// respects.
public struct StreamAssignment: Sendable, Hashable {
    /// Positions of the stream's tokens (as given).
    public var positions: [Int32]
    /// Tiers before the plan (as given).
    public var previousTiers: [Tier]
    /// Tier of every token after the plan; never above its previous tier.
    public var tiers: [Tier]
    /// Why each token got its tier.
    public var roles: [TokenRole]
    /// Σ `TierCosts.byteCount` over the tokens' new tiers.
    public var byteCount: Int
    /// The budget in bytes. `byteCount ≤ budgetByteCount` except with
    /// `.openVINOAddedOnTop`, where `byteCount ≤ budgetByteCount + representativeByteAllowance`.
    public var budgetByteCount: Int
    /// Bytes reserved for representatives (0 when KVCrush is off).
    public var representativeByteAllowance: Int

    /// Number of tokens whose new tier is `tier`.
    public func tokenCount(_ tier: Tier) -> Int { tiers.reduce(0) { $0 + ($1 == tier ? 1 : 0) } }

    /// Number of tokens with role `role`.
    public func tokenCount(role: TokenRole) -> Int { roles.reduce(0) { $0 + ($1 == role ? 1 : 0) } }

    /// The store-facing plan: one move for every token whose tier changes, in position order.
    public func streamPlan(layer: Int, kvHead: Int) -> StreamPlan {
        var moves: [StreamPlan.Move] = []
        for i in positions.indices where tiers[i] != previousTiers[i] {
            moves.append(StreamPlan.Move(position: positions[i], tier: tiers[i]))
        }
        return StreamPlan(layer: layer, kvHead: kvHead, moves: moves)
    }
}
