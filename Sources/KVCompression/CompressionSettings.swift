import KVQuantization
import KVSelection

/// How a sequence is compressed: the host policy, the protected regions (sinks and recent window),
/// the planner, the byte budget and the KVCrush settings.
public struct CompressionSettings: Sendable, Hashable {
    /// Which planner spends the budget.
    public enum PlannerKind: Sendable, Hashable {
        /// Host keeps top-B at FP16, KVCrush representatives of the rest at `budget.representativeTier`
        /// with `budget.representativeShare` of the bytes, the rest at `budget.restTier`.
        case budget
        /// The tiered planner: FP16 / INT8 / INT4 split chosen from the scores and tier costs, then
        /// KVCrush representatives of the tail (`TieredPlanner`). A `nil` error model is derived
        /// from the store's tier formats (`TierErrorModel.derived(from:)`).
        case tiered(TierErrorModel?, candidateTiers: [Tier])
        /// The plain plan: the top `topShare` of the middle by score at FP16, the next at `tier`
        /// until the budget is spent (`PlainPlanner`).
        case plain(topShare: Double, tier: Tier)
    }

    /// The host policy: which scores rank the middle tokens.
    public var policy: EvictionPolicy
    /// The sinks and the recent window every stream keeps at FP16 (default 4 and 32).
    public var regions: StreamRegions
    /// How many bytes each stream may keep, and how they are shared with KVCrush representatives.
    public var budget: ByteBudget
    /// Which planner spends the budget (default `.budget`).
    public var planner: PlannerKind
    /// How KVCrush representatives are chosen.
    public var kvCrush: KVCrushSelector
    /// Token or page granularity.
    public var granularity: Granularity
    /// How a query group's scores combine into its KV head's (default mean).
    public var groupReduction: GroupReduction
    /// During decode: normalise H2O scores by the number of queries that could see each token.
    public var decodeNormalization: H2ONormalization
    /// During decode: re-plan a layer after this many new tokens (`nil`: the store's page
    /// capacity). Each plan leaves that many FP16 slots free inside the budget for the tokens
    /// appended before the next, so the budget holds at every step; a shorter interval costs fewer
    /// reserved bytes and more planning.
    public var decodeReplanInterval: Int?
    /// Per layer, a factor on `budget` (`nil`: every layer gets `budget`). Layer `l`'s streams are
    /// planned within `budget.scaled(by: layerBudgetScales[l])`, at prefill and during decode; with
    /// factors of mean 1 the sequence's total stays `budget` × its FP16 bytes (as
    /// `SensitivityProfile.allocation` makes them, so layers whose formats cost more get more).
    public var layerBudgetScales: [Double]?
    /// Threads planning the prompt's streams spreads over (`nil`: all cores); the plan is the same
    /// for every count (`SequencePlanner.threadCount`).
    public var planningThreadCount: Int? = nil

    public init(policy: EvictionPolicy, regions: StreamRegions = StreamRegions(), budget: ByteBudget, planner: PlannerKind = .budget,
                kvCrush: KVCrushSelector = KVCrushSelector(), granularity: Granularity = .token,
                groupReduction: GroupReduction = .mean, decodeNormalization: H2ONormalization = .none,
                decodeReplanInterval: Int? = nil, layerBudgetScales: [Double]? = nil) {
        precondition(decodeReplanInterval.map { $0 > 0 } ?? true, "CompressionSettings: decodeReplanInterval must be positive")
        precondition(layerBudgetScales?.allSatisfy { $0.isFinite && $0 >= 0 } ?? true,
                     "CompressionSettings: layerBudgetScales must be finite and non-negative")
        self.policy = policy
        self.regions = regions
        self.budget = budget
        self.planner = planner
        self.kvCrush = kvCrush
        self.granularity = granularity
        self.groupReduction = groupReduction
        self.decodeNormalization = decodeNormalization
        self.decodeReplanInterval = decodeReplanInterval
        self.layerBudgetScales = layerBudgetScales
    }

    /// The budget of `layer`'s streams: `budget` scaled by the layer's factor, if any.
    ///
    /// - Precondition: `layerBudgetScales`, when set, has an entry for `layer`.
    public func budget(layer: Int) -> ByteBudget {
        guard let scales = layerBudgetScales else { return budget }
        precondition(scales.indices.contains(layer), "CompressionSettings: no layerBudgetScales entry for layer \(layer)")
        return budget.scaled(by: scales[layer])
    }
}
