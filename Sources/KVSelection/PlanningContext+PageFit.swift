import KVQuantization
import Synchronization

/// Fitting a plan to whole pages: the planners choose tiers with per-token (amortised) costs; a
/// store spends whole pages (`TierCosts.pagedByteCount`). This pass makes the plan's exact paged
/// bytes fit the budget and spends what the rounding leaves.
///
/// Every middle unit has a *ladder*: the tiers it may take, most precise first (never above its
/// current tier), down to its floor (the rest tier; `.dropped` when even the rest tier's floor did
/// not fit). Keeping unit u at tier t costs its value `score_u · e_t` of expected error
/// (`TierErrorModel`, e_fp16 = 0, e_dropped = 1), so one step down costs `score_u · (e_lower − e_t)`
/// and one step up gains as much.
///
/// 1. **Trim**: while the paged bytes exceed the limit, free the page of some tier that costs the
///    least error per byte saved: for each tier, the units of its last (partly filled) page with
///    the least harm step one rung down (a row-wise tier's last page, or a channelwise tier's staging
///    page; a full tier's last full page when none is partial), and the tier whose move saves the
///    most bytes per unit of error goes. Ends within budget because every unit can reach its floor
///    and the floor fits (the planners check that first).
/// 2. **Fill**: while some unit can move up a rung without exceeding the limit, move the one that
///    gains the most error per byte it adds (moves into free slots of a partly filled page add no
///    bytes, or even save some, and go first; a move that opens a page is weighed with the best
///    units that page would take).
///
/// The pass never moves a unit above its current tier and never touches sinks, the recent window
/// or the headroom.
///
/// - Complexity: O(T · m) per page trimmed or filled, for m middle units and T ≤ 5 tiers.
extension PlanningContext {
    /// A ladder as a set of tiers, bit `Tier.rawValue` (ladders are ascending and hold each tier
    /// once, so the set says everything: rung order is bit order). The page fit reads ladders once
    /// into these, so its scans over every unit touch no nested arrays.
    private static func rungMask(_ rungs: [Tier]) -> Int {
        assert(zip(rungs, rungs.dropFirst()).allSatisfy { $0 < $1 }, "PlanningContext.fitToPages: a ladder must ascend")
        return rungs.reduce(0) { $0 | 1 << $1.rawValue }
    }

    /// The rung below `t` on the ladder `mask` (`t` on it), if any.
    private static func rung(below t: Tier, in mask: Int) -> Tier? {
        let above = mask & ~((2 << t.rawValue) - 1)
        return above == 0 ? nil : Tier(rawValue: above.trailingZeroBitCount)!
    }

    /// The tier unit `u` is planned at: the best planned tier among its tokens (a unit is assigned
    /// one tier and each token takes it or stays at its own lower current tier, `assign`).
    func unitTier(_ u: Int) -> Tier {
        var best = Tier.dropped, any = false
        for i in units[u] where !any || tiers[i] < best { best = tiers[i]; any = true }
        return any ? best : .fp16
    }

    /// Token counts per tier of the current plan (lane `Tier.rawValue`), headroom slots included in FP16.
    func plannedCounts() -> SIMD8<Int> {
        // Counted in a stack buffer: a SIMD lane picked at run time is a store and a reload per token.
        var counts = SIMD8<Int>()
        withUnsafeTemporaryAllocation(of: Int.self, capacity: 8) { c in
            c.initialize(repeating: 0)
            for t in tiers { c[t.rawValue] += 1 }
            for k in 0..<8 { counts[k] = c[k] }
        }
        counts[Tier.fp16.rawValue] += configuration.headroomTokenCount
        return counts
    }

    /// The role of a unit the fill moves up: kept (it is placed by its score, not by KVCrush).
    func fillRole(_ tier: Tier) -> TokenRole { .kept }

