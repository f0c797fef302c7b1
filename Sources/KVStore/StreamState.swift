import KVQuantization

/// Where a token of a stream is stored.
struct TokenLocation: Hashable {
    var tier: Int
    /// Index into the tier's pages, or -1 for its staging page.
    var page: Int
    var slot: Int
}

/// The pages of one tier of one stream.
///
/// Invariants (kept by `append` and `apply`, checked when a snapshot loads):
/// - every page holds its tokens in strictly ascending position order, spanning at most
///   `PagePositions.maxSpan` positions;
/// - row-wise tiers: the pages in order hold the tier's tokens in ascending order, packed greedily:
///   each page is full, or was closed early because the next token lies more than `maxSpan` past
///   its first; only the last page may be partial otherwise. So a tier of n tokens whose positions
///   span less than 65,536 holds exactly ⌈n/P⌉ pages, and any tier at most one page more per
///   65,536 positions it spans.
/// - page-wise (channelwise keys) tiers: sealed pages, each full or closed early by the span rule,
///   in no particular order among themselves, plus at most one staging page (FP16 keys) holding
///   fewer than `capacity` tokens.
struct TierState: Sendable {
    /// Row-wise tiers: pages in position order. Page-wise tiers: the sealed pages.
    var pages: [Page] = []
    /// Page-wise tiers only: tokens waiting for a full page, keys at FP16.
    var staging: Page?

    var tokenCount: Int { pages.reduce(0) { $0 + $1.count } + (staging?.count ?? 0) }
    var pageCount: Int { pages.count + (staging == nil ? 0 : 1) }
    var byteCount: Int { pages.reduce(0) { $0 + $1.layout.byteCount } + (staging?.layout.byteCount ?? 0) }

    func page(_ index: Int) -> Page { index < 0 ? staging! : pages[index] }
}

/// The cache of one (sequence, layer, KV head): its tokens in four stored tiers.
struct StreamState: Sendable {
    var tiers = [TierState](repeating: TierState(), count: Tier.stored.count)

    var tokenCount: Int { tiers.reduce(0) { $0 + $1.tokenCount } }
    var byteCount: Int { tiers.reduce(0) { $0 + $1.byteCount } }

    /// Every stored token as (position, tier index, page, slot), in position order.
    /// O(tokens · log tokens).
    func entriesByPosition() -> [(position: Int32, tier: Int, page: Page, slot: Int)] {
        var entries = [(position: Int32, tier: Int, page: Page, slot: Int)]()
        entries.reserveCapacity(tokenCount)
        for (t, tier) in tiers.enumerated() {
            for page in tier.pages + (tier.staging.map { [$0] } ?? []) {
                for s in 0..<page.count { entries.append((page.position(s), t, page, s)) }
            }
        }
        entries.sort { $0.position < $1.position }
        return entries
    }

    /// Every stored token's position and tier (raw), ascending by position: `entriesByPosition`
    /// without the page references, ordered by a slot per position (a stream holds each position
    /// once) in O(tokens + span).
    func positionsAndTiers() -> (positions: [Int32], tiers: [Tier]) {
        var low = Int32.max, high = Int32.min, n = 0
        for tier in tiers {
            for page in tier.pages + (tier.staging.map { [$0] } ?? []) where page.count > 0 {
                low = min(low, page.basePosition)
                high = max(high, page.lastPosition)
                n += page.count
            }
        }
        guard n > 0 else { return ([], []) }
        var slots = [Int8](repeating: -1, count: Int(high - low) + 1)
        for (t, tier) in tiers.enumerated() {
            for page in tier.pages + (tier.staging.map { [$0] } ?? []) {
                let base = page.basePosition, offsets = page.offsets
                for s in 0..<page.count { slots[Int(base - low) + Int(offsets[s])] = Int8(t) }
            }
        }
        var positions = [Int32](), out = [Tier]()
        positions.reserveCapacity(n)
        out.reserveCapacity(n)
        for (i, t) in slots.enumerated() where t >= 0 {
            positions.append(low + Int32(i))
            out.append(Tier(rawValue: Int(t))!)
        }
        return (positions, out)
    }

    // MARK: Sliding-window eviction

