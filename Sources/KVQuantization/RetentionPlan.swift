/// Where tokens of one stream (one layer and KV head of a sequence) should go.
///
/// `moves` names tokens by their original position; a token not named stays where it is. The store
/// applies a move only downwards (a move up, or to a position it does not hold, is a caller bug and
/// traps).
public struct StreamPlan: Sendable, Hashable {
    public var layer: Int
    public var kvHead: Int
    /// (position, target tier) pairs, each position at most once.
    public var moves: [Move]

    public struct Move: Sendable, Hashable {
        public var position: Int32
        public var tier: Tier
        public init(position: Int32, tier: Tier) {
            self.position = position
            self.tier = tier
        }
    }

    public init(layer: Int, kvHead: Int, moves: [Move]) {
        self.layer = layer
        self.kvHead = kvHead
        self.moves = moves
    }
}

/// A set of tier moves for the streams of one sequence, produced by a policy and applied by the
/// store (`KVStore.apply`). Policies never touch storage; the store never decides.
public struct RetentionPlan: Sendable, Hashable {
    public var streams: [StreamPlan]
    public init(streams: [StreamPlan] = []) { self.streams = streams }
}

extension RetentionPlan {
    /// The plan moving the tokens at `positions` of every stream (`layerCount` layers ×
    /// `kvHeadCount` KV heads) to `tier`: e.g. a whole prompt to INT4.
    ///
    /// - Complexity: O(layerCount · kvHeadCount · positions.count).
    public static func uniform(_ tier: Tier, positions: Range<Int32>, layerCount: Int, kvHeadCount: Int) -> RetentionPlan {
        precondition(layerCount >= 0 && kvHeadCount >= 0, "RetentionPlan.uniform: counts must be non-negative")
        let moves = positions.map { StreamPlan.Move(position: $0, tier: tier) }
        return RetentionPlan(streams: (0..<layerCount).flatMap { l in
            (0..<kvHeadCount).map { StreamPlan(layer: l, kvHead: $0, moves: moves) }
        })
    }
}