    /// Fits the plan to whole pages (see the type's discussion) within `limit` bytes.
    ///
    /// - Parameters:
    ///   - ladder: per middle unit, the tiers it may take, most precise first, its current tier
    ///     among them.
    ///   - scores: per middle unit, the value of keeping it (host scores summed over the unit).
    ///   - errorModel: the expected error per tier.
    mutating func fitToPages(limit: Int, ladder: [[Tier]], scores: [Double], errorModel: TierErrorModel) {
        let costs = configuration.costs
        var counts = plannedCounts()
        // Counts live in a SIMD vector (lane `Tier.rawValue`): trial copies allocate nothing.
        func bytes(_ c: SIMD8<Int>) -> Int { costs.pagedByteCount(counts: c) }
        func e(_ t: Tier) -> Double { errorModel.relativeError(t) }
        // Moving unit u to tier t moves each token from its planned tier to max(t, its current tier)
        // (`assign`'s rule), so counts stay exact for units of mixed tiers.
        func move(_ u: Int, to t: Tier, _ c: inout SIMD8<Int>) {
            for i in units[u] {
                c[tiers[i].rawValue] -= 1
                c[max(t, input.tiers[i]).rawValue] += 1
            }
        }

        // 1. Trim. Options per tier: its least harmful units, as many as its last page holds, one
        // rung down or straight to their floor.
        var current = bytes(counts)
        // Each unit's ladder, top rung and floor, read once (the loops below scan every unit per page).
        let masks = ladder.map(Self.rungMask)
        let tops = ladder.map { $0.first! }, floors = ladder.map { $0.last! }
        // The next rung down from unit u's tier (its tier is on its ladder whenever it can move down).
        func down(_ u: Int) -> Tier? { Self.rung(below: unitTier(u), in: masks[u]) }
        func floor(_ u: Int) -> Tier { floors[u] }
        while current > limit {
            var best: (units: [Int], to: [Tier], saved: Int, harm: Double)?
            for t in Tier.stored where counts[t.rawValue] > 0 {
                let movable = units.indices.filter { unitTier($0) == t && floor($0) != t }
                guard !movable.isEmpty else { continue }
                let n = counts[t.rawValue], page = costs.pageCapacity(t)
                let inLastPage = n % page == 0 ? page : n % page
                // When every movable unit's next rung is its floor, the second option is the first again.
                let floorsAreNext = movable.allSatisfy { down($0)! == floor($0) }
                for toFloor in floorsAreNext ? [false] : [false, true] {
                    func target(_ u: Int) -> Tier { toFloor ? floor(u) : down(u)! }
                    // The least harmful units, least harm first, ties by unit: at most `inLastPage` of
                    // them are taken (each holds a token at least), so only those are ranked.
                    let keyed = movable.map { (harm: scores[$0] * (e(target($0)) - e(t)), unit: $0) }
                    let ranked = Self.first(inLastPage, of: keyed) { a, b in a.harm != b.harm ? a.harm < b.harm : a.unit < b.unit }
                        .lazy.map(\.unit)
                    var taken: [Int] = [], targets: [Tier] = [], tokens = 0, harm = 0.0, trial = counts
                    for u in ranked where tokens < inLastPage {
                        let d = target(u)
                        harm += scores[u] * (e(d) - e(t))
                        tokens += units[u].count
                        move(u, to: d, &trial)
                        taken.append(u)
                        targets.append(d)
                    }
                    let saved = current - bytes(trial)
                    guard saved > 0 else { continue }
                    // Least harm per byte saved (harm may be 0: then most bytes first).
                    if let b = best {
                        let l = harm * Double(b.saved), r = b.harm * Double(saved)
                        if l < r || (l == r && saved > b.saved) { best = (taken, targets, saved, harm) }
                    } else {
                        best = (taken, targets, saved, harm)
                    }
                }
            }
            if best == nil {
                // No option frees a page on its own: send every movable unit of the tier that costs
                // most per token to its floor (progress: units only move down, to floors that fit).
                guard let t = Tier.stored.filter({ t in units.indices.contains { unitTier($0) == t && floor($0) != t } })
                        .max(by: { costs.byteCount($0) < costs.byteCount($1) }) else { break }
                let us = units.indices.filter { unitTier($0) == t && floor($0) != t }
                best = (us, us.map(floor), 0, 0)
            }
            for (u, d) in zip(best!.units, best!.to) {
                move(u, to: d, &counts)
                assign(unit: u, tier: d, role: d == budget.restTier || d == .dropped ? .rest : roles[units[u].lowerBound])
            }
            current = bytes(counts)
        }

        // 2. Fill: free moves first (largest gain), then the page whose best units gain the most
        // per byte it adds. Units only move up here, so those below their top rung (the only ones
        // that can move) are listed once, in unit order, and the list only shrinks.
        var belowTop = units.indices.filter { unitTier($0) != tops[$0] }
        // Free moves by lane where every unit is one token (the scan below then runs only when none
        // is left, to open a page); `nil` falls back to the scan for every move.
        var lanes = configuration.indexesFreeMoves ? FreeMoveLanes(self, masks: masks, scores: scores, errorModel: errorModel) : nil
        while true {
            if lanes != nil, let f = lanes!.best(in: self, counts: counts, current: current, bytes: bytes) {
                move(f.unit, to: f.to, &counts)
                assign(unit: f.unit, tier: f.to, role: fillRole(f.to))
                current = bytes(counts)
                lanes!.insert(f.unit, at: unitTier(f.unit))
                continue
            }
            var free: (unit: Int, to: Tier, gain: Double)?
            var upInto = [[(unit: Int, gain: Double)]](repeating: [], count: Tier.allCases.count)
            // Whether moving one token from tier a to tier b keeps the bytes (lane a·8 + b: 1 yes, 0 no,
            // −1 not asked yet): for one-token units the answer depends on the two tiers alone.
            var oneTokenFits = SIMD64<Int8>(repeating: -1)
            belowTop.removeAll { unitTier($0) == tops[$0] }
            for u in belowTop {
                // Every rung above the unit's tier: free moves may jump; a page is opened for the
                // next rung only.
                let t = unitTier(u)
                guard t != tops[u] else { continue }  // at its top rung already
                // The rungs above t, nearest first (bits below t's, highest first).
                let mask = masks[u]
                guard mask & (1 << t.rawValue) != 0 else { continue }
                var above = mask & ((1 << t.rawValue) - 1)
                guard above != 0 else { continue }
                let nearest = Tier(rawValue: Int.bitWidth - 1 - above.leadingZeroBitCount)!
                while above != 0 {
                    let up = Tier(rawValue: Int.bitWidth - 1 - above.leadingZeroBitCount)!
                    above &= ~(1 << up.rawValue)
                    let gain = scores[u] * (e(t) - e(up))
                    guard gain > 0 else { continue }
                    let fits: Bool
                    if units[u].count == 1 {
                        let i = units[u].lowerBound, lane = tiers[i].rawValue * 8 + max(up, input.tiers[i]).rawValue
                        if oneTokenFits[lane] < 0 {
                            var trial = counts
                            move(u, to: up, &trial)
                            oneTokenFits[lane] = bytes(trial) <= current ? 1 : 0
                        }
                        fits = oneTokenFits[lane] == 1
                    } else {
                        var trial = counts
                        move(u, to: up, &trial)
                        fits = bytes(trial) <= current
                    }
                    if fits {
                        if free == nil || gain >= free!.gain { free = (u, up, gain) }  // ties: the later unit
                    } else if up == nearest {
                        upInto[up.rawValue].append((u, gain))
                    }
                }
            }
            if let f = free {
                move(f.unit, to: f.to, &counts)
                assign(unit: f.unit, tier: f.to, role: fillRole(f.to))
                current = bytes(counts)
                lanes?.insert(f.unit, at: unitTier(f.unit))
                continue
            }
            // Opening a page of tier t: its best units up to a page's worth of tokens.
            var page: (units: [Int], to: Tier, added: Int, gain: Double)?
            for t in Tier.stored where !upInto[t.rawValue].isEmpty {
                // Only a page's worth is taken (each unit holds a token at least): only those are ranked.
                let ranked = Self.first(costs.pageCapacity(t), of: upInto[t.rawValue]) { $0.gain != $1.gain ? $0.gain > $1.gain : $0.unit > $1.unit }
                var trial = counts, tokens = 0, gain = 0.0, taken: [Int] = []
                for c in ranked where tokens < costs.pageCapacity(t) {
                    move(c.unit, to: t, &trial)
                    tokens += units[c.unit].count
                    gain += c.gain
                    taken.append(c.unit)
                }
                // Take only as many as still fit.
                while !taken.isEmpty, bytes(trial) > limit {
                    let u = taken.removeLast()
                    for i in units[u] {
                        trial[max(t, input.tiers[i]).rawValue] -= 1
                        trial[tiers[i].rawValue] += 1
                    }
                    gain -= scores[u] * (e(unitTier(u)) - e(t))
                }
                let added = bytes(trial) - current
                guard !taken.isEmpty, added > 0, gain > 0 else { continue }
                if page == nil || gain * Double(page!.added) > page!.gain * Double(added) { page = (taken, t, added, gain) }
            }
            guard let p = page else { break }
            for u in p.units {
                move(u, to: p.to, &counts)
                assign(unit: u, tier: p.to, role: fillRole(p.to))
                lanes?.insert(u, at: unitTier(u))
            }
            current = bytes(counts)
        }
        restoreScoreOrder(scores: scores)
    }

