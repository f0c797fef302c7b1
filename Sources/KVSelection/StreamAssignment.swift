import KVQuantization

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
