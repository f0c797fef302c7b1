import KVQuantization

/// A token taking part in a rebuild: its position and where it is now (tier, page index or -1 for
/// the tier's staging page, slot).
struct MovingToken {
    var position: Int32
    var page: Int32
    var slot: UInt16
    var tier: UInt8

    init(position: Int32, tier: Int, page: Int, slot: Int) {
        self.position = position
        self.page = Int32(page)
        self.slot = UInt16(slot)
        self.tier = UInt8(tier)
    }
}

/// What rebuilding one tier of a stream does, computed by `prepare` from positions alone (nothing
/// changes), carried out by `execute`; the page counts here are the exact bytes the execution
/// allocates.
struct TierRebuild {
    /// Row-wise tiers: the length of the prefix of pages that stays. Page-wise tiers: unused.
    var keptPrefix = 0
    /// Page-wise tiers: indices of the sealed pages that stay (those losing no token).
    var keptPages: [Int] = []
    /// Row-wise tiers: how many of `tokens` go into the last kept page, in place (copied first if
    /// shared): the greedy packing continues that page when it is not full.
    var extensionCount = 0
    /// The tokens to write, in position order: the extension's, then each new page's.
    var tokens: [MovingToken] = []
    /// Token counts of the new pages, in order.
    var pageSizes: [Int] = []
    /// Page-wise tiers: the last new page is the staging page (fewer than `capacity` tokens).
    var lastIsStaging = false
}

/// The validated work of one stream's moves, computed before anything changes.
struct PreparedMoves {
    /// Per stored tier, its rebuild, or `nil` when the tier does not change.
    var rebuilds: [TierRebuild?]
    /// Bytes of pages the execution allocates and frees.
    var allocatedBytes = 0
    var freedBytes = 0

    var isEmpty: Bool { rebuilds.allSatisfy { $0 == nil } }
}

/// Every stored token's location in one stream, by position: a table over the positions' span when
/// it is at most a few times the token count (the usual case: O(span) to build, O(1) per look-up),
/// else a hash table.
///
/// An entry is `tier << 30 | seen << 29 | (page · capacity + slot)`, the staging page counting as
/// page `pages.count` of its tier; `seen` marks positions a plan has named.
struct LocationIndex {
    static let empty = UInt32.max
    private let first: Int32
    private var table: [UInt32]
    private var hashed: [Int32: UInt32]
    private let useTable: Bool

    init(_ stream: StreamState) {
        var lo = Int32.max, hi = Int32.min, n = 0
        for tier in stream.tiers {
            for page in tier.pages + (tier.staging.map { [$0] } ?? []) where page.count > 0 {
                lo = min(lo, page.basePosition)
                hi = max(hi, page.lastPosition)
                n += page.count
            }
        }
        first = lo
        let span = n == 0 ? 0 : Int(hi) - Int(lo) + 1
        useTable = span <= 4 * n + 1024
        table = useTable ? [UInt32](repeating: Self.empty, count: span) : []
        hashed = useTable ? [:] : Dictionary(minimumCapacity: n)
        for (t, tier) in stream.tiers.enumerated() {
            let all = tier.pages + (tier.staging.map { [$0] } ?? [])
            for (i, page) in all.enumerated() {
                precondition((i + 1) * page.layout.capacity <= 1 << 29, "KVStore: a tier of more than 2^29 token slots")
                let code = UInt32(t) << 30 | UInt32(i * page.layout.capacity)
                let base = Int(page.basePosition) - Int(first)
                if useTable {
                    table.withUnsafeMutableBufferPointer { tb in
                        let offsets = page.offsets
                        for s in 0..<page.count { tb[base + Int(offsets[s])] = code + UInt32(s) }
                    }
                } else {
                    for s in 0..<page.count { hashed[page.position(s)] = code + UInt32(s) }
                }
            }
        }
    }

    /// The entry of position `p` with its `seen` mark set, and whether it was set before; `nil` if
    /// the stream holds no token at `p`.
    mutating func visit(_ p: Int32) -> (entry: UInt32, wasSeen: Bool)? {
        if useTable {
            let i = Int(p) - Int(first)
            guard i >= 0, i < table.count, table[i] != Self.empty else { return nil }
            let e = table[i]
            table[i] = e | 1 << 29
            return (e, e & 1 << 29 != 0)
        }
        guard let e = hashed[p] else { return nil }
        hashed[p] = e | 1 << 29
        return (e, e & 1 << 29 != 0)
    }
}