    /// The fill's free moves without a scan of every unit per move, for streams of one-token units
    /// whose rungs are all at or below their token's current tier (so a move to rung r puts the token
    /// at r exactly; otherwise `init` gives `nil`). Lane (a, b) lists the units planned at tier a with
    /// b above a on their ladder and a positive gain score·(e_a − e_b), ascending by (gain, unit); an
    /// entry whose unit has left tier a is stale and dropped when it reaches the end. Whether a
    /// one-token move from a to b keeps the paged bytes depends on the two tiers alone, so the fill's
    /// best free move is the best lane end among the lanes that fit, with the scan's ties: larger gain,
    /// then the later unit, then the farther rung (the scan visits a unit's rungs nearest first and
    /// takes the last of equal gains).
    ///
    /// - Complexity: O(m log m) to build, O(lanes) per move plus O(m) per insertion (array shifts).
    struct FreeMoveLanes {
        /// Free moves the lanes have found in this process (for the tests: that the lanes run at all).
        static let movesFound = Atomic<Int>(0)
        /// Lane a·8 + b.
        private var lanes = [[(gain: Double, unit: Int)]](repeating: [], count: 64)
        private let masks: [Int]
        private let scores: [Double]
        private let errors: [Double]

        init?(_ context: PlanningContext, masks: [Int], scores: [Double], errorModel: TierErrorModel) {
            for (u, r) in context.units.enumerated() {
                guard r.count == 1 else { return nil }
                let current = context.input.tiers[r.lowerBound]
                // Every rung is `current` or below it (`max(rung, current) == rung`).
                guard masks[u] & ((1 << current.rawValue) - 1) == 0 else { return nil }
            }
            self.masks = masks
            self.scores = scores
            errors = Tier.allCases.map { errorModel.relativeError($0) }
            for u in context.units.indices { add(u, at: context.unitTier(u), sorted: false) }
            for l in lanes.indices where lanes[l].count > 1 {
                lanes[l].sort { $0.gain != $1.gain ? $0.gain < $1.gain : $0.unit < $1.unit }
            }
        }

