import Testing
import KVQuantization
import TestSupport
@testable import KVSelection

/// A random planning problem drawn from a seeded generator.
struct RandomProblem: CustomStringConvertible {
    var configuration: PlannerConfiguration
    var input: StreamInput
    var budget: ByteBudget
    var fresh: Bool

    var description: String {
        "n \(input.tokenCount) regions \(configuration.regions) granularity \(configuration.granularity) "
            + "headroom \(configuration.headroomTokenCount) budget \(budget) fresh \(fresh)"
    }

    static func draw(_ g: inout SeededGenerator, hostScores: Bool = true, allowOnTop: Bool = true) -> RandomProblem {
        let n = Int.random(in: 0...150, using: &g)
        let regions = StreamRegions(sinkTokenCount: Int.random(in: 0...6, using: &g),
                                    recentTokenCount: Int.random(in: 0...20, using: &g),
                                    tier: Int.random(in: 0..<3, using: &g) == 0 ? .int8 : .fp16)
        let granularity: Granularity = Bool.random(using: &g) ? .token : .page(tokenCount: Int.random(in: 1...8, using: &g))
        let anchors: [Anchor] = [.random(seed: g.next()), .zeros, .ones, .mean, .alternate]
        let config = PlannerConfiguration(
            headDim: [32, 64, 128][Int.random(in: 0...2, using: &g)], regions: regions,
            granularity: granularity, kvCrush: KVCrushSelector(anchor: anchors.randomElement(using: &g)!),
            headroomTokenCount: Int.random(in: 0...3, using: &g) == 0 ? Int.random(in: 1...8, using: &g) : 0)
        var position: Int32 = 0
        let positions = (0..<n).map { _ in position += Int32.random(in: 1...3, using: &g); return position }
        let fresh = Bool.random(using: &g)
        let r = regions.split(tokenCount: n)
        // A re-plan may find protected tokens at the protected tier already (an earlier plan put them there).
        let tiers = (0..<n).map { i -> Tier in
            if fresh { return .fp16 }
            if !r.middle.contains(i) { return regions.tier == .int8 && Bool.random(using: &g) ? .int8 : .fp16 }
            return Tier.stored.randomElement(using: &g)!
        }
        let levels = Int.random(in: 1...6, using: &g)  // few levels → many ties
        let host = (hostScores || Int.random(in: 0..<10, using: &g) > 0)
            ? (0..<n).map { _ in Float(Int.random(in: 0...levels, using: &g)) / 4 } : nil
        let heads = Int.random(in: 1...10, using: &g)
        let query = ImportanceScores.random(headCount: heads, tokenCount: n, seed: g.next())
        let restTier: Tier = Int.random(in: 0..<4, using: &g) == 0 ? .int2 : .dropped
        let repTier: Tier = restTier == .int2 ? [.int8, .int4].randomElement(using: &g)! : [.int8, .int4, .int2].randomElement(using: &g)!
        let share = Bool.random(using: &g) ? 0 : Double.random(in: 0...1, using: &g)
        let amount: ByteBudget.Amount = Bool.random(using: &g)
            ? .fractionOfFP16(Double.random(in: 0...1.2, using: &g))
            : .byteCount(Int.random(in: 0...(n * 300 + 1), using: &g))
        let placement: ByteBudget.RepresentativePlacement =
            allowOnTop && Int.random(in: 0..<6, using: &g) == 0 ? .openVINOAddedOnTop : .insideBudget
        return RandomProblem(
            configuration: config,
            input: StreamInput(positions: positions, tiers: tiers, hostScores: host, queryHeadScores: query),
            budget: ByteBudget(amount, representativeShare: share, representativeTier: repTier, restTier: restTier,
                               representativePlacement: placement),
            fresh: fresh)
    }
}

/// Checks every invariant a plan must satisfy; returns the assignment (or nil when the budget was
/// refused, which is checked to be legitimate).
@discardableResult
func checkPlan(_ planner: some StreamPlanner, _ p: RandomProblem, context: String) -> StreamAssignment? {
    let c = p.configuration.costs
    let input = p.input
    let n = input.tokenCount
    let a: StreamAssignment
    do {
        a = try planner.plan(input, budget: p.budget)
    } catch {
        // Only a budget below the protected tokens may be refused, and only when it really is.
        guard case .budgetBelowProtectedTokens(let required, let budget) = error else {
            Issue.record("unexpected error \(error): \(context)")
            return nil
        }
        #expect(required > budget, "\(context)")
        #expect(required == planner.requiredByteCount(input, restTier: .dropped), "\(context)")
        return nil
    }
    #expect(a.tiers.count == n && a.roles.count == n && a.positions == input.positions, "\(context)")
    // Each token in exactly one tier.
    #expect(Tier.allCases.reduce(0) { $0 + a.tokenCount($1) } == n, "\(context)")
    // Only down.
    #expect(zip(a.tiers, input.tiers).allSatisfy { $0 >= $1 }, "moved up: \(context)")
    // Sinks and recent window at the protected tier (or lower if already lower) when anything moves;
    // untouched when everything fits.
    let r = p.configuration.regions.split(tokenCount: n)
    let fits = c.pagedByteCount(tiers: input.tiers, extraFP16TokenCount: p.configuration.headroomTokenCount) <= a.budgetByteCount
    for i in Array(r.sinks) + Array(r.recent) {
        let expected = fits ? input.tiers[i] : max(p.configuration.regions.tier, input.tiers[i])
        #expect(a.tiers[i] == expected, "protected token \(i) at \(a.tiers[i]), expected \(expected): \(context)")
    }
    // Bytes: the exact paged count, and with the headroom's FP16 slots within the budget (plus the
    // representatives' allowance when they come on top), unless nothing had to move.
    #expect(a.byteCount == c.pagedByteCount(tiers: a.tiers), "\(context)")
    let paged = c.pagedByteCount(tiers: a.tiers, extraFP16TokenCount: p.configuration.headroomTokenCount)
    let extra = p.budget.representativePlacement == .openVINOAddedOnTop ? a.representativeByteAllowance : 0
    let untouched = a.tiers == input.tiers && paged <= a.budgetByteCount
    #expect(untouched || paged <= a.budgetByteCount + extra, "over budget: \(paged) > \(a.budgetByteCount) + \(extra): \(context)")
    // The rounding is spent: no middle unit could move up a rung into a free slot of a partly
    // filled page without exceeding the budget (checked for fresh streams at token granularity).
    // Whole pages: every page of the middle shares one role.
    if case .page(let size) = p.configuration.granularity {
        for start in stride(from: r.middle.lowerBound, to: r.middle.upperBound, by: size) {
            let page = start..<min(start + size, r.middle.upperBound)
            #expect(Set(page.map { a.roles[$0] }).count == 1, "split page \(page): \(context)")
        }
    }
    // The store-facing plan names each changed token once, and replays to the new tiers.
    let plan = a.streamPlan(layer: 0, kvHead: 0)
    #expect(Set(plan.moves.map(\.position)).count == plan.moves.count, "\(context)")
    var replay = Dictionary(uniqueKeysWithValues: zip(input.positions, input.tiers))
    for m in plan.moves { replay[m.position] = m.tier }
    #expect(input.positions.map { replay[$0]! } == a.tiers, "\(context)")
    // Deterministic.
    #expect((try? planner.plan(input, budget: p.budget)) == a, "not deterministic: \(context)")
    return a
}
