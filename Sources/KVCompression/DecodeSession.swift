import KVQuantization
import KVSelection
import KVStore

extension KVCompressor {
    /// H2O-style decode-time compression of one sequence.
    ///
    /// Call `record` with every decode step's attention result (asked with `returnWeights: true`)
    /// and `appended` after every append; re-planning happens inside `appended`.
    public struct DecodeSession: Sendable {
        public let compressor: KVCompressor
        public let sequence: SequenceID
        /// Per layer: accumulated attention per query head and position.
        public private(set) var accumulators: [H2OAccumulator]
        /// Per layer: tokens appended since the last plan.
        public private(set) var pendingTokenCounts: [Int]
        /// Re-plans carried out so far.
        public private(set) var replanCount = 0

        init(compressor: KVCompressor, sequence: SequenceID) {
            self.compressor = compressor
            self.sequence = sequence
            let c = compressor.store.configuration
            accumulators = (0..<c.layerCount).map { layer in
                var a = H2OAccumulator(headCount: c.queryHeadCount)
                a.appendPositions(count: compressor.store.nextPosition(of: sequence, layer: layer))
                return a
            }
            pendingTokenCounts = Array(repeating: 0, count: c.layerCount)
        }

        /// Adds one attention result's weights (every query of it) to layer `layer`'s scores.
        ///
        /// Straight from each KV head's weights into the layer's accumulator
        /// (`H2OAccumulator.add(streamCount:groupSize:queryCount:positions:weights:)`: the sums of adding
        /// the queries one by one over the union of the streams' positions, bit for bit).
        ///
        /// - Complexity: O(queryHeads · queries · tokens per stream); no allocation once the layer
        ///   tracks every position.
        public mutating func record(layer: Int, _ result: AttentionResult) {
            guard let weights = result.weights else { preconditionFailure("DecodeSession.record: attend with returnWeights: true") }
            record(layer: layer, weights: weights)
        }

        /// Adds one attention call's weights (`attend(…, returnWeights: true)`, every query of it) to
        /// layer `layer`'s scores.
        public mutating func record(layer: Int, weights: [KVHeadWeights]) {
            let c = compressor.store.configuration
            precondition(weights.count == c.kvHeadCount && weights.indices.allSatisfy { weights[$0].kvHead == $0 },
                         "DecodeSession.record: one weights entry per KV head, in KV-head order")
            var needed = 0
            for w in weights { if let last = w.positions.last { needed = max(needed, Int(last) + 1) } }
            if needed > accumulators[layer].tokenCount { accumulators[layer].appendPositions(count: needed - accumulators[layer].tokenCount) }
            // Weights come from the store's softmax: finite and non-negative by construction.
            do {
                try accumulators[layer].add(streamCount: c.kvHeadCount, groupSize: c.groupSize, queryCount: weights.first?.queryCount ?? 0,
                                            positions: { weights[$0].positions }, weights: { weights[$0].weights })
            } catch {
                preconditionFailure("DecodeSession.record: invalid attention weights: \(error)")
            }
        }

        /// Notes `count` tokens appended to `layer` and re-plans the layer once `decodeReplanInterval` of them have
        /// arrived since its last plan.
        ///
        /// - Throws: `CompressionError` (nothing changed then).
        public mutating func appended(layer: Int, count: Int) throws(CompressionError) {
            let store = compressor.store
            let next = store.nextPosition(of: sequence, layer: layer)
            if next > accumulators[layer].tokenCount { accumulators[layer].appendPositions(count: next - accumulators[layer].tokenCount) }
            pendingTokenCounts[layer] += count
            guard pendingTokenCounts[layer] >= compressor.decodeReplanInterval else { return }
            try replan(layer: layer)
            pendingTokenCounts[layer] = 0
        }

        /// Re-plans every stream of `layer` within the budget, with `decodeReplanInterval` FP16 slots of headroom
        /// (`SequencePlanner.planDecode`), and applies the plan.
        ///
        /// - Throws: `CompressionError` (nothing changed then).
        public mutating func replan(layer: Int) throws(CompressionError) {
            let store = compressor.store, c = store.configuration, s = compressor.settings
            let streams = (0..<c.kvHeadCount).map { h in
                let rows = store.tokenTiers(of: sequence, layer: layer, kvHead: h)
                return SequencePlanner.DecodeStream(positions: rows.positions, tiers: rows.tiers)
            }
            let plan: RetentionPlan
            do {
                plan = try SequencePlanner(policy: s.policy, kvHeadCount: c.kvHeadCount, groupReduction: s.groupReduction)
                    .planDecode(layer: layer, streams: streams, scores: accumulators[layer], normalization: s.decodeNormalization,
                                tokenCount: compressor.budgetTokenCount(sequence, layer: layer),
                                planner: compressor.planner(layer: layer, headroomTokenCount: compressor.decodeReplanInterval),
                                budget: s.budget(layer: layer))
            } catch { throw .selection(error) }
            do { try store.apply(plan, to: sequence) } catch { throw .store(error) }
            replanCount += 1
        }
    }
}
