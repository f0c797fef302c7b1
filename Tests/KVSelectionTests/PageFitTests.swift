import Testing
import Synchronization
import KVQuantization
import TestSupport
@testable import KVSelection

/// Plans in whole pages: the store's exact bytes for a plan (`TierCosts.pagedByteCount`) never
/// exceed the budget, and what the rounding leaves is spent: no middle token below a tier that has a
/// free slot in its last page could have moved into it (for row-wise formats every such move is
/// free, so the fill would have made it).
@Suite struct PageFitTests {
    /// The trim's and the fill's partial ranking is the prefix of the full sort, with ties broken by
    /// unit, zeros, counts of 0, 1 and more than the units, and units in any order.
    @Test func partialRankingIsThePrefixOfTheFullSort() {
        var g = SeededGenerator(seed: 90_017)
        for trial in 0..<500 {
            let n = Int.random(in: 0...80, using: &g)
            let units = (0..<n).map { $0 * 3 + 1 }.shuffled(using: &g)
            let harms = Dictionary(uniqueKeysWithValues: units.map { ($0, Double(Int.random(in: 0...5, using: &g)) / 4) })
            let count = Int.random(in: 0...(n + 3), using: &g)
            let expected = units.sorted { harms[$0]! != harms[$1]! ? harms[$0]! < harms[$1]! : $0 < $1 }.prefix(count)
            let keyed = units.map { (harm: harms[$0]!, unit: $0) }
            let first = PlanningContext.first(count, of: keyed) { a, b in a.harm != b.harm ? a.harm < b.harm : a.unit < b.unit }
            #expect(first.map(\.unit) == Array(expected), "seed \(g.seed) trial \(trial)")
            // The fill's order: most gain first, ties to the later unit.
            let byGain = units.sorted { harms[$0]! != harms[$1]! ? harms[$0]! > harms[$1]! : $0 > $1 }.prefix(count)
            let firstByGain = PlanningContext.first(count, of: keyed) { a, b in a.harm != b.harm ? a.harm > b.harm : a.unit > b.unit }
            #expect(firstByGain.map(\.unit) == Array(byGain), "seed \(g.seed) trial \(trial)")
        }
    }