        /// Lists unit `u`, now at tier `t`, in the lanes of the rungs above `t` (as the scan would see it).
        mutating func insert(_ u: Int, at t: Tier) { add(u, at: t, sorted: true) }

        private mutating func add(_ u: Int, at t: Tier, sorted: Bool) {
            let mask = masks[u]
            guard mask & (1 << t.rawValue) != 0 else { return }
            var above = mask & ((1 << t.rawValue) - 1)
            while above != 0 {
                let up = above.trailingZeroBitCount
                above &= above - 1
                let gain = scores[u] * (errors[t.rawValue] - errors[up])
                guard gain > 0 else { continue }
                let l = t.rawValue * 8 + up, entry = (gain: gain, unit: u)
                guard sorted else { lanes[l].append(entry); continue }
                // First index whose entry is greater than (gain, unit).
                var lo = 0, hi = lanes[l].count
                while lo < hi {
                    let mid = (lo + hi) / 2, e = lanes[l][mid]
                    if e.gain < gain || (e.gain == gain && e.unit < u) { lo = mid + 1 } else { hi = mid }
                }
                lanes[l].insert(entry, at: lo)
            }
        }

        /// The scan's best free move, or `nil` when no one-token move up keeps the paged bytes.
        mutating func best(in context: PlanningContext, counts: SIMD8<Int>, current: Int, bytes: (SIMD8<Int>) -> Int) -> (unit: Int, to: Tier)? {
            var best: (gain: Double, unit: Int, up: Int)?
            for a in 1..<Tier.allCases.count {
                for b in 0..<a {
                    let l = a * 8 + b
                    while let last = lanes[l].last, context.unitTier(last.unit).rawValue != a { lanes[l].removeLast() }
                    guard let top = lanes[l].last else { continue }
                    var trial = counts
                    trial[a] -= 1
                    trial[b] += 1
                    guard bytes(trial) <= current else { continue }
                    if let x = best, top.gain < x.gain || (top.gain == x.gain && (top.unit < x.unit || (top.unit == x.unit && b > x.up))) { continue }
                    best = (top.gain, top.unit, b)
                }
            }
            guard let best else { return nil }
            Self.movesFound.wrappingAdd(1, ordering: .relaxed)
            return (best.unit, Tier(rawValue: best.up)!)
        }
    }

