import KVQuantization

/// The unit a planner keeps or drops.
public enum Granularity: Sendable, Hashable {
    /// Single tokens.
    case token
    /// Pages of `tokenCount` consecutive middle tokens, starting at the first middle token (the last
    /// page may be shorter). A page's score is the sum of its tokens' scores, its KVCrush signature
    /// its tokens' signatures end to end, and budgets are spent in whole pages (each costed as a full
    /// page, which is conservative for the short last page).
    case page(tokenCount: Int)

    var unitTokenCount: Int {
        switch self {
        case .token: 1
        case .page(let p): p
        }
    }
}

/// Settings shared by the planners: regions, formats and their costs, granularity, KVCrush, and
/// decode headroom.
public struct PlannerConfiguration: Sendable, Hashable {
    /// Sinks and recent window (always FP16, always inside the budget).
    public var regions: StreamRegions
    /// Per-token cost of each tier (formats, head size, store page capacity).
    public var costs: TierCosts
    /// Token or page granularity.
    public var granularity: Granularity
    /// How representatives are chosen.
    public var kvCrush: KVCrushSelector
    /// FP16 tokens of room to leave free inside the budget, for tokens that will be appended before
    /// the next re-plan (during decode: one page, so the budget holds at every step). Default 0.
    public var headroomTokenCount: Int
    /// Whether the page fit finds its free moves through per-tier-pair lanes (`FreeMoveLanes`)
    /// instead of rescanning every unit per move: the same plans (the tests hold the two equal).
    var indexesFreeMoves = true

    /// A configuration; defaults: 4 sinks, 32 recent tokens, standard tier formats, store pages of
    /// 16 tokens, token granularity, default KVCrush, no headroom.
    public init(headDim: Int, regions: StreamRegions = StreamRegions(), formats: TierFormats = .standard,
                pageCapacity: Int = 16, granularity: Granularity = .token,
                kvCrush: KVCrushSelector = KVCrushSelector(), headroomTokenCount: Int = 0) {
        if case .page(let p) = granularity { precondition(p > 0, "PlannerConfiguration: page tokenCount must be positive") }
        precondition(headroomTokenCount >= 0, "PlannerConfiguration: headroomTokenCount must be non-negative")
        self.regions = regions
        self.costs = TierCosts(formats: formats, headDim: headDim, pageCapacity: pageCapacity)
        self.granularity = granularity
        self.kvCrush = kvCrush
        self.headroomTokenCount = headroomTokenCount
    }
}