extension StreamState {
    /// Validates `moves` against this stream and computes what executing them does and costs.
    ///
    /// Traps (caller bug) on a position the stream does not hold, a position named twice, or a
    /// move up a tier.
    ///
    /// - Complexity: O(moves + span of the stream's positions) when the positions are dense, plus
    ///   O(tokens of the tiers that change), plus O(k log k) to order k arrivals named out of order.
    mutating func prepare(_ moves: [StreamPlan.Move], codecs: [TierCodecs], context: String) -> PreparedMoves {
        let tierCount = Tier.stored.count
        var p = PreparedMoves(rebuilds: Array(repeating: nil, count: tierCount))
        guard !moves.isEmpty else { return p }
        var index = LocationIndex(self)
        // Per tier: which slots leave (flat page · capacity + slot, staging = page `pages.count`), the
        // first position leaving, and the tokens arriving.
        var leaving = [[Bool]](repeating: [], count: tierCount)
        var firstLeaving = [Int32](repeating: .max, count: tierCount)
        var arrivals = [[MovingToken]](repeating: [], count: tierCount)
        for m in moves {
            guard let (entry, wasSeen) = index.visit(m.position) else {
                preconditionFailure("KVStore.apply: \(context) holds no token at position \(m.position)")
            }
            precondition(!wasSeen, "KVStore.apply: \(context) names position \(m.position) twice")
            let t = Int(entry >> 30), flat = Int(entry & (1 << 29 - 1))
            precondition(m.tier.rawValue >= t,
                         "KVStore.apply: \(context) moves position \(m.position) up from \(Tier(rawValue: t)!) to \(m.tier); tokens only move down")
            guard m.tier.rawValue > t else { continue }
            if leaving[t].isEmpty {
                leaving[t] = [Bool](repeating: false, count: (tiers[t].pages.count + 1) * codecs[t].layout.capacity)
            }
            leaving[t][flat] = true
            firstLeaving[t] = min(firstLeaving[t], m.position)
            if m.tier != .dropped {
                let cap = codecs[t].layout.capacity, page = flat / cap
                arrivals[m.tier.rawValue].append(MovingToken(position: m.position, tier: t,
                                                             page: page == tiers[t].pages.count ? -1 : page, slot: flat % cap))
            }
        }
        for t in 0..<tierCount {
            if !Self.isAscending(arrivals[t]) { arrivals[t].sort { $0.position < $1.position } }
            guard !leaving[t].isEmpty || !arrivals[t].isEmpty else { continue }
            let r = codecs[t].isPageWise
                ? pageWiseRebuild(t, leaving: leaving[t], arrivals: arrivals[t], codecs: codecs[t])
                : rowWiseRebuild(t, leaving: leaving[t], firstLeaving: firstLeaving[t], arrivals: arrivals[t], codecs: codecs[t])
            p.rebuilds[t] = r.rebuild
            p.allocatedBytes += r.allocated
            p.freedBytes += r.freed
        }
        return p
    }

    static func isAscending(_ tokens: [MovingToken]) -> Bool {
        tokens.withUnsafeBufferPointer { b in
            for i in b.indices.dropFirst() where b[i].position <= b[i - 1].position { return false }
            return true
        }
    }

    /// Sizes of the pages a greedy packing of `positions` (ascending) makes: a page takes the next
    /// token while it has a free slot and the token lies at most `PagePositions.maxSpan` past the
    /// page's first.
    static func greedyPageSizes(_ tokens: ArraySlice<MovingToken>, capacity: Int) -> [Int] {
        var sizes = [Int]()
        var count = 0, base = 0
        for t in tokens {
            if count > 0, count < capacity, Int(t.position) - base <= PagePositions.maxSpan {
                count += 1
                continue
            }
            if count > 0 { sizes.append(count) }
            count = 1
            base = Int(t.position)
        }
        if count > 0 { sizes.append(count) }
        return sizes
    }