    /// The first `count` elements of `elements` sorted by `precedes` (a strict total order on them),
    /// in that order: `elements.sorted(by: precedes).prefix(count)`, without sorting the rest.
    ///
    /// - Complexity: O(n · count) worst case, O(n) when most elements come after the count-th so far.
    static func first<T>(_ count: Int, of elements: [T], by precedes: (T, T) -> Bool) -> [T] {
        var best: [T] = []
        best.reserveCapacity(min(count, elements.count) + 1)
        for x in elements {
            if best.count == count, let last = best.last, !precedes(x, last) { continue }
            var i = best.count
            while i > 0 && precedes(x, best[i - 1]) { i -= 1 }
            best.insert(x, at: i)
            if best.count > count { best.removeLast() }
        }
        return best
    }

    /// The (tier, role) slots of a group, by tier, stable (a counting sort: the tiers are few).
    static func slots(_ members: [Int], _ memberTiers: [Tier], roles: [TokenRole], units: [Range<Int>]) -> [(tier: Tier, role: TokenRole)] {
        var slots: [(tier: Tier, role: TokenRole)] = []
        slots.reserveCapacity(members.count)
        for tier in Tier.allCases {
            for (u, t) in zip(members, memberTiers) where t == tier { slots.append((tier, roles[units[u].lowerBound])) }
        }
        return slots
    }

