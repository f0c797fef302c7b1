import KVQuantization

/// Spends a byte budget where it buys the most: every middle unit gets the tier that minimises the
/// total expected error `Σ score_j · e_{tier_j}` within the bytes, by greedy marginal analysis.
///
/// Plan, after sinks, window and headroom (FP16) and, if the rest tier is stored, the middle at the
/// rest tier are paid:
/// 1. `repBytes = ⌊available · representativeShare⌋` is set aside for KVCrush;
/// 2. every middle unit starts at the rest tier. For the tiers it may still reach
///    (`candidateTiers`, not above its current tier, better than the rest tier) the points
///    (cost, error) are reduced to their lower convex hull, giving upgrade steps with
///    decreasing error-per-byte `r_k = Δe_k / Δc_k`. Each step of unit `j` is worth `score_j · r_k`
///    per byte;
/// 3. steps are taken in decreasing worth per byte (ties: later position, then the unit's earlier step)
///    while they fit; a step that does not fit freezes its unit. Steps with zero worth are not
///    taken. For this separable model the greedy is optimal up to the one unit whose step did not
///    fit (the LP relaxation is solved exactly by the same order);
/// 4. units still at the rest tier form the tail; KVCrush picks
///    `⌊repBytes / (P·(c_rep − c_rest))⌋` representatives of it at the representative tier.
///
/// With the default, format-derived model INT4 removes so much more error per byte than any other
/// step that the greedy first brings as many tokens as fit to INT4, and lifts a token to INT8 only
/// when its score exceeds the best score left at the rest tier by the ratio of the two steps'
/// error-per-byte (about 36× at headDim 64), and to FP16 only at ratios in the thousands. Measured
/// errors (`TierErrorModel(relativeErrors:)`) move the split; with very lossy quantised tiers the
/// hull skips them and the planner becomes drop-only (H2O at the same bytes).
///
/// 5. the plan is fitted to whole pages (`fitToPages`): trimmed where a partly filled page pushes
///    it over the budget, and the bytes the rounding leaves spent on the units whose next rung up
///    gains the most, free slots first. The store's paged bytes never exceed the budget.
///
/// If a stored rest tier's floor does not fit, the MiKV fallback of `BudgetPlanner` applies.
///
/// Limits: the error model (`TierErrorModel`) is a proxy; scores are treated as the value of
/// keeping a token, so scales matter only relatively; the budget in pages is conservative for a
/// short last page.
///
/// - Complexity: O(m·K log(m·K)) for m middle units and K ≤ 4 tiers, plus KVCrush's.
public struct TieredPlanner: StreamPlanner {
    /// Regions, costs, granularity, KVCrush and headroom.
    public var configuration: PlannerConfiguration
    /// Expected relative error per tier.
    public var errorModel: TierErrorModel
    /// Stored tiers the greedy may assign (default FP16, INT8, INT4; add `.int2` to allow it).
    public var candidateTiers: [Tier]

    /// A tiered planner. The error model defaults to the one derived from the configuration's formats.
    public init(configuration: PlannerConfiguration, errorModel: TierErrorModel? = nil,
                candidateTiers: [Tier] = [.fp16, .int8, .int4]) {
        precondition(!candidateTiers.contains(.dropped), "TieredPlanner: candidate tiers must be stored tiers")
        self.configuration = configuration
        self.errorModel = errorModel ?? .derived(from: configuration.costs.formats)
        self.candidateTiers = Array(Set(candidateTiers)).sorted()
    }

    /// One upgrade step of the hull: from tier → to tier, cost and error reductions.
    struct Step { var from: Tier; var to: Tier; var byteCount: Int; var errorReduction: Double }

    /// The lower convex hull of (cost, error) from `rest` through the tiers reachable from `ceiling`.
    func hullSteps(rest: Tier, ceiling: Tier) -> [Step] {
        let c = configuration.costs
        let reachable = candidateTiers.filter { $0 >= ceiling && $0 < rest }
            .sorted { c.byteCount($0) < c.byteCount($1) || (c.byteCount($0) == c.byteCount($1) && $0 > $1) }
        var chain: [Tier] = [rest]
        for t in reachable {
            // Keep only points that lower the error; a point at equal cost replaces nothing useful.
            guard errorModel.relativeError(t) < errorModel.relativeError(chain.last!),
                  c.byteCount(t) > c.byteCount(chain.last!) else { continue }
            chain.append(t)
            // Remove middle points that lie on or above the segment (convexity).
            while chain.count >= 3 {
                let (a, b, d) = (chain[chain.count - 3], chain[chain.count - 2], chain[chain.count - 1])
                let r1 = (errorModel.relativeError(a) - errorModel.relativeError(b)) / Double(c.byteCount(b) - c.byteCount(a))
                let r2 = (errorModel.relativeError(b) - errorModel.relativeError(d)) / Double(c.byteCount(d) - c.byteCount(b))
                if r2 >= r1 { chain.remove(at: chain.count - 2) } else { break }
            }
        }
        return zip(chain, chain.dropFirst()).map { a, b in
            Step(from: a, to: b, byteCount: c.byteCount(b) - c.byteCount(a),
                 errorReduction: errorModel.relativeError(a) - errorModel.relativeError(b))
        }
    }

