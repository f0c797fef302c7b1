import KVQuantization

/// Where a token of a stream is stored.
struct TokenLocation: Hashable {
    var tier: Int
    /// Index into the tier's pages, or -1 for its staging page.
    var page: Int
    var slot: Int
}

/// The pages of one tier of one stream.
struct TierState: Sendable {
    /// Row-wise tiers: pages filled in order, only the last may be partial. Page-wise (channelwise
    /// keys) tiers: sealed, full pages.
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

    /// Every stored token's location, by position. O(tokens).
    func locations() -> [Int32: TokenLocation] {
        var map = [Int32: TokenLocation](minimumCapacity: tokenCount)
        for (t, tier) in tiers.enumerated() {
            for (i, page) in tier.pages.enumerated() {
                for s in 0..<page.count { map[page.position(s)] = TokenLocation(tier: t, page: i, slot: s) }
            }
            if let st = tier.staging {
                for s in 0..<st.count { map[st.position(s)] = TokenLocation(tier: t, page: -1, slot: s) }
            }
        }
        return map
    }

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

    // MARK: Appending at FP16

    /// Bytes of new pages an append of `count` tokens at FP16 allocates.
    mutating func appendCost(_ count: Int, layout: PageLayout) -> Int {
        guard count > 0 else { return 0 }
        var free = 0, copy = 0
        if let last = tiers[0].pages.indices.last, !tiers[0].pages[last].isFull {
            free = layout.capacity - tiers[0].pages[last].count
            if !isKnownUniquelyReferenced(&tiers[0].pages[last]) { copy = 1 }
        }
        let fresh = (max(0, count - free) + layout.capacity - 1) / layout.capacity
        return (fresh + copy) * layout.byteCount
    }

    /// Appends `count` FP16-encoded rows (`keys`/`values`: `count` rows of `2·headDim` bytes each)
    /// with consecutive positions from `firstPosition`.
    mutating func appendFP16(keys: UnsafeRawPointer, values: UnsafeRawPointer, count: Int,
                             firstPosition: Int32, layout: PageLayout, pool: PagePool) {
        var done = 0
        while done < count {
            if tiers[0].pages.isEmpty || tiers[0].pages[tiers[0].pages.count - 1].isFull {
                tiers[0].pages.append(pool.allocate(layout, after: tiers[0].pages.last))
            }
            let last = tiers[0].pages.count - 1
            makeUnique(tier: 0, page: last, pool: pool)
            let page = tiers[0].pages[last]
            let n = min(layout.capacity - page.count, count - done)
            page.keyRow(page.count).copyMemory(from: keys + done * layout.keyRowByteCount, byteCount: n * layout.keyRowByteCount)
            page.valueRow(page.count).copyMemory(from: values + done * layout.valueRowByteCount, byteCount: n * layout.valueRowByteCount)
            for k in 0..<n { page.setPosition(firstPosition + Int32(done + k), page.count + k) }
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