    /// Row-wise tier `t`: the pages entirely before the first changed position stay; the greedy
    /// packing of the survivors after them merged with the arrivals continues the last of them (if
    /// not full) and fills new pages.
    private mutating func rowWiseRebuild(_ t: Int, leaving: [Bool], firstLeaving: Int32, arrivals: [MovingToken],
                                         codecs c: TierCodecs) -> (rebuild: TierRebuild, allocated: Int, freed: Int) {
        let cap = c.layout.capacity, pageBytes = c.layout.byteCount
        let f = min(firstLeaving, arrivals.first?.position ?? .max)
        let pageCount = tiers[t].pages.count
        var r = TierRebuild()
        var k0 = 0
        while k0 < pageCount, tiers[t].pages[k0].lastPosition < f { k0 += 1 }
        r.keptPrefix = k0
        r.tokens.reserveCapacity(arrivals.count + (pageCount - k0) * cap)
        var next = 0
        for i in k0..<pageCount {
            let page = tiers[t].pages[i]
            for s in 0..<page.count where leaving.isEmpty || !leaving[i * cap + s] {
                let position = page.position(s)
                while next < arrivals.count, arrivals[next].position < position {
                    r.tokens.append(arrivals[next])
                    next += 1
                }
                r.tokens.append(MovingToken(position: position, tier: t, page: i, slot: s))
            }
        }
        r.tokens += arrivals[next...]
        var allocated = 0, freed = 0
        if k0 > 0, !tiers[t].pages[k0 - 1].isFull {
            let last = tiers[t].pages[k0 - 1]
            let room = cap - last.count, base = Int(last.basePosition)
            while r.extensionCount < min(room, r.tokens.count),
                  Int(r.tokens[r.extensionCount].position) - base <= PagePositions.maxSpan { r.extensionCount += 1 }
            if r.extensionCount > 0, !isKnownUniquelyReferenced(&tiers[t].pages[k0 - 1]) { allocated += pageBytes }
        }
        r.pageSizes = Self.greedyPageSizes(r.tokens[r.extensionCount...], capacity: cap)
        allocated += r.pageSizes.count * pageBytes
        for i in k0..<pageCount where isKnownUniquelyReferenced(&tiers[t].pages[i]) { freed += pageBytes }
        return (r, allocated, freed)
    }

    /// Page-wise tier `t`: the sealed pages that lose tokens and the staging page are unpacked; their
    /// survivors and the arrivals, in position order, are packed greedily into pages, all sealed but
    /// a last one with free slots, which is the new staging page.
    private mutating func pageWiseRebuild(_ t: Int, leaving: [Bool], arrivals: [MovingToken],
                                          codecs c: TierCodecs) -> (rebuild: TierRebuild, allocated: Int, freed: Int) {
        let cap = c.layout.capacity, pageCount = tiers[t].pages.count
        var r = TierRebuild()
        var allocated = 0, freed = 0
        var ordered = true
        for i in 0..<(pageCount + 1) {
            guard let page = i < pageCount ? tiers[t].pages[i] : tiers[t].staging else { continue }
            let hit = i == pageCount || (!leaving.isEmpty && leaving[(i * cap)..<(i * cap + page.count)].contains(true))
            guard hit else {
                r.keptPages.append(i)
                continue
            }
            for s in 0..<page.count where leaving.isEmpty || !leaving[i * cap + s] {
                let position = page.position(s)
                if let last = r.tokens.last, last.position > position { ordered = false }
                r.tokens.append(MovingToken(position: position, tier: t, page: i == pageCount ? -1 : i, slot: s))
            }
            if i == pageCount {
                if isKnownUniquelyReferenced(&tiers[t].staging!) { freed += c.stagingLayout!.byteCount }
            } else if isKnownUniquelyReferenced(&tiers[t].pages[i]) {
                freed += c.layout.byteCount
            }
        }
        if let last = r.tokens.last, let a = arrivals.first, a.position < last.position { ordered = false }
        r.tokens += arrivals
        if !ordered { r.tokens.sort { $0.position < $1.position } }
        r.pageSizes = Self.greedyPageSizes(r.tokens[...], capacity: cap)
        r.lastIsStaging = (r.pageSizes.last ?? cap) < cap
        allocated += (r.pageSizes.count - (r.lastIsStaging ? 1 : 0)) * c.layout.byteCount
        if r.lastIsStaging { allocated += c.stagingLayout!.byteCount }
        return (r, allocated, freed)
    }

    /// Carries out prepared moves. Cannot fail: values were validated when appended and decoded
    /// quantised values are clamped to ±65504 before re-encoding (a top code can decode up to
    /// scale/2 above the FP16 range; a rotated vector's elements reach ‖x‖₁/√d, beyond 65504 only
    /// for vectors of extreme norm). Tokens moving between tiers of different rotations (out of FP16
    /// into a rotated tier) are rotated (`rotations`) before they are encoded; tokens staying in
    /// their tier keep their bytes.
    ///
    /// Tiers are rebuilt from the last to the first: every token arriving in a tier comes from a
    /// tier above it, not yet rebuilt, and every token leaving a tier has already been written to
    /// the tier it goes to.
    mutating func execute(_ p: PreparedMoves, codecs: [TierCodecs], rotations: LayerRotations, pool: PagePool) {
        guard !p.isEmpty else { return }
        var scratch = RebuildScratch(headDim: codecs[0].layout.headDim, rowCount: codecs.map(\.layout.capacity).max()!)
        defer { scratch.deallocate() }
        for t in (0..<Tier.stored.count).reversed() {
            guard let r = p.rebuilds[t] else { continue }
            if codecs[t].isPageWise {
                executePageWise(t, r, codecs: codecs, rotations: rotations, pool: pool, scratch: &scratch)
            } else {
                executeRowWise(t, r, codecs: codecs, rotations: rotations, pool: pool, scratch: &scratch)
            }
        }
    }