    /// Whether `plan` reads `input.queryHeadScores` under `budget`. Only for representatives (a positive `representativeShare`): their signatures.
    public func readsQueryHeadScores(budget: ByteBudget) -> Bool { budget.representativeShare > 0 }

    /// Plans one stream within `budget`.
    ///
    /// - Throws: as `BudgetPlanner.plan`.
    /// - Precondition: `input.hostScores` is present (the greedy needs scores);
    ///   `input.queryHeadScores` too when representatives are requested.
    public func plan(_ input: StreamInput, budget: ByteBudget) throws(SelectionError) -> StreamAssignment {
        var (ctx, settled) = try beginPlan(input, budget)
        if let settled { return settled }
        guard let scores = input.hostScores else { preconditionFailure("TieredPlanner: hostScores are required") }
        let c = configuration.costs
        let p = configuration.granularity.unitTokenCount
        let rest = budget.restTier
        let split = ctx.split
        var mainBytes = split.main
        let repBytes = split.representatives
        let unitScores = ctx.unitScores(scores).map(Double.init)
        let unitCount = ctx.units.count

        // Steps per distinct ceiling (current worst tier of the unit).
        var hulls: [Tier: [Step]] = [:]
        struct Item { var unit: Int; var k: Int; var worth: Double; var byteCount: Int }
        var items: [Item] = []
        var unitSteps: [[Step]] = []
        for u in 0..<unitCount {
            let ceiling = ctx.currentWorstTier(unit: u)
            let steps = hulls[ceiling] ?? hullSteps(rest: rest, ceiling: ceiling)
            hulls[ceiling] = steps
            unitSteps.append(steps)
            for (k, s) in steps.enumerated() where unitScores[u] * s.errorReduction > 0 {
                items.append(Item(unit: u, k: k, worth: unitScores[u] * s.errorReduction, byteCount: p * s.byteCount))
            }
        }
        // Decreasing worth per byte: a.worth/a.bytes > b.worth/b.bytes, compared by cross-multiplying.
        items.sort { a, b in
            let l = a.worth * Double(b.byteCount), r = b.worth * Double(a.byteCount)
            if l != r { return l > r }
            if a.unit != b.unit { return a.unit > b.unit }
            return a.k < b.k
        }
        var level = [Int](repeating: 0, count: unitCount)  // steps taken per unit
        var frozen = [Bool](repeating: false, count: unitCount)
        for item in items where !frozen[item.unit] && level[item.unit] == item.k {
            if item.byteCount <= mainBytes {
                mainBytes -= item.byteCount
                level[item.unit] += 1
            } else {
                frozen[item.unit] = true
            }
        }
        var tail: [Int] = []
        for u in 0..<unitCount {
            if level[u] > 0 { ctx.assign(unit: u, tier: unitSteps[u][level[u] - 1].to, role: .kept) }
            else { tail.append(u) }
        }
        var representatives: [Int] = []
        if budget.representativeShare > 0 {
            let unitCost = p * (c.byteCount(budget.representativeTier) - c.byteCount(rest))
            let b = unitCost == 0 ? tail.count : min(tail.count, repBytes / unitCost)
            representatives = ctx.representatives(candidates: tail, count: b)
        }
        let isRepresentative = Set(representatives)
        for u in tail {
            if isRepresentative.contains(u) { ctx.assign(unit: u, tier: budget.representativeTier, role: .representative) }
            else { ctx.assign(unit: u, tier: rest, role: .rest) }
        }
        // Whole pages: trim to the budget, then spend what the rounding left.
        let rungs = candidateTiers + (budget.representativeShare > 0 ? [budget.representativeTier] : [])
        let ladder = (0..<unitCount).map { u in ctx.ladder(unit: u, tiers: rungs, floor: rest, including: ctx.unitTier(u)) }
        ctx.fitToPages(limit: ctx.limit(representativeAllowance: repBytes), ladder: ladder,
                       scores: ctx.valueScores(input.hostScores), errorModel: errorModel)
        return ctx.finish(representativeAllowance: repBytes)
    }
}
