import KVQuantization

/// The plain plan, a baseline every smarter planner must beat at equal bytes: sinks and the recent
/// window at FP16, the best-scored `topShare` of the middle units at FP16 too, the next ones by score
/// at `tier` until the budget is spent, the rest at the rest tier (dropped by default).
///
/// With the budget in whole pages like every planner (`fitToPages`: the FP16 and `tier` ladders,
/// trimmed to the budget and the rounding spent). Representatives are not part of it (a
/// representative share is ignored).
///
/// - Complexity: O(m log m) for m middle units.
public struct PlainPlanner: StreamPlanner {
    /// Regions, costs, granularity and headroom.
    public var configuration: PlannerConfiguration
    /// The share of the middle units kept at FP16 (default 2%).
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

    /// Plans one stream within `budget`.
    ///
    /// - Throws: as `BudgetPlanner.plan`.
    public func plan(_ input: StreamInput, budget: ByteBudget) throws(SelectionError) -> StreamAssignment {
        var (ctx, settled) = try beginPlan(input, budget)
        if let settled { return settled }
        let c = configuration.costs, p = configuration.granularity.unitTokenCount, rest = budget.restTier
        let scores = ctx.valueScores(input.hostScores)
        // Best-scored first (`topIndices` would return ascending positions: the earliest units would
        // take the FP16 share and the budget, whatever their scores).
        let order = TokenRanking.descendingOrder(scores.map(Float.init))
        var bytes = ctx.availableByteCount
        let top = Int((Double(ctx.units.count) * topShare).rounded(.down))
        for (rank, u) in order.enumerated() {
            let target: Tier = rank < top ? .fp16 : tier
            let cost = p * (c.byteCount(max(target, ctx.currentWorstTier(unit: u))) - c.byteCount(max(rest, ctx.currentWorstTier(unit: u))))
            if cost <= bytes {
                bytes -= cost
                ctx.assign(unit: u, tier: target, role: .kept)
            } else {
                ctx.assign(unit: u, tier: rest, role: .rest)
            }
        }
        let rungs: [Tier] = [.fp16, tier]
        let ladder = ctx.units.indices.map { u in ctx.ladder(unit: u, tiers: rungs, floor: rest, including: ctx.unitTier(u)) }
        ctx.fitToPages(limit: ctx.limit(representativeAllowance: 0), ladder: ladder, scores: scores, errorModel: .derived(from: c.formats))
        return ctx.finish(representativeAllowance: 0)
    }
}