    private mutating func executeRowWise(_ t: Int, _ r: TierRebuild, codecs: [TierCodecs], rotations: LayerRotations,
                                         pool: PagePool, scratch: inout RebuildScratch) {
        let layout = codecs[t].layout
        let old = tiers[t].pages  // the sources of the survivors
        var written = 0
        if r.extensionCount > 0 {
            makeUnique(tier: t, page: r.keptPrefix - 1, pool: pool)
            let page = tiers[t].pages[r.keptPrefix - 1]
            write(r.tokens[0..<r.extensionCount], tier: t, into: page, at: page.count, old: old, codecs: codecs, rotations: rotations,
                  scratch: &scratch)
            page.count += r.extensionCount
            written = r.extensionCount
        }
        var pages = Array(tiers[t].pages[0..<r.keptPrefix])
        for size in r.pageSizes {
            let page = pool.allocate(layout, after: pages.last)
            write(r.tokens[written..<(written + size)], tier: t, into: page, at: 0, old: old, codecs: codecs, rotations: rotations,
                  scratch: &scratch)
            page.count = size
            pages.append(page)
            written += size
        }
        tiers[t].pages = pages
    }

    private mutating func executePageWise(_ t: Int, _ r: TierRebuild, codecs: [TierCodecs], rotations: LayerRotations,
                                          pool: PagePool, scratch: inout RebuildScratch) {
        let c = codecs[t]
        let old = tiers[t].pages, oldStaging = tiers[t].staging
        var pages = r.keptPages.map { old[$0] }
        var staging: Page?
        var written = 0
        for (k, size) in r.pageSizes.enumerated() {
            let isStaging = r.lastIsStaging && k == r.pageSizes.count - 1
            let page = isStaging ? pool.allocate(c.stagingLayout!) : pool.allocate(c.layout, after: pages.last)
            let chunk = r.tokens[written..<(written + size)]
            // Keys: every token decoded, then the page sealed per channel (or staged at FP16).
            let keys = scratch.keys
            forEachRun(chunk) { run, at in
                let source = run.first!
                let sourcePage = source.tier == t ? (source.page < 0 ? oldStaging! : old[Int(source.page)])
                    : tiers[Int(source.tier)].page(Int(source.page))
                let out = keys + at * c.layout.headDim, s = Int(source.tier)
                codecs[s].decodeKeys(sourcePage, Int(source.slot), count: run.count, into: out)
                let rotated = rotations.convert(out, count: run.count, headDim: c.layout.headDim, values: false, from: s, to: t)
                if rotated || codecs[s].keysNeedClamping(sourcePage) { clampToHalfRange(out, count: run.count * c.layout.headDim) }
            }
            if isStaging {
                c.fp16.encodeRowsUnchecked(keys, count: size, into: page.keyRow(0))
            } else {
                c.encodeSealedKeys(keys, tokenCount: size, into: page)
            }
            writeValues(chunk, tier: t, into: page, old: old, oldStaging: oldStaging, codecs: codecs, rotations: rotations, scratch: &scratch)
            writePositions(chunk, into: page, at: 0)
            page.count = size
            if isStaging { staging = page } else { pages.append(page) }
            written += size
        }
        tiers[t].pages = pages
        tiers[t].staging = staging
    }

