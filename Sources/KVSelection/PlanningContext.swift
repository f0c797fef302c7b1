import KVQuantization

/// The state of one stream's plan while a planner builds it: the regions and units, the budget
/// arithmetic, the tiers and roles assigned so far (never above a token's current tier), and the
/// final byte check. Shared by `BudgetPlanner` and `TieredPlanner` (see `StreamPlanner.beginPlan`).
struct PlanningContext {
    let input: StreamInput
    let configuration: PlannerConfiguration
    let budget: ByteBudget
    let ranges: RegionRanges
    /// Token index ranges of the middle units, in position order.
    let units: [Range<Int>]
    let budgetByteCount: Int
    /// Bytes left after the required ones (≥ 0), in whole pages.
    let availableByteCount: Int
    /// True when every token fits at its current tier: nothing needs to move.
    let everythingFits: Bool
    /// True when the required bytes (including a stored rest tier's floor) fit the budget.
    let floorFits: Bool
    /// Bytes required with the rest tier taken as `.dropped` (sinks, window, headroom).
    let minimumRequiredByteCount: Int
    var tiers: [Tier]
    var roles: [TokenRole]

    /// - Throws: `.budgetBelowProtectedTokens` when even sinks, window and headroom do not fit.
    init(_ input: StreamInput, _ configuration: PlannerConfiguration, _ budget: ByteBudget,
         required: Int, minimumRequired: Int) throws(SelectionError) {
        let c = configuration.costs
        self.input = input
        self.configuration = configuration
        self.budget = budget
        budgetByteCount = try budget.byteCount(fp16ByteCount: input.tokenCount * c.byteCount(.fp16))
        let ranges = configuration.regions.split(tokenCount: input.tokenCount)
        self.ranges = ranges
        let p = configuration.granularity.unitTokenCount
        units = stride(from: ranges.middle.lowerBound, to: ranges.middle.upperBound, by: p).map {
            $0 ..< min($0 + p, ranges.middle.upperBound)
        }
        tiers = input.tiers
        roles = [TokenRole](repeating: .kept, count: input.tokenCount)
        for i in ranges.sinks { roles[i] = .sink }
        for i in ranges.recent { roles[i] = .recent }
        let current = c.pagedByteCount(tiers: input.tiers, extraFP16TokenCount: configuration.headroomTokenCount)
        everythingFits = current <= budgetByteCount
        if !everythingFits && minimumRequired > budgetByteCount {
            throw .budgetBelowProtectedTokens(requiredByteCount: minimumRequired, budgetByteCount: budgetByteCount)
        }
        if !everythingFits {  // compressing: the protected regions go to their tier (never up)
            let t = configuration.regions.tier
            for i in ranges.sinks { tiers[i] = max(t, tiers[i]) }
            for i in ranges.recent { tiers[i] = max(t, tiers[i]) }
        }
        floorFits = required <= budgetByteCount
        minimumRequiredByteCount = minimumRequired
        availableByteCount = max(0, budgetByteCount - required)
    }

    /// Bytes for the host/greedy part and for representatives, per the budget's share and placement.
    var split: (main: Int, representatives: Int) {
        let reps = Int(Double(availableByteCount) * budget.representativeShare)  // ⌊·⌋: non-negative
        switch budget.representativePlacement {
        case .insideBudget: return (availableByteCount - reps, reps)
        case .openVINOAddedOnTop: return (availableByteCount, reps)
        }
    }

    /// Per-unit sums of per-token scores.
    func unitScores(_ scores: [Float]) -> [Float] {
        units.map { r in r.reduce(Float(0)) { $0 + scores[$1] } }
    }

    /// The least precise current tier among unit `u`'s tokens: the best tier the unit can still reach.
    func currentWorstTier(unit u: Int) -> Tier {
        var worst = Tier.fp16
        for i in units[u] where input.tiers[i] > worst { worst = input.tiers[i] }
        return worst
    }

    /// Sends every token of unit `u` to `tier` (or stays lower if it already is).
    mutating func assign(unit u: Int, tier: Tier, role: TokenRole) {
        for i in units[u] {
            tiers[i] = max(tier, input.tiers[i])
            roles[i] = role
        }
    }