    /// Releases every page (sealed or staging, of any tier) whose tokens all lie at positions
    /// ≤ `cutoff`. Keeps the tier invariants: a row-wise tier loses a prefix of full pages (its
    /// pages ascend, and only its last page may be partial, which is then dropped only if it is
    /// the last left), a page-wise tier some of its sealed pages. O(pages).
    mutating func evictPages(through cutoff: Int32) {
        for t in tiers.indices {
            if tiers[t].pages.contains(where: { $0.lastPosition <= cutoff }) {
                tiers[t].pages.removeAll { $0.lastPosition <= cutoff }
            }
            if let st = tiers[t].staging, st.count > 0, st.lastPosition <= cutoff { tiers[t].staging = nil }
        }
    }

    // MARK: Appending at FP16

    /// Token slots the FP16 tier's last page can take for positions from `first` on (0 if none:
    /// no page, full, or `first` beyond its span).
    func appendRoom(from first: Int32) -> Int {
        guard let page = tiers[0].pages.last, page.count > 0 else { return 0 }
        return min(page.layout.capacity - page.count, max(0, Int(page.basePosition) + PagePositions.maxSpan - Int(first) + 1))
    }

    /// Bytes of new pages an append of `count` tokens at FP16, at consecutive positions from
    /// `firstPosition`, allocates.
    mutating func appendCost(_ count: Int, firstPosition: Int32, layout: PageLayout) -> Int {
        guard count > 0 else { return 0 }
        let free = appendRoom(from: firstPosition)
        var copy = 0
        if free > 0, !isKnownUniquelyReferenced(&tiers[0].pages[tiers[0].pages.count - 1]) { copy = 1 }
        // Fresh pages hold `capacity` consecutive positions each: a span of capacity − 1 ≤ maxSpan.
        let fresh = (max(0, count - free) + layout.capacity - 1) / layout.capacity
        return (fresh + copy) * layout.byteCount
    }

    /// Appends `count` FP16 rows with consecutive positions from `firstPosition` (after every
    /// stored position): `write(tokens, keyRows, valueRows)` writes the rows of `tokens` (indices
    /// into the appended run) straight into a page's key and value rows (`2·headDim` bytes each).
    mutating func appendFP16(count: Int, firstPosition: Int32, layout: PageLayout, pool: PagePool,
                             write: (Range<Int>, UnsafeMutableRawPointer, UnsafeMutableRawPointer) -> Void) {
        var done = 0
        while done < count {
            let first = firstPosition + Int32(done)
            var room = appendRoom(from: first)
            if room == 0 {
                tiers[0].pages.append(pool.allocate(layout, after: tiers[0].pages.last))
                room = layout.capacity
            }
            let last = tiers[0].pages.count - 1
            makeUnique(tier: 0, page: last, pool: pool)
            let page = tiers[0].pages[last]
            let n = min(room, count - done), at = page.count
            write(done..<(done + n), page.keyRow(at), page.valueRow(at))
            if at == 0 { page.setPosition(first, 0) }
            // Offsets of consecutive positions: within the span by `appendRoom`.
            let o0 = Int(first) - Int(page.basePosition)
            for k in (at == 0 ? 1 : 0)..<n { page.offsets[at + k] = UInt16(o0 + k) }
            page.count += n
            done += n
        }
    }

    /// Replaces a shared page by a private copy (copy-on-write).
    mutating func makeUnique(tier t: Int, page i: Int, pool: PagePool) {
        if i < 0 {
            guard let st = tiers[t].staging, !isKnownUniquelyReferenced(&tiers[t].staging!) else { return }
            tiers[t].staging = Self.copy(st, pool: pool, after: nil)
        } else if !isKnownUniquelyReferenced(&tiers[t].pages[i]) {
            tiers[t].pages[i] = Self.copy(tiers[t].pages[i], pool: pool, after: i > 0 ? tiers[t].pages[i - 1] : nil)
        }
    }

    /// A private copy of `page`, placed after `previous` (its predecessor in the tier) if possible.
    static func copy(_ page: Page, pool: PagePool, after previous: Page?) -> Page {
        let c = pool.allocate(page.layout, after: previous)
        c.bytes.copyMemory(from: page.bytes, byteCount: page.layout.byteCount)
        c.count = page.count
        return c
    }
}
