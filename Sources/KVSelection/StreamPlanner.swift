import KVQuantization

/// A planner that turns one stream's state and a byte budget into tiers.
public protocol StreamPlanner: Sendable {
    /// The shared settings.
    var configuration: PlannerConfiguration { get }
    /// Plans one stream within `budget`.
    func plan(_ input: StreamInput, budget: ByteBudget) throws(SelectionError) -> StreamAssignment
    /// Whether `plan(_:budget:)` reads `input.queryHeadScores` under `budget`; when false a caller may
    /// leave them out (`SequencePlanner.planDecode` then scores only the stream's own query heads).
    /// Default: true.
    func readsQueryHeadScores(budget: ByteBudget) -> Bool
}

extension StreamPlanner {
    public func readsQueryHeadScores(budget: ByteBudget) -> Bool { true }
}

extension StreamPlanner {
    /// Bytes a stream must spend before any middle token is kept, in whole pages
    /// (`TierCosts.pagedByteCount`): sinks and recent window at `regions.tier` (or their current tier if lower), the headroom's
    /// slots at FP16, and (when the rest tier is stored) every middle token at the rest tier.
    public func requiredByteCount(_ input: StreamInput, restTier: Tier) -> Int {
        let c = configuration.costs
        let r = configuration.regions.split(tokenCount: input.tokenCount)
        var counts = [Int](repeating: 0, count: Tier.allCases.count)
        counts[Tier.fp16.rawValue] = configuration.headroomTokenCount
        let t = configuration.regions.tier
        for i in r.sinks { counts[max(t, input.tiers[i]).rawValue] += 1 }
        for i in r.recent { counts[max(t, input.tiers[i]).rawValue] += 1 }
        for i in r.middle { counts[max(restTier, input.tiers[i]).rawValue] += 1 }
        return c.pagedByteCount(counts: counts)
    }
}

/// The bookkeeping both planners share: regions, units, budget arithmetic, tier assignment that
/// never moves a token up, and the final byte check.
extension StreamPlanner {
    /// What every planner does first: validate the budget, cost the stream, and settle the two
    /// cases that need no ranking (everything fits; even the rest-tier floor does not fit, so the
    /// best-scored tokens that fit are demoted, MiKV as far as the bytes allow). Returns the
    /// assignment when settled, otherwise the context to plan within.
    func beginPlan(_ input: StreamInput, _ budget: ByteBudget) throws(SelectionError) -> (context: PlanningContext, settled: StreamAssignment?) {
        try budget.validate()
        var ctx = try PlanningContext(input, configuration, budget,
                                      required: requiredByteCount(input, restTier: budget.restTier),
                                      minimumRequired: requiredByteCount(input, restTier: .dropped))
        if ctx.everythingFits { return (ctx, ctx.finish(representativeAllowance: 0)) }
        if !ctx.floorFits { return (ctx, ctx.demoteWhatFits(scores: input.hostScores)) }
        return (ctx, nil)
    }
}
