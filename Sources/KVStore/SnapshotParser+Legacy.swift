import KVQuantization

/// A page of a version 1 or 2 snapshot: Int32 positions per slot, in any order.
struct LegacyPage {
    var tier: Int
    var isStaging: Bool
    var count: Int
    var layout: PageLayout
    /// `count` key rows, `count` value rows, then the page's key parameters (if any).
    var data: [UInt8]
    var positions: [Int32]
}

// Reading version 1 and 2 files: their pages and rules, then the conversion to version 3's pages
// (see `SnapshotFormat`).
extension SnapshotParser {
    /// PAGE (versions 1 and 2): every page's tier, role and fill legal for its tier, and every stored
    /// FP16 number finite. (Every layer has the same formats before version 3.)
    func legacyPages(_ payload: UnsafeRawBufferPointer, configuration c: KVStoreConfiguration,
                     codecs: [[TierCodecs]]) throws(SnapshotError) -> [LegacyPage] {
        var r = SnapshotReader(payload, section: "PAGE")
        let cap = c.pageCapacity
        let pageCount = try r.count("page count", max: r.remaining / 6)
        var pages = [LegacyPage]()
        pages.reserveCapacity(pageCount)
        for i in 0..<pageCount {
            let tier = Int(try r.u8("tier of page \(i)"))
            guard tier < Tier.stored.count else { throw r.fail("page \(i) has tier \(tier) (0..<4 exist)") }
            let staging = try r.flag("staging flag of page \(i)")
            let tc = codecs[0][tier]
            guard !staging || tc.isPageWise else { throw r.fail("page \(i) is a staging page of tier \(Tier.stored[tier]), which has none") }
            let layout = staging ? tc.stagingLayout! : tc.layout
            let count = Int(try r.u32("count of page \(i)"))
            guard count >= 1, count <= cap else { throw r.fail("page \(i) holds \(count) tokens (1...\(cap) allowed)") }
            if tc.isPageWise {
                guard staging ? count < cap : count == cap else {
                    throw r.fail("page \(i) of channelwise tier \(Tier.stored[tier]) holds \(count) tokens: sealed pages are full, staging pages are not")
                }
            }
            let keyBytes = count * layout.keyRowByteCount, valueBytes = count * layout.valueRowByteCount
            let rows = try r.take(keyBytes + valueBytes + layout.keyParameterByteCount, "rows of page \(i)")
            var positions = [Int32](repeating: 0, count: count)
            for s in 0..<count { positions[s] = try r.i32("position \(s) of page \(i)") }
            let data = [UInt8](rows)
            if let bad = Self.firstNonFiniteHalf(data, count: count, layout: layout, codecs: tc, staging: staging) {
                throw r.fail("page \(i) \(bad) holds a non-finite FP16 number")
            }
            pages.append(LegacyPage(tier: tier, isStaging: staging, count: count, layout: layout, data: data, positions: positions))
        }
        try r.finish()
        return pages
    }

    /// The rules of versions 1 and 2: per stream and tier, references to pages of that tier (only
    /// the last row-wise page partly filled) holding distinct positions below the layer's next
    /// position; every page referenced by some sequence.
    func validateLegacy(_ sequences: [SnapshotSequence], configuration c: KVStoreConfiguration, codecs: [[TierCodecs]],
                        pages: [LegacyPage]) throws(SnapshotError) {
        func fail(_ reason: String) -> SnapshotError { .malformed(section: "SEQS", reason: reason) }
        var referenced = [Bool](repeating: false, count: pages.count)
        for q in sequences {
            for l in 0..<c.layerCount {
                for head in 0..<c.kvHeadCount {
                    let context = "sequence \(q.id) layer \(l) KV head \(head)"
                    var seen = Set<Int32>()
                    for (t, refs) in q.streams[l * c.kvHeadCount + head].enumerated() {
                        for (k, i) in refs.pages.enumerated() {
                            guard i < pages.count, pages[i].tier == t, !pages[i].isStaging else {
                                throw fail("\(context) tier \(Tier.stored[t]) names page \(i), which is not a page of that tier")
                            }
                            if !codecs[0][t].isPageWise, k < refs.pages.count - 1, pages[i].count != c.pageCapacity {
                                throw fail("\(context) tier \(Tier.stored[t]): page \(k) of \(refs.pages.count) is not full (only the last may be)")
                            }
                        }
                        if let i = refs.staging {
                            guard i < pages.count, pages[i].tier == t, pages[i].isStaging else {
                                throw fail("\(context) tier \(Tier.stored[t]) names staging page \(i), which is not a staging page of that tier")
                            }
                        }
                        for i in refs.pages + (refs.staging.map { [$0] } ?? []) {
                            referenced[i] = true
                            for p in pages[i].positions {
                                guard p >= 0, p < q.nextPositions[l] else { throw fail("\(context) holds position \(p), outside 0..<\(q.nextPositions[l])") }
                                guard seen.insert(p).inserted else { throw fail("\(context) holds position \(p) twice") }
                            }
                        }
                    }
                }
            }
        }
        if let unused = referenced.firstIndex(of: false) {
            throw .malformed(section: "PAGE", reason: "page \(unused) belongs to no sequence")
        }
    }

