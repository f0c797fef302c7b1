import KVQuantization

/// Turns a byte budget into the drop-style plan of algorithm.md §4: sinks and recent window at
/// FP16, the host's top middle units at FP16, KVCrush representatives of the rest at the
/// representative tier, everything else at the rest tier (dropped, or INT2 for MiKV).
///
/// Arithmetic, with per-token costs `c_t` (`TierCosts`), unit size `P` (1 for tokens):
///
///     available = budget − sinks − window − headroom·c_fp16 − (middle at the rest tier)
///     repBytes  = ⌊available · representativeShare⌋          (0 when KVCrush is off)
///     hostBytes = available − repBytes                          (all of it with .openVINOAddedOnTop)
///     B_i = min(units, ⌊hostBytes / (P·(c_fp16 − c_rest))⌋)     0 when the input has no host scores
///     B_c = min(|C|, ⌊repBytes / (P·(c_rep − c_rest))⌋)
///
/// (if the rest tier's floor alone does not fit, see `plan(_:budget:)`), with the required bytes and
/// the budget in whole pages; then the plan is fitted to whole pages (`fitToPages`): trimmed where a
/// partly filled page pushes it over, and what the rounding leaves spent on the best units that fit
/// (free slots first). So the paged bytes a store takes for the plan never exceed the budget. When
/// every token already fits, nothing moves. Tokens only move down: a host-kept or representative
/// token that already sits lower stays there (and costs less).
///
/// - Complexity: O(n log n + H · m log m) for n tokens, m middle tokens, H query heads.
public struct BudgetPlanner: StreamPlanner {
    /// Regions, costs, granularity, KVCrush and headroom.
    public var configuration: PlannerConfiguration

    /// A planner with `configuration`.
    public init(configuration: PlannerConfiguration) { self.configuration = configuration }

    /// Whether `plan` reads `input.queryHeadScores` under `budget`. Only for representatives (a positive `representativeShare`): their signatures.
    public func readsQueryHeadScores(budget: ByteBudget) -> Bool { budget.representativeShare > 0 }

    /// Plans one stream within `budget`.
    ///
    /// - Throws: budget validation errors (`ByteBudget.validate`), and
    ///   `.budgetBelowProtectedTokens` when sinks, window and headroom alone exceed the budget.
    ///   When only a stored rest tier's floor (every middle token at `restTier`) does not fit, the
    ///   best-scored middle units that fit stay at the rest tier and the others are dropped (nothing
    ///   above the rest tier): MiKV as far as the bytes allow.
    /// - Precondition: `input.queryHeadScores` is present when representatives are requested.
    public func plan(_ input: StreamInput, budget: ByteBudget) throws(SelectionError) -> StreamAssignment {
        var (ctx, settled) = try beginPlan(input, budget)
        if let settled { return settled }
        let c = configuration.costs
        let p = configuration.granularity.unitTokenCount
        let rest = budget.restTier
        let (hostBytes, repBytes) = ctx.split
        let unitCount = ctx.units.count

        var isKept = [Bool](repeating: false, count: unitCount)
        if let scores = input.hostScores {
            let unitCost = p * (c.byteCount(.fp16) - c.byteCount(rest))
            let b = unitCost == 0 ? unitCount : min(unitCount, hostBytes / unitCost)
            for u in TokenRanking.topIndices(ctx.unitScores(scores), count: b) { isKept[u] = true }
        }
        let candidates = (0..<unitCount).filter { !isKept[$0] }
        var representatives: [Int] = []
        if budget.representativeShare > 0 {
            let unitCost = p * (c.byteCount(budget.representativeTier) - c.byteCount(rest))
            let b = unitCost == 0 ? candidates.count : min(candidates.count, repBytes / unitCost)
            representatives = ctx.representatives(candidates: candidates, count: b)
        }
        var isRepresentative = [Bool](repeating: false, count: unitCount)
        for u in representatives { isRepresentative[u] = true }
        for u in 0..<unitCount {
            if isKept[u] { ctx.assign(unit: u, tier: .fp16, role: .kept) }
            else if isRepresentative[u] { ctx.assign(unit: u, tier: budget.representativeTier, role: .representative) }
            else { ctx.assign(unit: u, tier: rest, role: .rest) }
        }
        // Whole pages: trim to the budget, then spend what the rounding left.
        let rungs: [Tier] = budget.representativeShare > 0 ? [.fp16, budget.representativeTier] : [.fp16]
        let ladder = (0..<unitCount).map { u in ctx.ladder(unit: u, tiers: rungs, floor: rest, including: ctx.unitTier(u)) }
        ctx.fitToPages(limit: ctx.limit(representativeAllowance: repBytes), ladder: ladder,
                       scores: ctx.valueScores(input.hostScores), errorModel: .derived(from: c.formats))
        return ctx.finish(representativeAllowance: repBytes)
    }
}