    /// `restoreScoreOrder`'s packed integer keys sort exactly as its (score, unit) tuples: best score
    /// first, ties (−0 and +0 included) to the later unit; scores that are not exactly a finite
    /// `Float` fall back to the tuples.
    @Test func packedScoreKeysSortAsTheTuples() {
        var g = SeededGenerator(seed: 90_023)
        let specials: [Float] = [0, -0.0, 1, -1, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, .greatestFiniteMagnitude,
                                 -.greatestFiniteMagnitude, .leastNormalMagnitude, 1.5, 1e-30]
        for trial in 0..<400 {
            let n = Int.random(in: 0...300, using: &g)
            let scores: [Double] = (0..<n).map { _ in
                switch Int.random(in: 0...3, using: &g) {
                case 0: return Double(specials.randomElement(using: &g)!)
                case 1: return Double(Float(Int.random(in: -4...4, using: &g)) / 4)
                default: return Double(Float.random(in: -1e6...1e6, using: &g))
                }
            }
            let members = Array(0..<n).shuffled(using: &g).prefix(Int.random(in: 0...n, using: &g)).map { $0 }
            let expected = members.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 > $1 }
            guard let keys = PlanningContext.packedScoreKeys(members, scores: scores) else {
                Issue.record("seed \(g.seed) trial \(trial): Float scores refused"); continue
            }
            #expect(keys.sorted(by: >).map { Int($0 & 0xFFFF_FFFF) } == expected, "seed \(g.seed) trial \(trial)")
        }
        #expect(PlanningContext.packedScoreKeys([0, 1], scores: [0.1, 1]) == nil, "0.1 is no Float")
        #expect(PlanningContext.packedScoreKeys([0], scores: [.infinity]) == nil)
        #expect(PlanningContext.packedScoreKeys([0], scores: [.nan]) == nil)
    }

    /// `restoreScoreOrder` skips a group exactly when its hand-out would change nothing: whenever
    /// `isInScoreOrder` says so, ranking by key and handing the (tier, role) slots out best first
    /// gives every unit the tier and role it has; and a group in score order with one role per tier
    /// is recognised.
    @Test func scoreOrderCheckMatchesTheHandOut() {
        var g = SeededGenerator(seed: 90_029)
        let tiers = Tier.allCases, roles: [TokenRole] = [.kept, .rest]
        var skipped = 0
        for trial in 0..<2000 {
            let n = Int.random(in: 1...40, using: &g)
            let keys = (0..<n).map { UInt64(Int.random(in: 0...12, using: &g)) << 32 | UInt64($0) }
            var memberTiers = (0..<n).map { _ in tiers.randomElement(using: &g)! }
            var memberRoles = (0..<n).map { _ in roles.randomElement(using: &g)! }
            if Bool.random(using: &g) {
                // An ordered group: tiers handed out by rank, one role per tier (sometimes).
                let ranked = keys.indices.sorted { keys[$0] > keys[$1] }
                let counts = memberTiers.sorted { $0.rawValue < $1.rawValue }
                for (r, k) in ranked.enumerated() { memberTiers[k] = counts[r] }
                if Bool.random(using: &g) { for k in 0..<n { memberRoles[k] = memberTiers[k].rawValue % 2 == 0 ? .kept : .rest } }
            }
            // The hand-out: slots by tier, stable in member order; best key first.
            var slots: [(Tier, TokenRole)] = []
            for t in tiers { for k in 0..<n where memberTiers[k] == t { slots.append((t, memberRoles[k])) } }
            let ranked = keys.indices.sorted { keys[$0] > keys[$1] }
            var unchanged = true
            for (r, k) in ranked.enumerated() where slots[r].0 != memberTiers[k] || slots[r].1 != memberRoles[k] { unchanged = false }
            let check = PlanningContext.isInScoreOrder(keys: keys, tiers: memberTiers, roles: memberRoles)
            if check { skipped += 1; #expect(unchanged, "seed \(g.seed) trial \(trial)") }
            let oneRolePerTier = tiers.allSatisfy { t in Set(memberRoles.indices.filter { memberTiers[$0] == t }.map { memberRoles[$0] }).count <= 1 }
            if unchanged && oneRolePerTier { #expect(check, "seed \(g.seed) trial \(trial): an ordered group not recognised") }
        }
        #expect(skipped > 200, "seed \(g.seed): too few ordered groups drawn (\(skipped))")
    }

    /// The fast path equals the full pass: on random decode-like streams (current tiers mixed, a plan
    /// of random or score-ordered tiers and roles, tied and signed-zero scores, token and page
    /// units), `restoreScoreOrder` skipping ordered groups leaves exactly the tiers and roles that
    /// ranking every group does.
    @Test func skippingOrderedGroupsEqualsTheFullHandOut() throws {
        var g = SeededGenerator(seed: 90_031)
        var identical = 0
        for trial in 0..<600 {
            let n = Int.random(in: 1...400, using: &g)
            let unit = [1, 1, 4, 16].randomElement(using: &g)!
            let regions = StreamRegions(sinkTokenCount: Int.random(in: 0...4, using: &g), recentTokenCount: Int.random(in: 0...20, using: &g))
            let config = PlannerConfiguration(headDim: 64, regions: regions, pageCapacity: 16, granularity: unit == 1 ? .token : .page(tokenCount: unit))
            let current = (0..<n).map { _ in [Tier.fp16, .fp16, .int8, .int4].randomElement(using: &g)! }
            let host: [Float] = (0..<n).map { _ in
                switch Int.random(in: 0...3, using: &g) {
                case 0: return -0.0
                case 1: return Float(Int.random(in: 0...6, using: &g)) / 2
                default: return Float.random(in: 0...10, using: &g)
                }
            }
            let input = StreamInput(positions: (0..<n).map { Int32($0) }, tiers: current, hostScores: host, queryHeadScores: nil)
            var ctx = try PlanningContext(input, config, ByteBudget(.fractionOfFP16(1)), required: 0, minimumRequired: 0)
            let scores = ctx.valueScores(host)
            let ordered = Bool.random(using: &g)
            let ranked = ctx.units.indices.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 > $1 }
            for (r, u) in ranked.enumerated() {
                let worst = ctx.currentWorstTier(unit: u)
                let tier: Tier = ordered ? [Tier.fp16, .int8, .int4, .dropped][min(3, 4 * r / max(1, ranked.count))]
                    : Tier.allCases.randomElement(using: &g)!
                let role: TokenRole = ordered ? (tier == .dropped ? .rest : .kept) : [.kept, .rest].randomElement(using: &g)!
                ctx.assign(unit: u, tier: max(tier, worst), role: role)
            }
            var fast = ctx, full = ctx
            fast.restoreScoreOrder(scores: scores)
            full.restoreScoreOrder(scores: scores, skippingOrderedGroups: false)
            #expect(fast.tiers == full.tiers && fast.roles == full.roles, "seed \(g.seed) trial \(trial) n \(n) unit \(unit) ordered \(ordered)")
            if fast.tiers == ctx.tiers && fast.roles == ctx.roles { identical += 1 }
        }
        #expect(identical > 50, "seed \(g.seed): too few plans already in order (\(identical))")
    }

    @Test func roundingIsSpentAndTheBudgetHolds() throws {
        var g = SeededGenerator(seed: 90_001)
        var checked = 0, mixed = 0
        for trial in 0..<600 {
            let n = Int.random(in: 1...300, using: &g)
            let page = [1, 3, 8, 16, 32].randomElement(using: &g)!
            let regions = StreamRegions(sinkTokenCount: Int.random(in: 0...4, using: &g), recentTokenCount: Int.random(in: 0...33, using: &g))
            let config = PlannerConfiguration(headDim: [16, 64, 128].randomElement(using: &g)!, regions: regions, formats: .grouped,
                                              pageCapacity: page, headroomTokenCount: Bool.random(using: &g) ? 0 : Int.random(in: 1...page, using: &g))
            let scores = (0..<n).map { _ in Float(Int.random(in: 1...40, using: &g)) / 8 }
            let input = StreamInput.prefill(tokenCount: n, hostScores: scores, queryHeadScores: ImportanceScores.random(headCount: 3, tokenCount: n, seed: g.next()))
            let budget = ByteBudget.fraction(Double.random(in: 0.05...0.9, using: &g))
            let tiered = trial % 2 == 0
            let planner: any StreamPlanner = tiered ? TieredPlanner(configuration: config) : BudgetPlanner(configuration: config)
            let context = "seed \(g.seed) trial \(trial): n \(n) page \(page) \(regions) headroom \(config.headroomTokenCount) \(budget) tiered \(tiered)"
            let a: StreamAssignment
            do { a = try planner.plan(input, budget: budget) } catch {
                guard case .budgetBelowProtectedTokens = error else { Issue.record("\(error): \(context)"); continue }
                continue
            }
            checked += 1
            let c = config.costs
            let counts = Tier.allCases.map { t in a.tiers.filter { $0 == t }.count + (t == .fp16 ? config.headroomTokenCount : 0) }
            #expect(c.pagedByteCount(counts: counts) <= a.budgetByteCount, "over budget: \(context)")
            let middle = config.regions.split(tokenCount: n).middle
            let rungs: [Tier] = tiered ? [.fp16, .int8, .int4] : [.fp16]
            if a.tokenCount(.dropped) > 0 && a.tiers[middle].contains(where: { $0 != .dropped }) { mixed += 1 }
            for t in rungs where counts[t.rawValue] % page != 0 {
                let below = middle.filter { a.tiers[$0] > t }
                #expect(below.isEmpty, "tier \(t) has a free slot while tokens \(below.prefix(5)) sit below it: \(context)")
            }
        }
        #expect(checked > 400 && mixed > 200, "coverage: \(checked) planned, \(mixed) keeping some of the middle and dropping some")
    }

    /// The fill's free moves found through lanes give the same plans as the scan of every unit per
    /// move: prefill and re-plans (tokens already at INT8/INT4/INT2), every planner, row-wise and
    /// per-channel formats, pages of 1–64, token and page granularity, headroom, tied scores.
    @Test func laneFreeMovesEqualTheScan() throws {
        var g = SeededGenerator(seed: 90_041)
        var planned = 0, differentFromInput = 0
        for trial in 0..<400 {
            let n = Int.random(in: 1...260, using: &g)
            let page = [1, 3, 16, 32, 64].randomElement(using: &g)!
            let regions = StreamRegions(sinkTokenCount: Int.random(in: 0...4, using: &g), recentTokenCount: Int.random(in: 0...24, using: &g))
            // Per-channel keys' page parameters make INT tiers dearer than FP16 in tiny pages.
            let formats: TierFormats = page < 16 || Bool.random(using: &g) ? .grouped : .standard
            let unit = [1, 1, 1, 4].randomElement(using: &g)!
            var config = PlannerConfiguration(headDim: [16, 64].randomElement(using: &g)!, regions: regions, formats: formats, pageCapacity: page,
                                              granularity: unit == 1 ? .token : .page(tokenCount: unit),
                                              headroomTokenCount: Bool.random(using: &g) ? 0 : Int.random(in: 1...16, using: &g))
            let replan = Bool.random(using: &g)
            let tiers: [Tier]? = replan ? (0..<n).map { _ in [Tier.fp16, .fp16, .int8, .int4, .int2].randomElement(using: &g)! } : nil
            let scores = (0..<n).map { _ in Bool.random(using: &g) ? Float(Int.random(in: 0...8, using: &g)) / 4 : Float.random(in: 0...10, using: &g) }
            let input = StreamInput(positions: (0..<n).map { Int32($0) }, tiers: tiers, hostScores: scores,
                                    queryHeadScores: ImportanceScores.random(headCount: 2, tokenCount: n, seed: g.next()))
            let budget = ByteBudget.fraction(Double.random(in: 0.05...0.9, using: &g), representativeShare: Bool.random(using: &g) ? 0 : 0.2)
            let kind = trial % 3
            func plan(_ indexed: Bool) throws(SelectionError) -> StreamAssignment {
                config.indexesFreeMoves = indexed
                let planner: any StreamPlanner
                switch kind {
                case 0: planner = PlainPlanner(configuration: config)
                case 1: planner = TieredPlanner(configuration: config)
                default: planner = BudgetPlanner(configuration: config)
                }
                return try planner.plan(input, budget: budget)
            }
            let context = "seed \(g.seed) trial \(trial): n \(n) page \(page) unit \(unit) replan \(replan) kind \(kind) \(budget)"
            let scan: StreamAssignment
            do { scan = try plan(false) } catch {
                guard case .budgetBelowProtectedTokens = error else { Issue.record("\(error): \(context)"); continue }
                continue
            }
            let lanes = try plan(true)
            #expect(lanes == scan, "\(context)")
            planned += 1
            if scan.tiers != scan.previousTiers { differentFromInput += 1 }
        }
        #expect(planned > 200 && differentFromInput > 150, "coverage: \(planned) planned, \(differentFromInput) changed")
        #expect(PlanningContext.FreeMoveLanes.movesFound.load(ordering: .relaxed) > 0, "the lanes never found a free move")
    }

    /// The lanes' best free move is the scan's, ties across lanes included: with errors in equal steps
    /// and integer scores, moves of different units between different tiers gain exactly the same,
    /// and the scan keeps the last of them (the later unit, then the farther rung).
    @Test func laneBestIsTheScansBestWithTies() throws {
        var g = SeededGenerator(seed: 90_053)
        // Equal steps (ties between tier pairs), and two tiers of equal error (ties between one unit's rungs).
        let models = [try TierErrorModel(relativeErrors: [.fp16: 0, .int8: 0.25, .int4: 0.5, .int2: 0.75, .dropped: 1]),
                      try TierErrorModel(relativeErrors: [.fp16: 0, .int8: 0.25, .int4: 0.25, .int2: 0.75, .dropped: 1])]
        var moves = 0, tiedAcrossLanes = 0
        for trial in 0..<300 {
            let errors = models[trial % 2]
            let n = Int.random(in: 1...120, using: &g)
            let page = [1, 4, 16].randomElement(using: &g)!
            let config = PlannerConfiguration(headDim: 16, regions: StreamRegions(sinkTokenCount: 0, recentTokenCount: 0), formats: .grouped,
                                              pageCapacity: page)
            let input = StreamInput(positions: (0..<n).map { Int32($0) }, hostScores: (0..<n).map { _ in Float(Int.random(in: 0...4, using: &g)) },
                                    queryHeadScores: nil)
            var ctx = try PlanningContext(input, config, ByteBudget(.fractionOfFP16(1)), required: 0, minimumRequired: 0)
            let scores = ctx.valueScores(input.hostScores)
            for u in ctx.units.indices { ctx.assign(unit: u, tier: Tier.allCases.randomElement(using: &g)!, role: .kept) }
            // Ladders: every tier, or a random subset holding the planned one.
            let masks = ctx.units.indices.map { u -> Int in
                let t = ctx.unitTier(u).rawValue
                return Bool.random(using: &g) ? 0b11111 : (Int.random(in: 0...31, using: &g) | 1 << t)
            }
            guard var lanes = PlanningContext.FreeMoveLanes(ctx, masks: masks, scores: scores, errorModel: errors) else {
                Issue.record("seed \(g.seed) trial \(trial): one-token units refused"); continue
            }
            let counts = ctx.plannedCounts(), costs = config.costs
            // Leave a random slack above the current bytes, so some moves fit and others do not.
            let current = costs.pagedByteCount(counts: counts) + Int.random(in: 0...(3 * costs.byteCount(.fp16)), using: &g)
            // The scan: units in order, rungs nearest first, the last of equal gains.
            var expected: (unit: Int, to: Tier, gain: Double)?, tied = false
            for u in ctx.units.indices {
                let t = ctx.unitTier(u)
                guard masks[u] & (1 << t.rawValue) != 0 else { continue }
                for up in Tier.allCases.reversed() where up < t && masks[u] & (1 << up.rawValue) != 0 {
                    let gain = scores[u] * (errors.relativeError(t) - errors.relativeError(up))
                    guard gain > 0 else { continue }
                    var trial = counts
                    trial[t.rawValue] -= 1
                    trial[up.rawValue] += 1
                    guard costs.pagedByteCount(counts: trial) <= current else { continue }
                    if let e = expected, gain == e.gain, e.to != up || e.unit != u { tied = true }
                    if expected == nil || gain >= expected!.gain { expected = (u, up, gain) }
                }
            }
            let got = lanes.best(in: ctx, counts: counts, current: current, bytes: { costs.pagedByteCount(counts: $0) })
            #expect(got?.unit == expected?.unit && got?.to == expected?.to,
                    "seed \(g.seed) trial \(trial): lanes \(String(describing: got)), scan \(String(describing: expected))")
            if expected != nil { moves += 1 }
            if tied { tiedAcrossLanes += 1 }
        }
        #expect(moves > 100 && tiedAcrossLanes > 50, "coverage: \(moves) moves, \(tiedAcrossLanes) with tied gains")
    }
}
