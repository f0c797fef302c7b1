import KVQuantization

/// The plain plan, a baseline every smarter planner must beat at equal bytes: sinks and the recent
/// window at FP16 (`regions.tier`), the best-scored `topShare` of the middle units at that tier too, the next ones by score
/// at `tier` until the budget is spent, the rest at the rest tier (dropped by default).
///
/// Re-plans are stable: the budget is handed out walking the units in position order, and the page
/// fit then gives the best tiers to the best scores among units of the same current tier. On a fresh
/// FP16 prefill that is the score order above; in a decode re-plan, units already quantised keep
/// their place before newer FP16 units compete for what is left, each group by score. Ranking every
/// unit by score alone measured worse end to end (SmolLM2, prompt 1536 + 512, `preset:4x`: heapq +7.36%
/// / KLD 0.0334 against +4.89% / 0.0210; pydoc +3.38% / 0.0221 against +2.10% / 0.0189).
///
/// With the budget in whole pages like every planner (`fitToPages`: the FP16 and `tier` ladders,
/// trimmed to the budget and the rounding spent). Representatives are not part of it (a
/// representative share is ignored).
///
/// - Complexity: O(m log m) for m middle units.
public struct PlainPlanner: StreamPlanner {
    /// Regions, costs, granularity and headroom.
    public var configuration: PlannerConfiguration
    /// The share of the middle units kept at `configuration.regions.tier` (default 2%).
    public var topShare: Double
    /// The tier of the next ones (default INT4).
    public var tier: Tier

    public init(configuration: PlannerConfiguration, topShare: Double = 0.02, tier: Tier = .int4) {
        precondition(topShare >= 0 && topShare <= 1, "PlainPlanner: topShare must be in 0...1")
        precondition(tier != .dropped && tier != .fp16, "PlainPlanner: the second tier must be a quantised stored tier")
        self.configuration = configuration
        self.topShare = topShare
        self.tier = tier
    }

    /// Whether `plan` reads `input.queryHeadScores` under `budget`. Never: the plain plan has no representatives.
    public func readsQueryHeadScores(budget: ByteBudget) -> Bool { false }

    /// Plans one stream within `budget`.
    ///
    /// - Throws: as `BudgetPlanner.plan`.
    public func plan(_ input: StreamInput, budget: ByteBudget) throws(SelectionError) -> StreamAssignment {
        var (ctx, settled) = try beginPlan(input, budget)
        if let settled { return settled }
        let c = configuration.costs, p = configuration.granularity.unitTokenCount, rest = budget.restTier
        let scores = ctx.valueScores(input.hostScores)
        let topTier = configuration.regions.tier
        // Position order (see the type's comment: stable re-plans).
        let order = TokenRanking.topIndices(scores.map(Float.init), count: ctx.units.count)
        var bytes = ctx.availableByteCount
        let top = Int((Double(ctx.units.count) * topShare).rounded(.down))
        for (rank, u) in order.enumerated() {
            let target: Tier = rank < top ? topTier : tier
            let cost = p * (c.byteCount(max(target, ctx.currentWorstTier(unit: u))) - c.byteCount(max(rest, ctx.currentWorstTier(unit: u))))
            if cost <= bytes {
                bytes -= cost
                ctx.assign(unit: u, tier: target, role: .kept)
            } else {
                ctx.assign(unit: u, tier: rest, role: .rest)
            }
        }
        // FP16 stays a rung when the top share is at INT8: a budget the plan cannot spend otherwise
        // (2x: everything fits at INT4 and INT8) raises the best units to FP16.
        let rungs: [Tier] = topTier == .fp16 ? [.fp16, tier] : [.fp16, topTier, tier]
        let ladder = ctx.units.indices.map { u in ctx.ladder(unit: u, tiers: rungs, floor: rest, including: ctx.unitTier(u)) }
        ctx.fitToPages(limit: ctx.limit(representativeAllowance: 0), ladder: ladder, scores: scores, errorModel: .derived(from: c.formats))
        return ctx.finish(representativeAllowance: 0)
    }
}