    /// Version 3 pages and references for validated version 1 or 2 ones (see `SnapshotFormat`):
    /// each page's slots in position order, row-wise tiers out of order repacked, pages spanning
    /// more than `PagePositions.maxSpan` split. Conversions are made once per (layer, page) or
    /// (layer, tier, page list), so pages shared by forks stay shared.
    func convert(_ legacy: [LegacyPage], _ sequences: [SnapshotSequence], configuration c: KVStoreConfiguration,
                 codecs: [[TierCodecs]]) -> ([SnapshotPage], [SnapshotSequence]) {
        var pages = [SnapshotPage]()
        var converted = [[Int]: SnapshotTier]()  // key: [layer, page] or [layer, tier, -1, pages…]
        var out = sequences
        for (qi, q) in sequences.enumerated() {
            for l in 0..<c.layerCount {
                for head in 0..<c.kvHeadCount {
                    let si = l * c.kvHeadCount + head
                    for (t, refs) in q.streams[si].enumerated() {
                        let tc = codecs[l][t]
                        var result = SnapshotTier(pages: [], staging: nil)
                        if !tc.isPageWise {
                            let sorted = refs.pages.map { Self.sortedSlots(legacy[$0]) }
                            if Self.convertsOneToOne(refs.pages.map { legacy[$0] }, sorted) {
                                for i in refs.pages {
                                    let key = [l, i]
                                    if converted[key] == nil {
                                        converted[key] = SnapshotTier(pages: [pages.count], staging: nil)
                                        pages.append(Self.permuted(legacy[i], layer: l))
                                    }
                                    result.pages += converted[key]!.pages
                                }
                            } else {
                                let key = [l, t, -1] + refs.pages
                                if converted[key] == nil {
                                    let new = Self.repacked(refs.pages.map { legacy[$0] }, layer: l, tier: t, codecs: tc)
                                    converted[key] = SnapshotTier(pages: Array(pages.count..<(pages.count + new.count)), staging: nil)
                                    pages += new
                                }
                                result.pages = converted[key]!.pages
                            }
                        } else {
                            for i in refs.pages + (refs.staging.map { [$0] } ?? []) {
                                let key = [l, i]
                                if converted[key] == nil {
                                    let parts = Self.split(legacy[i], layer: l, codecs: tc)
                                    let first = pages.count
                                    pages += parts
                                    let staged = parts.last!.isStaging
                                    converted[key] = SnapshotTier(pages: Array(first..<(pages.count - (staged ? 1 : 0))),
                                                                  staging: staged ? pages.count - 1 : nil)
                                }
                                result.pages += converted[key]!.pages
                                if let s = converted[key]!.staging { result.staging = s }
                            }
                        }
                        out[qi].streams[si][t] = result
                    }
                }
            }
        }
        return (pages, out)
    }

    /// A page's slots in position order.
    static func sortedSlots(_ page: LegacyPage) -> [Int] {
        (0..<page.count).sorted { page.positions[$0] < page.positions[$1] }
    }

    /// Whether a row-wise tier's pages, each in position order, are already what version 3 keeps:
    /// ascending across pages, each within the span, all but the last full.
    static func convertsOneToOne(_ pages: [LegacyPage], _ sorted: [[Int]]) -> Bool {
        var last = Int32.min
        for (k, page) in pages.enumerated() {
            let first = page.positions[sorted[k].first!], final = page.positions[sorted[k].last!]
            guard first > last, Int(final) - Int(first) <= PagePositions.maxSpan,
                  k == pages.count - 1 || page.count == page.layout.capacity else { return false }
            last = final
        }
        return true
    }

    /// The version 3 page of a legacy page whose slots, put in position order, span at most
    /// `maxSpan`: the same rows, permuted.
    static func permuted(_ page: LegacyPage, layer: Int) -> SnapshotPage {
        permuted(page, slots: sortedSlots(page), layer: layer, isStaging: page.isStaging, params: parameters(of: page))
    }

    static func parameters(of page: LegacyPage) -> ArraySlice<UInt8> {
        let l = page.layout
        return page.data[(page.count * (l.keyRowByteCount + l.valueRowByteCount))...]
    }

