import KVQuantization
import KVSelection

/// How a sequence is compressed: the host policy, the planner, the byte budget and the KVCrush
/// settings.
public struct CompressionSettings: Sendable {
    /// Which planner spends the budget.
    public enum PlannerKind: Sendable {
        /// Host keeps top-B at FP16, KVCrush representatives of the rest at `budget.representativeTier`
        /// with `budget.representativeShare` of the bytes, the rest at `budget.restTier`.
        case budget
        /// The tiered planner: FP16 / INT8 / INT4 split chosen from the scores and tier costs, then
        /// KVCrush representatives of the tail (`TieredPlanner`).
        case tiered(TierErrorModel, candidateTiers: [Tier])
    }

    public var policy: EvictionPolicy
    public var budget: ByteBudget
    public var planner: PlannerKind
    public var kvCrush: KVCrushSelector
    public var granularity: Granularity
    public var groupReduction: GroupReduction
    /// During decode: normalise H2O scores by the number of queries that could see each token.
    public var decodeNormalization: H2ONormalization

    public init(policy: EvictionPolicy, budget: ByteBudget, planner: PlannerKind = .budget,
                kvCrush: KVCrushSelector = KVCrushSelector(), granularity: Granularity = .token,
                groupReduction: GroupReduction = .mean, decodeNormalization: H2ONormalization = .none) {
        self.policy = policy
        self.budget = budget
        self.planner = planner
        self.kvCrush = kvCrush
        self.granularity = granularity
        self.groupReduction = groupReduction
        self.decodeNormalization = decodeNormalization
    }
}

/// Compression failed: the budget is invalid or too small, or applying the plan hit the store's
/// byte limit. The sequence is unchanged.
public enum CompressionError: Error, Equatable, Sendable, CustomStringConvertible {
    case selection(SelectionError)
    case store(KVStoreError)

    public var description: String {
        switch self {
        case .selection(let e): "compression: \(e)"
        case .store(let e): "compression: \(e)"
        }
    }
}

/// Runs a `KVSelection` policy against a store's sequence: scores from the store's own attention
/// weights, a plan from the planner, applied by the store.
///
/// - `compressPrefill`: SnapKV style. After the prompt is appended at FP16, the observation-window
///   queries attend over it; their weights score every token; each stream is planned within the
///   budget (a fraction of the stream's FP16 bytes, sinks and recent window included) and the plan
///   applied once.
/// - `DecodeSession`: H2O style. Every decode step's attention weights are accumulated per query
///   head and position; whenever a layer has received a page of new tokens since its last plan,
///   that layer is re-planned within the budget (for a fraction, of the FP16 bytes of every token
///   appended so far) with a page of FP16 headroom reserved, so between re-plans memory stays within
///   the budget plus the documented page slack (one page per tier per stream).
///
/// Policies never see the store: this type is the only bridge.
public struct KVCompressor: Sendable {
    public let store: KVStore
    public let settings: CompressionSettings

    public init(store: KVStore, settings: CompressionSettings) {
        self.store = store
        self.settings = settings
    }

    /// The planner configuration matching the store: regions, tier formats and page capacity.
    public func plannerConfiguration(headroomTokenCount: Int = 0) -> PlannerConfiguration {
        let c = store.configuration
        return PlannerConfiguration(
            headDim: c.headDim, regions: StreamRegions(sinkTokenCount: c.sinkCount, recentTokenCount: c.recentCount),
            formats: c.tierFormats, pageCapacity: c.pageCapacity, granularity: settings.granularity,
            kvCrush: settings.kvCrush, headroomTokenCount: headroomTokenCount)
    }

    func planner(headroomTokenCount: Int = 0) -> any StreamPlanner {
        let configuration = plannerConfiguration(headroomTokenCount: headroomTokenCount)
        switch settings.planner {
        case .budget: return BudgetPlanner(configuration: configuration)
        case .tiered(let model, let tiers): return TieredPlanner(configuration: configuration, errorModel: model, candidateTiers: tiers)
        }
    }