    /// Whether handing a group's slots out by `keys` (descending) changes nothing: for tiers
    /// t < t' both present, every key of tier t exceeds every key of tier t' (so each tier's slots go
    /// to the units holding it), and the units of each tier share one role (so the roles within a
    /// tier cannot trade places either).
    ///
    /// - Complexity: O(n), no allocation.
    static func isInScoreOrder(keys: [UInt64], tiers: [Tier], roles: [TokenRole]) -> Bool {
        let n = Tier.allCases.count
        // Per tier: least and greatest key, whether present, its role (stack buffers: a SIMD lane
        // picked at run time costs a store and a reload).
        return withUnsafeTemporaryAllocation(of: UInt64.self, capacity: 2 * n) { bounds in
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: n) { role in
                let lo = bounds.baseAddress!, hi = lo + n
                lo.initialize(repeating: .max, count: n)
                hi.initialize(repeating: 0, count: n)
                role.initialize(repeating: .max)  // .max: tier absent
                for k in keys.indices {
                    let t = tiers[k].rawValue, key = keys[k], r = roleCode(roles[k])
                    if key < lo[t] { lo[t] = key }
                    if key > hi[t] { hi[t] = key }
                    if role[t] == .max { role[t] = r } else if role[t] != r { return false }
                }
                var previousLow: UInt64?
                for t in 0..<n where role[t] != .max {
                    if let p = previousLow, p <= hi[t] { return false }
                    previousLow = lo[t]
                }
                return true
            }
        }
    }

    static func roleCode(_ r: TokenRole) -> UInt8 {
        switch r {
        case .sink: 0
        case .recent: 1
        case .kept: 2
        case .representative: 3
        case .rest: 4
        }
    }

    /// Per unit of `members`, one `UInt64` whose descending order is `restoreScoreOrder`'s: best
    /// score first, ties to the later unit. The high half maps the score's `Float` bits to an
    /// order-preserving unsigned key (−0 taken as +0, as `==` does), the low half is the unit.
    /// `nil` when some score is not exactly a finite `Float` (or a unit needs more than 32 bits): the
    /// caller then sorts tuples.
    static func packedScoreKeys(_ members: [Int], scores: [Double]) -> [UInt64]? {
        var keys = [UInt64]()
        keys.reserveCapacity(members.count)
        for u in members {
            let s = scores[u], f = Float(s)
            guard Double(f) == s, f.isFinite, u >= 0, u <= Int(UInt32.max) else { return nil }
            keys.append(UInt64(orderedBits(f)) << 32 | UInt64(u))
        }
        return keys
    }

    /// An unsigned key ordered as `f` is (`a < b` iff `orderedBits(a) < orderedBits(b)`, and
    /// `orderedBits(-0) == orderedBits(+0)`), for finite `f`.
    static func orderedBits(_ f: Float) -> UInt32 {
        let b = (f + 0).bitPattern  // −0 + 0 = +0
        return b & 0x8000_0000 != 0 ? ~b : b | 0x8000_0000
    }

    /// Restores score order after the page fit, which trims and fills by pages and can leave a
    /// better-scored unit below a worse-scored one: among the middle units that are not KVCrush
    /// representatives, hold tokens of one current tier, and share it and a size, the tiers (with their roles) are handed out
    /// again best first to the best-scored (ties: the later unit). Counts per tier are unchanged, so
    /// the paged bytes are too, and for a fixed count per tier this ordering minimises Σ score·e
    /// (rearrangement inequality).
    ///
    /// `skippingOrderedGroups` (default on) leaves a group already in score order as it is
    /// (`isInScoreOrder`); off, every group is ranked and handed out (the tests hold the two equal).
    mutating func restoreScoreOrder(scores: [Double], skippingOrderedGroups: Bool = true) {
        // Only units whose tokens all sit at one current tier trade places: for them a tier means the
        // same token counts whichever unit takes it.
        // Keyed by (current tier, size); groups are disjoint, so their order does not matter.
        // A few keys (tiers × unit sizes): a list, not a dictionary.
        var groups: [(key: Int, members: [Int])] = []
        for u in units.indices where roles[units[u].lowerBound] != .representative {
            let r = units[u], current = input.tiers[r.lowerBound]
            var uniform = true
            for i in r where input.tiers[i] != current { uniform = false; break }
            guard uniform else { continue }
            let key = current.rawValue + Tier.allCases.count * r.count
            var g = 0
            while g < groups.count, groups[g].key != key { g += 1 }
            if g < groups.count { groups[g].members.append(u) } else { groups.append((key, [u])) }
        }
        for (_, members) in groups where members.count > 1 {
            let memberTiers = members.map { unitTier($0) }
            // Best score first, ties: the later unit (a total order, so any sort gives this order);
            // keyed by value, not through `scores`, which halves the sort's loads.
            if let keys = Self.packedScoreKeys(members, scores: scores) {
                // Already in score order (every unit of a tier ranks before every unit of a later
                // tier, and each tier's units share a role): the hand-out below would give every
                // unit the tier and role it has. Measured, most decode re-plans' groups are.
                if skippingOrderedGroups, Self.isInScoreOrder(keys: keys, tiers: memberTiers, roles: members.map { roles[units[$0].lowerBound] }) { continue }
                // The same order as below, on one integer per unit (the host scores are sums of
                // `Float`s: measured, the tuple sort was a fifth of a decode re-plan).
                let slots = Self.slots(members, memberTiers, roles: roles, units: units)
                var sorted = keys
                sorted.sort(by: >)
                for (key, slot) in zip(sorted, slots) { assign(unit: Int(truncatingIfNeeded: key & 0xFFFF_FFFF), tier: slot.tier, role: slot.role) }
                continue
            }
            let slots = Self.slots(members, memberTiers, roles: roles, units: units)
            var ranked = members.map { (score: scores[$0], unit: $0) }
            ranked.sort { $0.score != $1.score ? $0.score > $1.score : $0.unit > $1.unit }
            for (r, slot) in zip(ranked, slots) { assign(unit: r.unit, tier: slot.tier, role: slot.role) }
        }
    }
}
