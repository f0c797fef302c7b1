import KVQuantization
import KVSelection
import KVStore

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
///   appended so far) with `decodeReplanInterval` FP16 slots reserved, so between re-plans memory stays within
///   the budget plus the documented page slack (one page per tier per stream).
///
/// Policies never see the store: this type is the only bridge. Planners cost each layer with that
/// layer's tier formats (`KVStoreConfiguration.tierFormats(layer:)`, per-tier page capacities
/// included), so a store with per-layer formats is planned layer by layer; per-layer budgets come
/// from `CompressionSettings.layerBudgetScales`.
public struct KVCompressor: Sendable {
    public let store: KVStore
    public let settings: CompressionSettings

    /// - Precondition: `settings.layerBudgetScales`, when set, has one factor per layer of the store.
    public init(store: KVStore, settings: CompressionSettings) {
        precondition(settings.layerBudgetScales.map { $0.count == store.configuration.layerCount } ?? true,
                     "KVCompressor: layerBudgetScales must have one factor per layer (\(store.configuration.layerCount))")
        self.store = store
        self.settings = settings
    }

    /// The planner configuration matching the store's layer `layer`: regions, that layer's tier
    /// formats and page capacity.
    public func plannerConfiguration(layer: Int = 0, headroomTokenCount: Int = 0) -> PlannerConfiguration {
        let c = store.configuration
        return PlannerConfiguration(
            headDim: c.headDim, regions: settings.regions,
            formats: c.tierFormats(layer: layer), pageCapacity: c.pageCapacity, granularity: settings.granularity,
            kvCrush: settings.kvCrush, headroomTokenCount: headroomTokenCount)
    }

    /// Tokens a decode session lets arrive between two plans of a layer, and the FP16 slots each plan
    /// (the prefill's too, when a decode session follows) leaves free for them.
    public var decodeReplanInterval: Int { settings.decodeReplanInterval ?? store.configuration.pageCapacity }

    /// The planner the settings name, configured for the store's layer `layer`.
    public func planner(layer: Int = 0, headroomTokenCount: Int = 0) -> any StreamPlanner {
        let configuration = plannerConfiguration(layer: layer, headroomTokenCount: headroomTokenCount)
        switch settings.planner {
        case .budget: return BudgetPlanner(configuration: configuration)
        case .tiered(let model, let tiers): return TieredPlanner(configuration: configuration, errorModel: model, candidateTiers: tiers)
        case .plain(let share, let tier): return PlainPlanner(configuration: configuration, topShare: share, tier: tier)
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

    /// Whether compressing needs the observation window's attention weights: policies that rank
    /// by score, and KVCrush representatives (their signatures).
    public var needsObservation: Bool { settings.policy.usesScores || settings.budget.representativeShare > 0 }

    /// Compresses a freshly prefilled sequence once, from observation-window queries.
    ///
    /// - Parameters:
    ///   - observationQueries: per layer, `[queryHead][query][headDim]` (the last W prompt queries).
    ///   - queryPositions: per layer, the positions of those queries (ascending, inside the prompt).
    ///     Policies that need no attention (`needsObservation` false) may pass no queries.
    ///   - reservingDecodeHeadroom: leave `decodeReplanInterval` FP16 slots free inside the budget,
    ///     for the tokens a decode session lets arrive before its first plan (so the budget holds at
    ///     every decode step from the first).
    /// - Returns: the plan that was applied.
    /// - Throws: `CompressionError`; the sequence is then unchanged.
    /// - Precondition: every stream of every layer holds exactly positions `0 ..< n` at FP16 (a
    ///   fresh prefill, same `n` in every layer).
    @discardableResult
    public func compressPrefill(_ id: SequenceID, observationQueries: [[Float]], queryPositions: [[Int32]],
                                reservingDecodeHeadroom: Bool = false) throws(CompressionError) -> RetentionPlan {
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
            precondition(zip(qp, qp.dropFirst()).allSatisfy { $0 < $1 } && (qp.last ?? 0) < Int32(n),
                         "KVCompressor.compressPrefill: query positions must be ascending inside the prompt")
            precondition(!qp.isEmpty || !needsObservation,
                         "KVCompressor.compressPrefill: \(settings.policy) needs observation queries")
            // Policies that rank nothing and keep no representatives need no attention at all.
            let dense = needsObservation ? weights(id, layer: layer, queries: observationQueries[layer], queryPositions: qp, keyCount: n)
                : [Float](repeating: 0, count: c.queryHeadCount * qp.count * n)
            do {
                // The window is contiguous in the SnapKV protocol; AttentionWeights places query q at
                // firstQueryPosition + q, which only matters for H2O normalisation.
                layerWeights.append(try AttentionWeights(headCount: c.queryHeadCount, queryCount: qp.count, keyCount: n,
                                                         firstQueryPosition: qp.first.map { Int($0) } ?? n, values: dense))
            } catch { throw .selection(error) }
        }
        let plan: RetentionPlan
        do {
            plan = try SequencePlanner(policy: settings.policy, kvHeadCount: c.kvHeadCount, groupReduction: settings.groupReduction)
                .planPrefill(layerWeights: layerWeights,
                             planners: (0..<c.layerCount).map { planner(layer: $0, headroomTokenCount: reservingDecodeHeadroom ? decodeReplanInterval : 0) },
                             budgets: (0..<c.layerCount).map { settings.budget(layer: $0) })
        } catch { throw .selection(error) }
        do { try store.apply(plan, to: id) } catch { throw .store(error) }
        return plan
    }

    /// `compressPrefill` from an observation window (the same query positions in every layer; an
    /// empty window for policies that need none).
    @discardableResult
    public func compressPrefill(_ id: SequenceID, observation: ObservationWindow,
                                reservingDecodeHeadroom: Bool = false) throws(CompressionError) -> RetentionPlan {
        let layers = store.configuration.layerCount
        let queries = observation.queries.isEmpty ? [[Float]](repeating: [], count: layers) : observation.queries
        return try compressPrefill(id, observationQueries: queries, queryPositions: Array(repeating: observation.positions, count: layers),
                                   reservingDecodeHeadroom: reservingDecodeHeadroom)
    }

    /// Starts keeping `id` within budget during decode.
    public func decodeSession(_ id: SequenceID) -> DecodeSession {
        DecodeSession(compressor: self, sequence: id)
    }
}