    /// KVCrush picks among candidate units: signatures over the whole middle, pages if paged.
    func representatives(candidates: [Int], count: Int) -> [Int] {
        guard count > 0, !candidates.isEmpty else { return [] }
        guard let q = input.queryHeadScores else {
            preconditionFailure("StreamInput.queryHeadScores is required when representatives are requested")
        }
        let selector = configuration.kvCrush
        var sig = selector.tokenSignatures(middleScores: q.columns(Array(ranges.middle)))
        if case .page(let p) = configuration.granularity { sig = sig.pages(tokenCount: p) }
        return selector.representatives(signatures: sig, candidates: candidates, count: count)
    }

    /// The fallback when a stored rest tier's floor (every middle token at the rest tier) does not
    /// fit: the best-scored units that fit stay at the rest tier (or lower, if already lower), the
    /// others are dropped; nothing is kept above the rest tier. Without scores, the latest units stay.
    mutating func demoteWhatFits(scores: [Float]?) -> StreamAssignment {
        let rest = budget.restTier
        let unitCost = configuration.granularity.unitTokenCount * configuration.costs.byteCount(rest)
        let available = budgetByteCount - minimumRequiredByteCount
        let k = unitCost == 0 ? units.count : min(units.count, available / unitCost)
        let unitScores = valueScores(scores)
        let stay = Set(TokenRanking.topIndices(unitScores.map(Float.init), count: k))
        for u in units.indices { assign(unit: u, tier: stay.contains(u) ? rest : .dropped, role: .rest) }
        // Whole pages: at the rest tier or dropped, nothing above.
        let ladder = units.indices.map { u in [max(rest, currentWorstTier(unit: u)), .dropped].uniqued() }
        fitToPages(limit: budgetByteCount, ladder: ladder, scores: unitScores, errorModel: .derived(from: configuration.costs.formats))
        return finish(representativeAllowance: 0)
    }

    /// Per middle unit, the value the page fit ranks by: the host scores summed over the unit, or,
    /// without scores, the unit's index (later units are worth more, as StreamingLLM keeps them).
    func valueScores(_ scores: [Float]?) -> [Double] {
        guard let scores else { return units.indices.map { Double($0 + 1) } }
        return unitScores(scores).map(Double.init)
    }

    /// The ladder of unit `u` for the page fit: `tiers` (most precise first) from its current tier
    /// down, ending at `floor`, with `including` (e.g. the unit's planned tier) among its rungs.
    ///
    /// - Complexity: O(tiers.count + unit size); the ladder is a shared array (one per set of tiers).
    func ladder(unit u: Int, tiers candidates: [Tier], floor: Tier, including: Tier? = nil) -> [Tier] {
        let ceiling = currentWorstTier(unit: u)
        var mask = 1 << max(floor, ceiling).rawValue
        for t in candidates where t >= ceiling && t < floor { mask |= 1 << t.rawValue }
        if let including { mask |= 1 << including.rawValue }
        return Self.laddersByMask[mask]
    }

    /// Every set of tiers (bit `Tier.rawValue`) as an ascending ladder.
    private static let laddersByMask: [[Tier]] = (0..<(1 << Tier.allCases.count)).map { m in Tier.allCases.filter { m & (1 << $0.rawValue) != 0 } }

    /// The plan's exact bytes: its tokens in whole pages (`TierCosts.pagedByteCount`), the
    /// headroom's FP16 slots included.
    var pagedByteCount: Int {
        configuration.costs.pagedByteCount(tiers: tiers, extraFP16TokenCount: configuration.headroomTokenCount)
    }

    /// The bytes the plan may take: the budget, plus the representatives' allowance when they come
    /// on top of it (`.openVINOAddedOnTop`).
    func limit(representativeAllowance: Int) -> Int {
        budgetByteCount + (budget.representativePlacement == .openVINOAddedOnTop ? representativeAllowance : 0)
    }

    func finish(representativeAllowance: Int) -> StreamAssignment {
        let bytes = pagedByteCount, limit = limit(representativeAllowance: representativeAllowance)
        precondition(everythingFits || bytes <= limit,
                     "planner invariant: \(bytes) paged bytes planned for a limit of \(limit)")
        return StreamAssignment(positions: input.positions, previousTiers: input.tiers, tiers: tiers, roles: roles,
                                byteCount: configuration.costs.pagedByteCount(tiers: tiers), budgetByteCount: budgetByteCount,
                                representativeByteAllowance: representativeAllowance)
    }
}

extension Array where Element: Equatable {
    /// The elements without repeats of an earlier one, in order.
    func uniqued() -> [Element] {
        var out: [Element] = []
        for x in self where !out.contains(x) { out.append(x) }
        return out
    }
}