    /// The attention weights of `queries` over every layer-`layer` token, `[queryHead][query][position]`
    /// over positions `0 ..< keyCount` (0 where a stream lacks a position).
    func weights(_ id: SequenceID, layer: Int, queries: [Float], queryPositions: [Int32], keyCount: Int) -> [Float] {
        let c = store.configuration, nq = queryPositions.count
        let result = store.attend(id, layer: layer, queries: queries, queryCount: nq, queryPositions: queryPositions, returnWeights: true)
        var dense = [Float](repeating: 0, count: c.queryHeadCount * nq * keyCount)
        for w in result.weights! {
            for g in 0..<c.groupSize {
                let h = w.kvHead * c.groupSize + g
                for i in 0..<nq {
                    let row = w.row(groupHead: g, query: i)
                    for (k, p) in w.positions.enumerated() where Int(p) < keyCount {
                        dense[(h * nq + i) * keyCount + Int(p)] = row[row.startIndex + k]
                    }
                }
            }
        }
        return dense
    }

    /// Compresses a freshly prefilled sequence once, from observation-window queries.
    ///
    /// - Parameters:
    ///   - observationQueries: per layer, `[queryHead][query][headDim]` (the last W prompt queries).
    ///   - queryPositions: per layer, the positions of those queries (ascending, inside the prompt).
    /// - Returns: the plan that was applied.
    /// - Throws: `CompressionError`; the sequence is then unchanged.
    /// - Precondition: every stream of every layer holds exactly positions `0 ..< n` at FP16 (a
    ///   fresh prefill, same `n` in every layer).
    @discardableResult
    public func compressPrefill(_ id: SequenceID, observationQueries: [[Float]],
                                queryPositions: [[Int32]]) throws(CompressionError) -> RetentionPlan {
        let c = store.configuration
        precondition(observationQueries.count == c.layerCount && queryPositions.count == c.layerCount,
                     "KVCompressor.compressPrefill: one query block per layer expected")
        let n = store.nextPosition(of: id, layer: 0)
        var layerWeights = [AttentionWeights]()
        for layer in 0..<c.layerCount {
            precondition(store.nextPosition(of: id, layer: layer) == n, "KVCompressor.compressPrefill: layers hold different token counts")
            for h in 0..<c.kvHeadCount {
                let counts = store.tokenCounts(of: id, layer: layer, kvHead: h)
                precondition(counts[.fp16] == n, "KVCompressor.compressPrefill: layer \(layer) KV head \(h) is not a fresh FP16 prefill")
            }
            let qp = queryPositions[layer]
            precondition(!qp.isEmpty && zip(qp, qp.dropFirst()).allSatisfy { $0 < $1 } && qp.last! < Int32(n),
                         "KVCompressor.compressPrefill: query positions must be ascending inside the prompt")
            // Policies that rank nothing and keep no representatives need no attention at all.
            let needsWeights = settings.policy.usesScores || settings.budget.representativeShare > 0
            let dense = needsWeights ? weights(id, layer: layer, queries: observationQueries[layer], queryPositions: qp, keyCount: n)
                : [Float](repeating: 0, count: c.queryHeadCount * qp.count * n)
            do {
                // The window is contiguous in the SnapKV protocol; AttentionWeights places query q at
                // firstQueryPosition + q, which only matters for H2O normalisation.
                layerWeights.append(try AttentionWeights(headCount: c.queryHeadCount, queryCount: qp.count, keyCount: n,
                                                         firstQueryPosition: Int(qp[0]), values: dense))
            } catch { throw .selection(error) }
        }
        let plan: RetentionPlan
        do {
            plan = try SequencePlanner(policy: settings.policy, kvHeadCount: c.kvHeadCount, groupReduction: settings.groupReduction)
                .planPrefill(layerWeights: layerWeights, planner: planner(), budget: settings.budget)
        } catch { throw .selection(error) }
        do { try store.apply(plan, to: id) } catch { throw .store(error) }
        return plan
    }

    /// Starts keeping `id` within budget during decode.
    public func decodeSession(_ id: SequenceID) -> DecodeSession {
        DecodeSession(compressor: self, sequence: id)
    }

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
        public mutating func record(layer: Int, _ result: AttentionResult) {
            guard let weights = result.weights else { preconditionFailure("DecodeSession.record: attend with returnWeights: true") }
            let c = compressor.store.configuration
            let union = Set(weights.flatMap(\.positions)).sorted()
            let needed = Int(union.last ?? -1) + 1
            if needed > accumulators[layer].tokenCount { accumulators[layer].appendPositions(count: needed - accumulators[layer].tokenCount) }
            var index = [Int32: Int](minimumCapacity: union.count)
            for (k, p) in union.enumerated() { index[p] = k }
            let nq = weights.first?.queryCount ?? 0
            for i in 0..<nq {
                var row = [Float](repeating: 0, count: c.queryHeadCount * union.count)
                for w in weights {
                    for g in 0..<c.groupSize {
                        let h = w.kvHead * c.groupSize + g, r = w.row(groupHead: g, query: i)
                        for (k, p) in w.positions.enumerated() { row[h * union.count + index[p]!] = r[r.startIndex + k] }
                    }
                }
                // Weights come from the store's softmax: finite and non-negative by construction.
                do { try accumulators[layer].add(queryWeights: row, keyPositions: union) } catch {
                    preconditionFailure("DecodeSession.record: invalid attention weights: \(error)")
                }
            }
        }

