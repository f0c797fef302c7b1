import KVQuantization

/// From attention scores to a `RetentionPlan` for one sequence: once after prefill (SnapKV style:
/// score once, compress once, `planPrefill`) and again during decode (H2O style: accumulated
/// scores, one layer at a time, `planDecode`).
///
/// For each layer `l` with weights `W_l` (`[queryHeads][queries][keys]`):
/// 1. `scores = policy.queryHeadScores(W_l)` (for `streamingLLM`, H2O scores are still computed, but
///    only as KVCrush signature input);
/// 2. KV-head scores by `groupReduction` over each query group (`groupedByKVHead`), and from them
///    each stream's host scores (`EvictionPolicy.hostScores`: recency for StreamingLLM);
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
    /// Threads `planPrefill` spreads the layers' scores and the streams' plans over (`nil`: all
    /// cores). Every stream is planned on its own, so the plan is the same for every thread count.
    public var threadCount: Int? = nil

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
        let positions = (0..<n).map { Int32($0) }
        // Signatures use every query head of the layer (shared by its KV heads).
        return (0..<kvHeadCount).map { kv in
            StreamInput(positions: positions, hostScores: policy.hostScores(positions: positions, kvHeadScores: kvScores, kvHead: kv),
                        queryHeadScores: queryScores)
        }
    }

    /// Plans every stream of a sequence after prefill.
    ///
    /// - Parameter layerWeights: one `AttentionWeights` per layer, in layer order, each with a
    ///   query-head count divisible by `kvHeadCount`.
    /// - Throws: budget errors (`ByteBudget.validate`, `.budgetBelowProtectedTokens`).
    /// - Complexity: O(L · (score function + kvHeadCount · planner)), spread over `threadCount` threads.
    public func planPrefill(layerWeights: [AttentionWeights], planner: some StreamPlanner,
                            budget: ByteBudget) throws(SelectionError) -> RetentionPlan {
        try planPrefill(layerWeights: layerWeights, planners: [any StreamPlanner](repeating: planner, count: layerWeights.count),
                        budgets: [ByteBudget](repeating: budget, count: layerWeights.count))
    }

    /// Plans every stream of a sequence after prefill, layer `l` by `planners[l]` within `budgets[l]`
    /// (per-layer formats and budgets, e.g. from a `SensitivityProfile`; for `pyramidKV` the
    /// redistribution starts from each layer's own budget).
    ///
    /// - Precondition: one planner and one budget per layer.
    /// - Throws: as `planPrefill(layerWeights:planner:budget:)`.
    public func planPrefill(layerWeights: [AttentionWeights], planners: [any StreamPlanner],
                            budgets: [ByteBudget]) throws(SelectionError) -> RetentionPlan {
        precondition(planners.count == layerWeights.count && budgets.count == layerWeights.count,
                     "SequencePlanner.planPrefill: one planner and one budget per layer expected")
        if policy == .full {
            return RetentionPlan(streams: layerWeights.indices.flatMap { l in
                (0..<kvHeadCount).map { StreamPlan(layer: l, kvHead: $0, moves: []) }
            })
        }
        let planner = self
        let inputs = concurrentMap(layerWeights.count, threadCount: threadCount) { planner.streamInputs(weights: layerWeights[$0]) }
        var layerBudgets = budgets
        if case .pyramidKV(_, let beta) = policy, !layerWeights.isEmpty {
            var required: [Int] = []
            var middle = 0
            var everyFloorFits = true
            for l in inputs.indices {
                let input = inputs[l][0], planner = planners[l], budget = budgets[l]
                let r = planner.requiredByteCount(input, restTier: budget.restTier)
                let b = try budget.byteCount(fp16ByteCount: input.tokenCount * planner.configuration.costs.byteCount(.fp16))
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
        // Streams in layer and KV head order, planned concurrently; the first error in that order is thrown.
        let jobs = inputs.indices.flatMap { l in inputs[l].indices.map { (layer: l, kvHead: $0) } }
        let finalBudgets = layerBudgets
        let results = concurrentMap(jobs.count, threadCount: threadCount) { j -> Result<StreamPlan, SelectionError> in
            let (l, kv) = jobs[j]
            return Result { () throws(SelectionError) in
                try planners[l].plan(inputs[l][kv], budget: finalBudgets[l]).streamPlan(layer: l, kvHead: kv)
            }
        }
        var streams: [StreamPlan] = []
        streams.reserveCapacity(results.count)
        for r in results { streams.append(try r.get()) }
        return RetentionPlan(streams: streams)
    }

    /// What one stream of a layer holds during decode: its positions (ascending) and their tiers.
    public struct DecodeStream: Sendable, Hashable {
        public var positions: [Int32]
        public var tiers: [Tier]
        public init(positions: [Int32], tiers: [Tier]) {
            self.positions = positions
            self.tiers = tiers
        }
    }

    /// Re-plans the streams of one layer during decode (H2O style), from the attention accumulated
    /// since prefill.
    ///
    /// Per stream (KV head `h`): the query-head scores of its tokens are `scores` at their
    /// positions (normalised by `normalization`); the host ranks by `EvictionPolicy.hostScores` of
    /// those reduced over the group, except `random`, which draws fresh scores seeded by
    /// `seed + tokenCount` (so its choice moves with the step, reproducibly); the stream is then
    /// planned by `planner` within `budget`, where a fraction is of the FP16 bytes of all
    /// `tokenCount` tokens appended so far (dropped ones included). `full` plans nothing.
    ///
    /// - Parameters:
    ///   - streams: one per KV head, in KV-head order.
    ///   - scores: the layer's accumulated attention per query head and position.
    ///   - tokenCount: tokens appended to the layer so far (its next position).
    /// - Throws: budget errors (`ByteBudget.validate`, `.budgetBelowProtectedTokens`).
    /// - Complexity: O(kvHeadCount · (H · n + planner)) for n tokens per stream and H query heads.
    public func planDecode(layer: Int, streams: [DecodeStream], scores: H2OAccumulator, normalization: H2ONormalization,
                           tokenCount: Int, planner: some StreamPlanner, budget: ByteBudget) throws(SelectionError) -> RetentionPlan {
        precondition(streams.count == kvHeadCount, "SequencePlanner.planDecode: \(streams.count) streams for \(kvHeadCount) KV heads")
        guard policy != .full else { return RetentionPlan(streams: streams.indices.map { StreamPlan(layer: layer, kvHead: $0, moves: []) }) }
        var budget = budget
        if case .fractionOfFP16 = budget.amount {
            budget.amount = .byteCount(try budget.byteCount(fp16ByteCount: tokenCount * planner.configuration.costs.byteCount(.fp16)))
        }
        var plan = RetentionPlan()
        // Per-query-head scores only for planners that read them (representatives' signatures).
        var ownHeadsSuffice = !planner.readsQueryHeadScores(budget: budget) && policy.usesScores
        if case .random = policy { ownHeadsSuffice = false }
        for (h, stream) in streams.enumerated() {
            if ownHeadsSuffice {
                // Only this KV head's query heads: the same host scores, bit for bit (`groupScores`).
                let own = scores.groupScores(kvHead: h, groupSize: scores.headCount / kvHeadCount, at: stream.positions,
                                             normalization: normalization, reduction: groupReduction)
                let kvScores = ImportanceScores(headCount: 1, tokenCount: stream.positions.count, values: own)
                let hostScores = policy.hostScores(positions: stream.positions, kvHeadScores: kvScores, kvHead: 0)
                let input = StreamInput(positions: stream.positions, tiers: stream.tiers, hostScores: hostScores, queryHeadScores: nil)
                plan.streams.append(try planner.plan(input, budget: budget).streamPlan(layer: layer, kvHead: h))
                continue
            }
            let queryScores = scores.scores(at: stream.positions, normalization: normalization)
            let hostScores: [Float]?
            if case .random(let seed) = policy {
                hostScores = ImportanceScores.random(headCount: 1, tokenCount: stream.positions.count, seed: seed &+ UInt64(tokenCount)).scores(head: 0)
            } else {
                let kvScores = policy.usesScores ? queryScores.groupedByKVHead(kvHeadCount: kvHeadCount, reduction: groupReduction) : nil
                hostScores = policy.hostScores(positions: stream.positions, kvHeadScores: kvScores, kvHead: h)
            }
            let input = StreamInput(positions: stream.positions, tiers: stream.tiers, hostScores: hostScores, queryHeadScores: queryScores)
            plan.streams.append(try planner.plan(input, budget: budget).streamPlan(layer: layer, kvHead: h))
        }
        return plan
    }
}
