import Testing
import TestSupport
import KVQuantization
@testable import KVSelection

@Suite struct BudgetPlannerTests {
    // Grouped formats at headDim 64 in pages of 8 (the tests' planners): fp16 260 B/token, int8 140,
    // int4 84, int2 52 (rows + a 2-byte position offset + the page's 16 bytes of position base and
    // padding over 8 tokens).
    @Test func standardCosts() {
        let c = TierCosts(formats: .grouped, headDim: 64, pageCapacity: 8)
        #expect(Tier.allCases.map { c.byteCount($0) } == [260, 140, 84, 52, 0])
        #expect(c.pageByteCount(.fp16) == 8 * 260)
        #expect(c.pagedByteCount(.int4, tokenCount: 17) == 3 * 8 * 84)
        // Pages of 16: the page's 16 bytes cost 1 per token.
        let c16 = TierCosts(formats: .grouped, headDim: 64, pageCapacity: 16)
        #expect(Tier.allCases.map { c16.byteCount($0) } == [259, 139, 83, 51, 0])
        #expect(c16.pageByteCount(.fp16) == 16 * 258 + 4 + 12)
        // Channelwise keys amortise their per-page parameters (4·64 / 16 = 16 B per token).
        var formats = TierFormats.grouped
        formats.keys[.int4] = .channelwise(.int4)
        let k = TierCosts(formats: formats, headDim: 64, pageCapacity: 16)
        #expect(k.byteCount(.int4) == 32 + 40 + 2 + 16 + 1)
        // Per-tier page capacities: int4 pages of 128 spread the 272 bytes per page over 128 tokens.
        let k128 = TierCosts(formats: formats.withPageCapacities([.int4: 128, .fp16: 16]), headDim: 64, pageCapacity: 8)
        #expect(k128.pageCapacity(.int4) == 128 && k128.pageCapacity(.int8) == 8 && k128.pageCapacity(.fp16) == 16)
        #expect(k128.byteCount(.int4) == 32 + 40 + 2 + 3 && k128.byteCount(.fp16) == 259 && k128.byteCount(.int8) == 140)
        #expect(k128.pageByteCount(.int4) == 128 * 74 + 256 + 16)
        // 129 tokens: one sealed page and a staging page of 128 FP16 keys (and int4 values).
        #expect(k128.partialPageByteCount(.int4) == 128 * (128 + 40 + 2) + 16)
        #expect(k128.pagedByteCount(.int4, tokenCount: 129) == k128.pageByteCount(.int4) + k128.partialPageByteCount(.int4))
        #expect(k128.slackBound(tiers: [.fp16, .int4]) == k128.pageByteCount(.fp16) + k128.partialPageByteCount(.int4))
    }

    /// n = 12, 1 sink, 1 recent; middle = tokens 1...10 (m0...m9). Grouped formats in pages of one
    /// token, so whole pages cost exactly the per-token bytes and the arithmetic below is by hand:
    /// fp16 272, int8 152, int4 96, int2 64 (rows + 2-byte offset + the page's 14 bytes of position
    /// base and padding); the protected sink and recent tokens take 544.
    /// Query head 0 ranks m0 > … > m9 (bit 0 for m0...m4), head 1 the reverse (bit 1 for m5...m9).
    func stream() -> StreamInput {
        let head0: [Float] = [0] + (1...10).map { Float(11 - $0) } + [0]
        let head1: [Float] = [0] + (1...10).map { Float($0) } + [0]
        let host: [Float] = [1, 0.125, 0.875, 0.375, 0.25, 0.25, 0.75, 0.125, 0.125, 0.5, 0.25, 1]
        return StreamInput.prefill(tokenCount: 12, hostScores: host,
                                   queryHeadScores: ImportanceScores(headCount: 2, tokenCount: 12, values: head0 + head1))
    }

    func planner(_ granularity: Granularity = .token, anchor: Anchor = .alternate) -> BudgetPlanner {
        BudgetPlanner(configuration: PlannerConfiguration(
            headDim: 64, regions: StreamRegions(sinkTokenCount: 1, recentTokenCount: 1),
            formats: .grouped, pageCapacity: 1, granularity: granularity, kvCrush: KVCrushSelector(anchor: anchor)))
    }