        /// Notes `count` tokens appended to `layer` and re-plans the layer once a page of them has
        /// arrived since its last plan.
        ///
        /// - Throws: `CompressionError` (nothing changed then).
        public mutating func appended(layer: Int, count: Int) throws(CompressionError) {
            let store = compressor.store
            let next = store.nextPosition(of: sequence, layer: layer)
            if next > accumulators[layer].tokenCount { accumulators[layer].appendPositions(count: next - accumulators[layer].tokenCount) }
            pendingTokenCounts[layer] += count
            guard pendingTokenCounts[layer] >= store.configuration.pageCapacity else { return }
            try replan(layer: layer)
            pendingTokenCounts[layer] = 0
        }

        /// Re-plans every stream of `layer` within the budget, with a page of FP16 headroom.
        public mutating func replan(layer: Int) throws(CompressionError) {
            let store = compressor.store, c = store.configuration, s = compressor.settings
            let planner = compressor.planner(headroomTokenCount: c.pageCapacity)
            let next = store.nextPosition(of: sequence, layer: layer)
            let costs = planner.configuration.costs
            var budget = s.budget
            if case .fractionOfFP16 = budget.amount {
                do { budget.amount = .byteCount(try budget.byteCount(fp16ByteCount: next * costs.byteCount(.fp16))) } catch {
                    throw .selection(error)
                }
            }
            var plan = RetentionPlan()
            for h in 0..<c.kvHeadCount {
                let rows = store.tokenTiers(of: sequence, layer: layer, kvHead: h)
                let queryScores = accumulators[layer].scores(at: rows.positions, normalization: s.decodeNormalization)
                var hostScores: [Float]? = nil
                if s.policy.usesScores {
                    if case .random(let seed) = s.policy {
                        hostScores = ImportanceScores.random(headCount: 1, tokenCount: rows.positions.count, seed: seed &+ UInt64(next)).scores(head: 0)
                    } else {
                        hostScores = queryScores.groupedByKVHead(kvHeadCount: c.kvHeadCount, reduction: s.groupReduction).scores(head: h)
                    }
                }
                let input = StreamInput(positions: rows.positions, tiers: rows.tiers, hostScores: hostScores, queryHeadScores: queryScores)
                do { plan.streams.append(try planner.plan(input, budget: budget).streamPlan(layer: layer, kvHead: h)) } catch {
                    throw .selection(error)
                }
            }
            do { try store.apply(plan, to: sequence) } catch { throw .store(error) }
            replanCount += 1
        }
    }
}

extension KVStore {
    /// One stream's stored positions (ascending) and tiers, without decoding anything.
    public func tokenTiers(of id: SequenceID, layer: Int, kvHead: Int) -> (positions: [Int32], tiers: [Tier]) {
        let entries = withStream(id, layer, kvHead, "tokenTiers") { $0.entriesByPosition() }
        return (entries.map(\.position), entries.map { Tier(rawValue: $0.tier)! })
    }
}

extension KVStore {
    /// The most a stream's pages can exceed the per-token byte count a planner budgets
    /// (`TierCosts`): one partly filled page per stored tier, where a tier with per-channel keys
    /// counts its staging page (FP16 keys), the larger of its two layouts.
    public var slackByteBoundPerStream: Int {
        codecs.reduce(0) { $0 + max($1.layout.byteCount, $1.stagingLayout?.byteCount ?? 0) }
    }

    /// Bytes of one stream's pages.
    public func byteCount(of id: SequenceID, layer: Int, kvHead: Int) -> Int {
        withStream(id, layer, kvHead, "byteCount") { $0.byteCount }
    }
}