    /// A page of the legacy page's `slots`, in that order, with key parameters `params`.
    static func permuted(_ page: LegacyPage, slots: [Int], layer: Int, isStaging: Bool, params: ArraySlice<UInt8>,
                         layout: PageLayout? = nil, keyRows: [UInt8]? = nil) -> SnapshotPage {
        let l = page.layout, kr = l.keyRowByteCount, vr = l.valueRowByteCount, keyBytes = page.count * kr
        var data = [UInt8]()
        if let keyRows { data += keyRows } else { for s in slots { data += page.data[(s * kr)..<((s + 1) * kr)] } }
        for s in slots { data += page.data[(keyBytes + s * vr)..<(keyBytes + (s + 1) * vr)] }
        data += params
        return SnapshotPage(layer: layer, tier: page.tier, isStaging: isStaging, count: slots.count, layout: layout ?? l,
                            data: data, positions: slots.map { page.positions[$0] })
    }

    /// A row-wise tier's tokens in position order, packed greedily into new pages (rows copied).
    static func repacked(_ pages: [LegacyPage], layer: Int, tier: Int, codecs tc: TierCodecs) -> [SnapshotPage] {
        let layout = tc.layout, kr = layout.keyRowByteCount, vr = layout.valueRowByteCount
        var tokens = [(position: Int32, page: Int, slot: Int)]()
        for (k, page) in pages.enumerated() { for s in 0..<page.count { tokens.append((page.positions[s], k, s)) } }
        tokens.sort { $0.position < $1.position }
        let sizes = StreamState.greedyPageSizes(tokens.map { MovingToken(position: $0.position, tier: tier, page: 0, slot: 0) }[...],
                                                capacity: layout.capacity)
        var out = [SnapshotPage](), next = 0
        for size in sizes {
            let chunk = tokens[next..<(next + size)]
            var keys = [UInt8](), values = [UInt8]()
            for t in chunk {
                let p = pages[t.page]
                keys += p.data[(t.slot * kr)..<((t.slot + 1) * kr)]
                values += p.data[(p.count * kr + t.slot * vr)..<(p.count * kr + (t.slot + 1) * vr)]
            }
            out.append(SnapshotPage(layer: layer, tier: tier, isStaging: false, count: size, layout: layout,
                                    data: keys + values, positions: chunk.map(\.position)))
            next += size
        }
        return out
    }

    /// A page-wise tier's legacy page (sealed or staging) as version 3 pages: permuted into
    /// position order when it spans at most `maxSpan`; else split greedily, every part sealed (its
    /// keys quantised again per channel from their decoded values) but, for a staging page, the last.
    static func split(_ page: LegacyPage, layer: Int, codecs tc: TierCodecs) -> [SnapshotPage] {
        let slots = sortedSlots(page)
        let asTokens = slots.map { MovingToken(position: page.positions[$0], tier: page.tier, page: 0, slot: 0) }
        let sizes = StreamState.greedyPageSizes(asTokens[...], capacity: page.layout.capacity)
        if sizes.count == 1 { return [permuted(page, slots: slots, layer: layer, isStaging: page.isStaging, params: parameters(of: page))] }
        let d = page.layout.headDim, kr = page.layout.keyRowByteCount, channels = tc.keyChannels!
        var out = [SnapshotPage](), next = 0
        for (k, size) in sizes.enumerated() {
            let part = Array(slots[next..<(next + size)])
            next += size
            if page.isStaging && k == sizes.count - 1 {
                out.append(permuted(page, slots: part, layer: layer, isStaging: true, params: []))
                continue
            }
            // Decode the part's keys (FP16 staging rows, or per-channel codes), clamp, seal.
            var x = [Float](repeating: 0, count: size * d)
            page.data.withUnsafeBytes { raw in
                x.withUnsafeMutableBufferPointer { xp in
                    for (j, s) in part.enumerated() {
                        if page.isStaging {
                            tc.fp16.decode(raw.baseAddress! + s * kr, into: xp.baseAddress! + j * d)
                        } else {
                            channels.decode(raw.baseAddress! + s * kr, params: raw.baseAddress! + page.count * (kr + page.layout.valueRowByteCount),
                                            into: xp.baseAddress! + j * d)
                        }
                    }
                    clampToHalfRange(xp.baseAddress!, count: size * d)
                }
            }
            var codes = [UInt8](repeating: 0, count: size * tc.layout.keyRowByteCount)
            var params = [UInt8](repeating: 0, count: tc.layout.keyParameterByteCount)
            x.withUnsafeBufferPointer { xp in
                codes.withUnsafeMutableBytes { cp in
                    params.withUnsafeMutableBytes { pp in
                        channels.encodePageUnchecked(xp.baseAddress!, tokenCount: size, codes: cp.baseAddress!, params: pp.baseAddress!)
                    }
                }
            }
            out.append(permuted(page, slots: part, layer: layer, isStaging: false, params: params[...], layout: tc.layout, keyRows: codes))
        }
        return out
    }
}
