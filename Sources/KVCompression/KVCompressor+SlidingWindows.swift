import KVQuantization
import KVSelection
import KVStore

extension KVCompressor {
    /// The tokens a layer's fraction budget is a fraction of: every token appended so far, or, in a
    /// layer with a sliding window W, at most W (what the layer keeps: the rest is evicted anyway).
    public func budgetTokenCount(_ id: SequenceID, layer: Int) -> Int {
        let next = store.nextPosition(of: id, layer: layer)
        return store.configuration.slidingWindow(layer: layer).map { min($0, next) } ?? next
    }

    /// The prefill plan: full layers by `SequencePlanner.planPrefill` (the policy's scores over
    /// positions `0 ..< n`); layers with a sliding window over the tokens they still hold, as a
    /// decode re-plan (`SequencePlanner.planDecode`) from the observation window's summed (H2O)
    /// attention, their fraction budget counting only those tokens (`budgetTokenCount`). PyramidKV
    /// shares its budget among the full layers only.
    func planPrefill(_ id: SequenceID, layerWeights: [AttentionWeights], headroomTokenCount: Int) throws(CompressionError) -> RetentionPlan {
        let c = store.configuration
        let planners = (0..<c.layerCount).map { planner(layer: $0, headroomTokenCount: headroomTokenCount) }
        var sequencePlanner = SequencePlanner(policy: settings.policy, kvHeadCount: c.kvHeadCount, groupReduction: settings.groupReduction)
        sequencePlanner.threadCount = settings.planningThreadCount
        let full = (0..<c.layerCount).filter { c.slidingWindow(layer: $0) == nil }
        do {
            var plan = try sequencePlanner.planPrefill(layerWeights: full.map { layerWeights[$0] }, planners: full.map { planners[$0] },
                                                       budgets: full.map { settings.budget(layer: $0) })
            for i in plan.streams.indices { plan.streams[i].layer = full[plan.streams[i].layer] }
            for layer in 0..<c.layerCount where c.slidingWindow(layer: layer) != nil {
                var scores = H2OAccumulator(headCount: c.queryHeadCount)
                scores.add(layerWeights[layer])
                let streams = (0..<c.kvHeadCount).map { h in
                    let rows = store.tokenTiers(of: id, layer: layer, kvHead: h)
                    return SequencePlanner.DecodeStream(positions: rows.positions, tiers: rows.tiers)
                }
                plan.streams += try sequencePlanner.planDecode(layer: layer, streams: streams, scores: scores, normalization: .none,
                                                               tokenCount: budgetTokenCount(id, layer: layer), planner: planners[layer],
                                                               budget: settings.budget(layer: layer)).streams
            }
            return plan
        } catch { throw .selection(error) }
    }
}