    /// Writes row-wise tokens into `page` from slot `at`: survivors (of tier `t`, in `old`) by their
    /// bytes, arrivals decoded from their tier, moved into this tier's rotation and encoded.
    private func write(_ tokens: ArraySlice<MovingToken>, tier t: Int, into page: Page, at: Int, old: [Page],
                       codecs: [TierCodecs], rotations: LayerRotations, scratch: inout RebuildScratch) {
        let c = codecs[t], kr = page.layout.keyRowByteCount, d = page.layout.headDim
        let keys = scratch.keys
        forEachRun(tokens) { run, offset in
            let source = run.first!, slot = at + offset
            if Int(source.tier) == t {
                let from = old[Int(source.page)]
                page.keyRow(slot).copyMemory(from: from.keyRow(Int(source.slot)), byteCount: run.count * kr)
            } else {
                let s = Int(source.tier)
                codecs[s].decodeKeys(tiers[s].page(Int(source.page)), Int(source.slot), count: run.count, into: keys)
                let rotated = rotations.convert(keys, count: run.count, headDim: d, values: false, from: s, to: t)
                if rotated || codecs[s].keysNeedClamping(tiers[s].page(Int(source.page))) { clampToHalfRange(keys, count: run.count * d) }
                c.keyRows!.encodeRowsUnchecked(keys, count: run.count, into: page.keyRow(slot))
            }
        }
        writeValues(tokens, tier: t, into: page, at: at, old: old, oldStaging: nil, codecs: codecs, rotations: rotations, scratch: &scratch)
        writePositions(tokens, into: page, at: at)
    }

    /// Writes the values of `tokens` into `page` from slot `at`: survivors of tier `t` (in `old`, or
    /// `oldStaging` for page -1) by their bytes, arrivals decoded and encoded.
    private func writeValues(_ tokens: ArraySlice<MovingToken>, tier t: Int, into page: Page, at: Int = 0, old: [Page],
                             oldStaging: Page?, codecs: [TierCodecs], rotations: LayerRotations, scratch: inout RebuildScratch) {
        let c = codecs[t], vr = page.layout.valueRowByteCount, d = page.layout.headDim
        let values = scratch.values
        forEachRun(tokens) { run, offset in
            let source = run.first!, slot = at + offset
            if Int(source.tier) == t {
                let from = source.page < 0 ? oldStaging! : old[Int(source.page)]
                page.valueRow(slot).copyMemory(from: from.valueRow(Int(source.slot)), byteCount: run.count * vr)
            } else {
                let s = Int(source.tier)
                codecs[s].values.decodeRows(tiers[s].page(Int(source.page)).valueRow(Int(source.slot)), count: run.count, into: values)
                let rotated = rotations.convert(values, count: run.count, headDim: d, values: true, from: s, to: t)
                if rotated || codecs[s].values.format != .fp16 { clampToHalfRange(values, count: run.count * d) }
                c.values.encodeRowsUnchecked(values, count: run.count, into: page.valueRow(slot))
            }
        }
    }

    private func writePositions(_ tokens: ArraySlice<MovingToken>, into page: Page, at: Int) {
        var slot = at
        for token in tokens {
            page.setPosition(token.position, slot)
            slot += 1
        }
    }

    /// Calls `body(run, offset)` for each maximal run of `tokens` that sit in consecutive slots of
    /// one page of one tier, `offset` being the run's index in `tokens`.
    private func forEachRun(_ tokens: ArraySlice<MovingToken>, _ body: (ArraySlice<MovingToken>, Int) -> Void) {
        var start = tokens.startIndex
        while start < tokens.endIndex {
            let first = tokens[start]
            var end = start + 1
            while end < tokens.endIndex, tokens[end].tier == first.tier, tokens[end].page == first.page,
                  Int(tokens[end].slot) == Int(first.slot) + (end - start) { end += 1 }
            body(tokens[start..<end], start - tokens.startIndex)
            start = end
        }
    }
}

/// Float scratch for one page's keys and values during a rebuild.
struct RebuildScratch {
    let keys: UnsafeMutablePointer<Float>
    let values: UnsafeMutablePointer<Float>

    init(headDim: Int, rowCount: Int) {
        keys = .allocate(capacity: headDim * rowCount)
        values = .allocate(capacity: headDim * rowCount)
    }

    func deallocate() {
        keys.deallocate()
        values.deallocate()
    }
}

/// Clamps `x[0..<count]` to ±65504 (decoded quantised values may exceed it by up to scale/2).
func clampToHalfRange(_ x: UnsafeMutablePointer<Float>, count: Int) {
    let m = StorageFormat.maxMagnitude
    let raw = UnsafeMutableRawPointer(x)
    var i = 0
    while i + 8 <= count {
        let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        raw.storeBytes(of: SIMD8(repeating: -m).lanewiseMax(v).lanewiseMin(SIMD8(repeating: m)), toByteOffset: 4 * i, as: SIMD8<Float>.self)
        i += 8
    }
    while i < count {
        x[i] = min(max(x[i], -m), m)
        i += 1
    }
}