    @Test func hostPlusRepresentativesByHand() throws {
        // available = 1424 − 544 = 880; reps ⌊880·0.375⌋ = 330 → 3 at int4 (288); host 550 → 2 at fp16.
        let a = try planner().plan(stream(), budget: .bytes(1424, representativeShare: 0.375))
        // Host: m1 (0.875), m5 (0.75) → tokens 2, 6. Candidates sorted by distance to the alternate
        // anchor {1}: m6, m7, m8, m9 (0), m0, m2, m3, m4 (2); picks at 0, 4, 7 → m6, m0, m4 → tokens 7, 1, 5.
        #expect(a.tiers == [.fp16, .int4, .fp16, .dropped, .dropped, .int4, .fp16, .int4,
                            .dropped, .dropped, .dropped, .fp16])
        #expect(a.byteCount == 4 * 272 + 3 * 96)
        #expect(a.tokenCount(role: .representative) == 3 && a.tokenCount(role: .kept) == 2)
        #expect(a.streamPlan(layer: 3, kvHead: 1) == StreamPlan(layer: 3, kvHead: 1, moves: [
            .init(position: 1, tier: .int4), .init(position: 3, tier: .dropped), .init(position: 4, tier: .dropped),
            .init(position: 5, tier: .int4), .init(position: 7, tier: .int4), .init(position: 8, tier: .dropped),
            .init(position: 9, tier: .dropped), .init(position: 10, tier: .dropped),
        ]))
    }

    @Test func dropOnlyIsH2OAtTheSameBytes() throws {
        // 0.5 of 12·272 = 1632 → 544 protected, 1088 → 4 middle tokens: 0.875, 0.75, 0.5, then the
        // 0.375 at m2 (token 3).
        let a = try planner().plan(stream(), budget: .fraction(0.5))
        #expect(a.tiers.enumerated().filter { $0.element == .fp16 }.map(\.offset) == [0, 2, 3, 6, 9, 11])
        #expect(a.byteCount == 1632)
    }

    /// Without host scores nothing is ranked by score, and the bytes go to the latest tokens (as
    /// StreamingLLM keeps them): 1632 − 544 = 1088 buys 4 FP16 tokens, m6…m9.
    @Test func withoutScoresTheLatestTokensFillTheBudget() throws {
        var s = stream()
        s.hostScores = nil
        let a = try planner().plan(s, budget: .fraction(0.5))
        #expect(a.tiers == [.fp16] + [Tier](repeating: .dropped, count: 6) + [Tier](repeating: .fp16, count: 5))
    }

    @Test func demotingInsteadOfDroppingByHand() throws {
        // MiKV: the whole middle at int2 first (10·64 = 640), then 416 buys 2 upgrades of 208.
        let a = try planner().plan(stream(), budget: .bytes(544 + 640 + 416, restTier: .int2))
        #expect(a.tiers == [.fp16, .int2, .fp16, .int2, .int2, .int2, .fp16, .int2, .int2, .int2, .int2, .fp16])
        #expect(a.byteCount == 1600)
    }

    @Test func demotionFloorThatDoesNotFitKeepsTheBestAtTheRestTier() throws {
        // Floor 544 + 10·64 = 1184 > 864: the 320 bytes above the protected tokens hold 5 int2 tokens:
        // scores 0.875 (m1), 0.75 (m5), 0.5 (m8), 0.375 (m2), then the 0.25 tie among m3, m4, m9 → m9.
        let a = try planner().plan(stream(), budget: .bytes(864, representativeShare: 0.5, representativeTier: .int4, restTier: .int2))
        #expect(a.tiers == [.fp16, .dropped, .int2, .int2, .dropped, .dropped, .int2, .dropped, .dropped, .int2, .int2, .fp16])
        #expect(a.byteCount == 544 + 5 * 64)
    }

    @Test func pagesByHand() throws {
        // Pages of 2 over the middle: (m0 m1) 1.0, (m2 m3) 0.625, (m4 m5) 1.0, (m6 m7) 0.25, (m8 m9) 0.75.
        let a = try planner(.page(tokenCount: 2)).plan(stream(), budget: .bytes(1632))
        // Two pages: the 1.0 tie → pages 2 and 0 → tokens 1, 2, 5, 6.
        #expect(a.tiers.enumerated().filter { $0.element == .fp16 }.map(\.offset) == [0, 1, 2, 5, 6, 11])
        // available 780: reps ⌊780/4⌋ = 195 → 1 page at 2·96; host 585 → 1 page (page 2, the later of the tie).
        // Candidate pages 0, 1, 3, 4 all lie 2 bits from the zero anchor → the first, page 0.
        let b = try planner(.page(tokenCount: 2), anchor: .zeros).plan(stream(), budget: .bytes(1324, representativeShare: 0.25))
        #expect(b.tiers == [.fp16, .int4, .int4, .dropped, .dropped, .fp16, .fp16, .dropped,
                            .dropped, .dropped, .dropped, .fp16])
    }

    @Test func everythingThatFitsStays() throws {
        let a = try planner().plan(stream(), budget: .fraction(1))
        #expect(a.tiers == [Tier](repeating: .fp16, count: 12) && a.streamPlan(layer: 0, kvHead: 0).moves.isEmpty)
    }

    @Test func badBudgetsAreTypedErrors() {
        let p = planner(), s = stream()
        do {
            _ = try p.plan(s, budget: .fraction(.nan))
            Issue.record("NaN fraction accepted")
        } catch {
            guard case .invalidBudgetFraction(let f) = error, f.isNaN else { Issue.record("\(error)"); return }
        }
        #expect(throws: SelectionError.invalidBudgetFraction(-0.5)) { try p.plan(s, budget: .fraction(-0.5)) }
        #expect(throws: SelectionError.invalidBudgetFraction(.infinity)) { try p.plan(s, budget: .fraction(.infinity)) }
        #expect(throws: SelectionError.invalidBudgetByteCount(-1)) { try p.plan(s, budget: .bytes(-1)) }
        #expect(throws: SelectionError.invalidRepresentativeShare(1.5)) { try p.plan(s, budget: .fraction(0.5, representativeShare: 1.5)) }
        #expect(throws: SelectionError.invalidTier(.fp16, role: "rest tier")) { try p.plan(s, budget: .fraction(0.5, restTier: .fp16)) }
        #expect(throws: SelectionError.self) { try p.plan(s, budget: .fraction(0.5, representativeShare: 0.5, representativeTier: .dropped)) }
        #expect(throws: SelectionError.budgetBelowProtectedTokens(requiredByteCount: 544, budgetByteCount: 500)) {
            try p.plan(s, budget: .bytes(500))
        }
    }

    @Test func openVINOPlacementAddsRepresentativesOnTop() throws {
        // available 880: host gets all of it (3 fp16 tokens = 816), reps ⌊880·0.375⌋ = 330 on top (3 at
        // int4); the 106 bytes left of 1424 + 330 buy one more token at int4, placed by its score (kept).
        let b = ByteBudget(.byteCount(1424), representativeShare: 0.375, representativePlacement: .openVINOAddedOnTop)
        let a = try planner().plan(stream(), budget: b)
        #expect(a.tokenCount(role: .kept) == 4 && a.tokenCount(role: .representative) == 3)
        #expect(a.byteCount == 5 * 272 + 4 * 96 && a.byteCount > 1424 && a.byteCount <= 1424 + 330)
    }

    @Test func propertiesOverSeededProblems() {
        var g = SeededGenerator(seed: 424242)
        var planned = 0, withRepresentatives = 0, withDropsAndKeeps = 0
        for trial in 0..<1500 {
            let p = RandomProblem.draw(&g)
            let planner = BudgetPlanner(configuration: p.configuration)
            let context = "seed \(g.seed) trial \(trial): \(p)"
            guard let a = checkPlan(planner, p, context: context) else { continue }
            planned += 1
            if a.tokenCount(role: .representative) > 0 { withRepresentatives += 1 }
            if a.tokenCount(.dropped) > 0 && a.tokenCount(role: .kept) > 0 { withDropsAndKeeps += 1 }
            // Kept tokens (host picks, and those the page fit placed by score) are better scored than
            // every token left at the rest tier, ties to the later position. (KVCrush representatives
            // are chosen by signature, not score.)
            guard p.fresh, p.configuration.granularity == .token, let host = p.input.hostScores else { continue }
            let r = p.configuration.regions.split(tokenCount: p.input.tokenCount)
            let kept = r.middle.filter { a.roles[$0] == .kept }
            let other = r.middle.filter { a.roles[$0] == .rest }
            for k in kept {
                for o in other {
                    #expect(host[k] > host[o] || (host[k] == host[o] && k > o), "host order: \(context)")
                }
            }
        }
        #expect(planned > 500 && withRepresentatives > 100 && withDropsAndKeeps > 100,
                "coverage: \(planned) planned, \(withRepresentatives) with representatives, \(withDropsAndKeeps) mixed")
    }
}
