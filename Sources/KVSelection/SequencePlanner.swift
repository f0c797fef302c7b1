/// From attention weights to a `RetentionPlan` for one sequence after prefill (SnapKV style: score
/// once, compress once).
///
/// For each layer `l` with weights `W_l` (`[queryHeads][queries][keys]`):
/// 1. `scores = policy.queryHeadScores(W_l)` (for `streamingLLM`, H2O scores are still computed, but
///    only as KVCrush signature input);
/// 2. KV-head scores by `groupReduction` over each query group (`groupedByKVHead`);
/// 3. each stream (layer, KV head) of `keyCount` FP16 tokens is planned by `planner` within
///    `budget` (for `pyramidKV`, within that layer's share, below);
/// 4. the assignment becomes a `StreamPlan` (moves for tokens that change tier).
///
/// `full` returns an empty plan for every stream. PyramidKV: every stream first pays its required
/// bytes (sinks, window, headroom, rest tier); the remaining bytes of all layers,
/// `L · (budget − required)`, are split by `PyramidBudget.layerBudgets` (linear, first layer most,
/// same total) and each layer's streams get `required + share_l` as an absolute budget. If some
/// layer's budget does not even cover its required bytes, nothing is redistributed and every layer
/// is planned within `budget` (which then throws, or falls back as `BudgetPlanner` documents).
public struct SequencePlanner: Sendable {
    /// The host policy.
    public var policy: EvictionPolicy
    /// Number of KV heads per layer.
    public var kvHeadCount: Int
    /// How a query group's scores combine into its KV head's (default mean).
    public var groupReduction: GroupReduction

    /// A sequence planner for `policy` with `kvHeadCount` KV heads per layer.
    public init(policy: EvictionPolicy, kvHeadCount: Int, groupReduction: GroupReduction = .mean) {
        precondition(kvHeadCount > 0, "SequencePlanner: kvHeadCount must be positive")
        self.policy = policy
        self.kvHeadCount = kvHeadCount
        self.groupReduction = groupReduction
    }

    /// The stream inputs of one layer, one per KV head.
    ///
    /// - Complexity: that of the policy's score function plus O(H · n).
    public func streamInputs(weights: AttentionWeights) -> [StreamInput] {
        let n = weights.keyCount
        let queryScores = policy.queryHeadScores(weights) ?? .h2o(weights)
        let kvScores = policy.usesScores ? queryScores.groupedByKVHead(kvHeadCount: kvHeadCount, reduction: groupReduction) : nil
        // Signatures use every query head of the layer (shared by its KV heads).
        return (0..<kvHeadCount).map { kv in
            StreamInput.prefill(tokenCount: n, hostScores: kvScores?.scores(head: kv), queryHeadScores: queryScores)
        }
    }

    /// Plans every stream of a sequence after prefill.
    ///
    /// - Parameter layerWeights: one `AttentionWeights` per layer, in layer order, each with a
    ///   query-head count divisible by `kvHeadCount`.
    /// - Throws: budget errors (`ByteBudget.validate`, `.budgetBelowProtectedTokens`).
    /// - Complexity: O(L · (score function + kvHeadCount · planner)).
    public func planPrefill(layerWeights: [AttentionWeights], planner: some StreamPlanner,
                            budget: ByteBudget) throws(SelectionError) -> RetentionPlan {
        if policy == .full {
            return RetentionPlan(streams: layerWeights.indices.flatMap { l in
                (0..<kvHeadCount).map { StreamPlan(layer: l, kvHead: $0, moves: []) }
            })
        }
        let inputs = layerWeights.map { streamInputs(weights: $0) }
        var layerBudgets = [ByteBudget](repeating: budget, count: layerWeights.count)
        if case .pyramidKV(_, let beta) = policy, !layerWeights.isEmpty {
            let c = planner.configuration.costs
            var required: [Int] = []
            var middle = 0
            var everyFloorFits = true
            for l in inputs.indices {
                let input = inputs[l][0]
                let r = planner.requiredByteCount(input, restTier: budget.restTier)
                let b = try budget.byteCount(fp16ByteCount: input.tokenCount * c.byteCount(.fp16))
                everyFloorFits = everyFloorFits && b >= r
                required.append(r)
                middle += max(0, b - r)
            }
            if everyFloorFits {
                let shares = PyramidBudget.layerBudgets(total: middle, layerCount: layerWeights.count, beta: beta)
                for l in layerBudgets.indices {
                    layerBudgets[l].amount = .byteCount(required[l] + shares[l])
                }
            }
        }
        var streams: [StreamPlan] = []
        for l in inputs.indices {
            for (kv, input) in inputs[l].enumerated() {
                let a = try planner.plan(input, budget: layerBudgets[l])
                streams.append(a.streamPlan(layer: l, kvHead: kv))
            }
        }
        return RetentionPlan(streams: streams)
    }
}
