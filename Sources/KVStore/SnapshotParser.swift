import KVQuantization

/// One page as read from a snapshot (validated): its layer, tier, role, layout, filled rows and
/// positions (ascending).
struct SnapshotPage {
    var layer: Int
    var tier: Int
    var isStaging: Bool
    var count: Int
    var layout: PageLayout
    /// `count` key rows, `count` value rows, then the page's key parameters (if any).
    var data: [UInt8]
    var positions: [Int32]

    /// Writes this page's contents into `page` (same layout).
    func write(into page: Page) {
        let l = layout, keyBytes = count * l.keyRowByteCount, valueBytes = count * l.valueRowByteCount
        data.withUnsafeBytes { d in
            page.keyRow(0).copyMemory(from: d.baseAddress!, byteCount: keyBytes)
            page.valueRow(0).copyMemory(from: d.baseAddress! + keyBytes, byteCount: valueBytes)
            page.keyParameters.copyMemory(from: d.baseAddress! + keyBytes + valueBytes, byteCount: d.count - keyBytes - valueBytes)
        }
        for (s, p) in positions.enumerated() { page.setPosition(p, s) }
        page.count = count
    }
}

/// One tier of one stream as a snapshot references it.
struct SnapshotTier: Hashable {
    var pages: [Int]
    var staging: Int?
}

/// One sequence as a snapshot references it.
struct SnapshotSequence {
    var id: UInt64
    var nextPositions: [Int32]
    /// `[layer · kvHeadCount + kvHead][tier]`.
    var streams: [[SnapshotTier]]
}

/// A fully validated snapshot, ready to install.
struct ParsedSnapshot {
    var configuration: KVStoreConfiguration
    var pages: [SnapshotPage]
    var nextID: UInt64
    var sequences: [SnapshotSequence]
    /// Bytes the pages take in the pool.
    var byteCount: Int
}

/// Parses and validates a whole snapshot (`SnapshotFormat`) without touching any store: the
/// header, then each section in order, one function each; a version 1 or 2 file is converted to
/// version 3's pages first (`SnapshotParser+Legacy.swift`). Every rule broken is a `SnapshotError`
/// naming the section and the rule.
struct SnapshotParser {
    /// The file's format version (from the header).
    private(set) var version: UInt32 = 0

    /// Parses and validates `raw`; with `target`, also checks that it fits a store of that
    /// configuration.
    mutating func parse(_ raw: UnsafeRawBufferPointer, into target: KVStoreConfiguration?) throws(SnapshotError) -> ParsedSnapshot {
        try header(raw)
        let payloads = try sections(raw)
        let c = try configuration(payloads[0], target: target)
        // Pages are checked by their layer's layouts, which every KV head shares (only mixed-width
        // key codecs differ between heads, and the parser copies their bytes).
        let codecs = KVStore.codecs(c).map { $0[0] }
        var pages: [SnapshotPage]
        var (nextID, sequences) = try sequenceReferences(payloads[2], configuration: c)
        if version >= 3 {
            pages = try self.pages(payloads[1], configuration: c, codecs: codecs)
        } else {
            let legacy = try legacyPages(payloads[1], configuration: c, codecs: codecs)
            try validateLegacy(sequences, configuration: c, codecs: codecs, pages: legacy)
            (pages, sequences) = convert(legacy, sequences, configuration: c, codecs: codecs)
        }
        try validate(sequences, configuration: c, codecs: codecs, pages: pages)
        let byteCount = pages.reduce(0) { $0 + $1.layout.byteCount }
        return ParsedSnapshot(configuration: c, pages: pages, nextID: nextID, sequences: sequences, byteCount: byteCount)
    }

    /// The header: magic, a readable version, the section count, the reserved field, its checksum.
    mutating func header(_ raw: UnsafeRawBufferPointer) throws(SnapshotError) {
        let h = SnapshotFormat.headerByteCount
        let magic = SnapshotFormat.magic
        guard raw.count >= magic.count, raw.prefix(magic.count).elementsEqual(magic) else {
            // A prefix of the magic is a truncated snapshot; anything else is not one.
            if raw.count < magic.count, raw.elementsEqual(magic.prefix(raw.count)) {
                throw .truncated(section: "header", expectedBytes: h, availableBytes: raw.count)
            }
            throw .notASnapshot
        }
        guard raw.count >= h else { throw .truncated(section: "header", expectedBytes: h, availableBytes: raw.count) }
        var header = SnapshotReader(UnsafeRawBufferPointer(rebasing: raw[magic.count..<h]), section: "header")
        let version = try header.u32("version"), sectionCount = try header.u32("section count")
        let reserved = try header.u32("reserved"), stored = try header.u32("checksum")
        let computed = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[0..<(h - 4)]))
        guard stored == computed else { throw .checksumMismatch(section: "header", stored: stored, computed: computed) }
        guard SnapshotFormat.readableVersions.contains(version) else {
            throw .unsupportedVersion(found: version, supported: SnapshotFormat.readableVersions)
        }
        guard sectionCount == SnapshotFormat.sectionTags.count, reserved == 0 else {
            throw .malformed(section: "header", reason: "section count \(sectionCount) (must be 3) or reserved \(reserved) (must be 0)")
        }
        self.version = version
    }

    /// The three sections' payloads, each after its tag, length and CRC-32C are checked; nothing
    /// may follow the last.
    func sections(_ raw: UnsafeRawBufferPointer) throws(SnapshotError) -> [UnsafeRawBufferPointer] {
        var offset = SnapshotFormat.headerByteCount
        var payloads = [UnsafeRawBufferPointer]()
        for tag in SnapshotFormat.sectionTags {
            let available = raw.count - offset
            guard available >= 16 else { throw .truncated(section: tag, expectedBytes: 16, availableBytes: available) }
            let foundTag = raw[offset..<(offset + 4)]
            guard foundTag.elementsEqual(tag.utf8) else {
                throw .malformed(section: tag, reason: "expected section \(tag), found tag bytes \(Array(foundTag))")
            }
            let length = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt64.self))
            guard length <= UInt64(available - 16) else {
                throw .truncated(section: tag, expectedBytes: length > UInt64(Int.max / 2) ? Int.max : 16 + Int(length),
                                 availableBytes: available)
            }
            let n = Int(length)
            let storedCRC = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 12 + n, as: UInt32.self))
            let computedCRC = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + 12 + n)]))
            guard storedCRC == computedCRC else { throw .checksumMismatch(section: tag, stored: storedCRC, computed: computedCRC) }
            payloads.append(UnsafeRawBufferPointer(rebasing: raw[(offset + 12)..<(offset + 12 + n)]))
            offset += 16 + n
        }
        guard offset == raw.count else {
            throw .malformed(section: "file", reason: "\(raw.count - offset) bytes after the last section")
        }
        return payloads
    }

    /// CONF: a valid configuration, bounded in streams per sequence, matching `target` if given.
    func configuration(_ payload: UnsafeRawBufferPointer, target: KVStoreConfiguration?) throws(SnapshotError) -> KVStoreConfiguration {
        var reader = SnapshotReader(payload, section: "CONF")
        let c = try reader.configuration(version: version)
        try reader.finish()
        do { try c.validate() } catch { throw .invalidConfiguration(error) }
        // Every sequence holds layerCount × kvHeadCount streams: bound them so a crafted
        // configuration cannot make the restored store allocate without bound per sequence.
        guard c.layerCount <= SnapshotFormat.maxStreamCount, c.kvHeadCount <= SnapshotFormat.maxStreamCount,
              c.layerCount * c.kvHeadCount <= SnapshotFormat.maxStreamCount else {
            throw .malformed(section: "CONF", reason: "layerCount \(c.layerCount) × kvHeadCount \(c.kvHeadCount) exceeds \(SnapshotFormat.maxStreamCount) streams per sequence")
        }
        guard let t = target else { return c }
        func check(_ field: String, _ a: some Equatable & CustomStringConvertible, _ b: some Equatable & CustomStringConvertible) throws(SnapshotError) {
            guard String(describing: a) == String(describing: b) else {
                throw .configurationMismatch(field: field, store: a.description, snapshot: b.description)
            }
        }
        // Formats by value: two mixed-width formats with the same bytes per row have the same name
        // (`mix3.5/channel`) but read each other's pages wrongly; the message then names the first
        // (KV head, channel) whose width differs.
        func checkFormat(_ field: String, _ a: StorageFormat, _ b: StorageFormat) throws(SnapshotError) {
            guard a != b else { return }
            var store = a.description, snapshot = b.description
            if store == snapshot, case .mixedChannelwise(let x) = a, case .mixedChannelwise(let y) = b,
               let h = x.widths.indices.first(where: { x.widths[$0] != y.widths[$0] }),
               let ch = x.widths[h].indices.first(where: { x.widths[h][$0] != y.widths[h][$0] }) {
                store += " (KV head \(h) channel \(ch): \(x.widths[h][ch]))"
                snapshot += " (KV head \(h) channel \(ch): \(y.widths[h][ch]))"
            }
            throw .configurationMismatch(field: field, store: store, snapshot: snapshot)
        }
        try check("layerCount", t.layerCount, c.layerCount)
        try check("kvHeadCount", t.kvHeadCount, c.kvHeadCount)
        try check("headDim", t.headDim, c.headDim)
        // What decides a page's layout in each layer: every tier's formats and page capacity.
        for l in 0..<c.layerCount {
            let a = t.tierFormats(layer: l), b = c.tierFormats(layer: l)
            let name = t.layerTierFormats == nil && c.layerTierFormats == nil ? "tierFormats" : "layerTierFormats[\(l)]"
            for tier in Tier.stored {
                try checkFormat("\(name).keys[\(tier)]", a.keyFormat(tier), b.keyFormat(tier))
                try checkFormat("\(name).values[\(tier)]", a.valueFormat(tier), b.valueFormat(tier))
                try check(name == "tierFormats" && a.pageCapacities.isEmpty && b.pageCapacities.isEmpty ? "pageCapacity" : "\(name).pageCapacities[\(tier)]",
                          t.pageCapacity(tier, layer: l), c.pageCapacity(tier, layer: l))
            }
        }
        // Pages of rotated tiers hold rotated rows: the rotations in effect must agree.
        for l in 0..<c.layerCount {
            try check("rotation.keys[layer \(l)]", t.rotatesKeys(layer: l), c.rotatesKeys(layer: l))
            try check("rotation.values[layer \(l)]", t.rotatesValues(layer: l), c.rotatesValues(layer: l))
        }
        if (0..<c.layerCount).contains(where: { c.rotatesKeys(layer: $0) || c.rotatesValues(layer: $0) }) {
            try check("rotation.seed", t.rotation.seed, c.rotation.seed)
        }
        // What a layer's queries see and which pages it may hold (a version 3 file has no windows).
        for l in 0..<c.layerCount {
            func name(_ w: Int?) -> String { w.map(String.init) ?? "none" }
            try check("layerSlidingWindows[\(l)]", name(t.slidingWindow(layer: l)), name(c.slidingWindow(layer: l)))
        }
        return c
    }

    /// PAGE (version 3): every page's layer, tier, role and fill legal, positions strictly ascending
    /// from the base, and every stored FP16 number (elements, group and channel parameters) finite.
    func pages(_ payload: UnsafeRawBufferPointer, configuration c: KVStoreConfiguration,
               codecs: [[TierCodecs]]) throws(SnapshotError) -> [SnapshotPage] {
        var r = SnapshotReader(payload, section: "PAGE")
        let pageCount = try r.count("page count", max: r.remaining / 16)
        var pages = [SnapshotPage]()
        pages.reserveCapacity(pageCount)
        for i in 0..<pageCount {
            let layer = Int(try r.u32("layer of page \(i)"))
            guard layer < c.layerCount else { throw r.fail("page \(i) has layer \(layer) (0..<\(c.layerCount) exist)") }
            let tier = Int(try r.u8("tier of page \(i)"))
            guard tier < Tier.stored.count else { throw r.fail("page \(i) has tier \(tier) (0..<4 exist)") }
            let staging = try r.flag("staging flag of page \(i)")
            let tc = codecs[layer][tier]
            guard !staging || tc.isPageWise else { throw r.fail("page \(i) is a staging page of tier \(Tier.stored[tier]), which has none") }
            let layout = staging ? tc.stagingLayout! : tc.layout, cap = layout.capacity
            let count = Int(try r.u32("count of page \(i)"))
            guard count >= 1, count <= cap else { throw r.fail("page \(i) holds \(count) tokens (1...\(cap) allowed)") }
            if staging, count == cap {
                throw r.fail("page \(i), a staging page of channelwise tier \(Tier.stored[tier]), holds \(count) tokens: staging pages are never full")
            }
            let base = try r.i32("base position of page \(i)")
            guard base >= 0 else { throw r.fail("page \(i) has base position \(base)") }
            var positions = [Int32](repeating: 0, count: count)
            var previous = -1
            for s in 0..<count {
                let o = Int(try r.u16("offset \(s) of page \(i)"))
                guard s > 0 ? o > previous : o == 0 else {
                    throw r.fail("page \(i) slot \(s) has offset \(o): offsets ascend strictly from 0")
                }
                guard Int(base) + o <= Int(Int32.max) else { throw r.fail("page \(i) slot \(s): position beyond Int32.max") }
                positions[s] = base + Int32(o)
                previous = o
            }
            // Compact copy (filled rows only, so memory stays bounded by the file's size until the
            // store allocates pages): key rows · value rows · key parameters.
            let keyBytes = count * layout.keyRowByteCount, valueBytes = count * layout.valueRowByteCount
            let rows = try r.take(keyBytes + valueBytes + layout.keyParameterByteCount, "rows of page \(i)")
            let data = [UInt8](rows)
            if let bad = Self.firstNonFiniteHalf(data, count: count, layout: layout, codecs: tc, staging: staging) {
                throw r.fail("page \(i) \(bad) holds a non-finite FP16 number")
            }
            pages.append(SnapshotPage(layer: layer, tier: tier, isStaging: staging, count: count, layout: layout, data: data, positions: positions))
        }
        try r.finish()
        return pages
    }

    /// Where a page's compact image (`SnapshotPage.data`) holds a non-finite FP16 number, or `nil`:
    /// the fast decoders assume finite halves, and the store never writes anything else.
    static func firstNonFiniteHalf(_ data: [UInt8], count: Int, layout: PageLayout, codecs tc: TierCodecs, staging: Bool) -> String? {
        let kr = layout.keyRowByteCount, vr = layout.valueRowByteCount
        let keyBytes = count * kr, valueBytes = count * vr
        return data.withUnsafeBytes { img -> String? in
            let base = img.baseAddress!
            for s in 0..<count {
                if let keyCodec = staging ? tc.fp16 : tc.keyRows, !halvesAreFinite(base + s * kr, keyCodec) { return "slot \(s): the key" }
                if !halvesAreFinite(base + keyBytes + s * vr, tc.values) { return "slot \(s): the value" }
            }
            if !staging, tc.isPageWise {
                // (scale, zero) FP16 pairs per channel (in stored order for mixed widths).
                let params = base + keyBytes + valueBytes
                for ch in 0..<layout.headDim {
                    let scale = UInt16(littleEndian: params.loadUnaligned(fromByteOffset: 4 * ch, as: UInt16.self))
                    let zero = UInt16(littleEndian: params.loadUnaligned(fromByteOffset: 4 * ch + 2, as: UInt16.self))
                    if !isFinite(scale) || !isFinite(zero) { return "key channel \(ch): the page parameters" }
                }
            }
            return nil
        }
    }

    /// SEQS, as read: unique IDs below the next ID, non-negative next positions, and each stream's
    /// page references per tier (checked against the pages by `validate`).
    func sequenceReferences(_ payload: UnsafeRawBufferPointer, configuration c: KVStoreConfiguration) throws(SnapshotError) -> (UInt64, [SnapshotSequence]) {
        var q = SnapshotReader(payload, section: "SEQS")
        let nextID = try q.u64("next sequence ID")
        let streamCount = c.layerCount * c.kvHeadCount  // both ≤ maxStreamCount (checked with CONF): no overflow
        let minSequenceBytes = 8 + 4 * c.layerCount + streamCount * Tier.stored.count * 8
        let sequenceCount = try q.count("sequence count", max: q.remaining / max(minSequenceBytes, 1))
        var ids = Set<UInt64>()
        var sequences = [SnapshotSequence]()
        for _ in 0..<sequenceCount {
            let id = try q.u64("sequence ID")
            guard ids.insert(id).inserted else { throw q.fail("sequence ID \(id) appears twice") }
            guard id < nextID else { throw q.fail("sequence ID \(id) is not below the next ID \(nextID)") }
            var next = [Int32]()
            for l in 0..<c.layerCount {
                let p = try q.i32("next position of layer \(l) of sequence \(id)")
                guard p >= 0 else { throw q.fail("sequence \(id) layer \(l) has next position \(p)") }
                next.append(p)
            }
            var streams = [[SnapshotTier]]()
            for l in 0..<c.layerCount {
                for head in 0..<c.kvHeadCount {
                    let context = "sequence \(id) layer \(l) KV head \(head)"
                    var tiers = [SnapshotTier]()
                    for t in 0..<Tier.stored.count {
                        let n = try q.count("page count of \(context) tier \(t)", max: q.remaining / 4)
                        var refs = [Int]()
                        for _ in 0..<n { refs.append(Int(try q.u32("page index of \(context)"))) }
                        let s = try q.u32("staging page index of \(context)")
                        tiers.append(SnapshotTier(pages: refs, staging: s == SnapshotFormat.noPage ? nil : Int(s)))
                    }
                    streams.append(tiers)
                }
            }
            sequences.append(SnapshotSequence(id: id, nextPositions: next, streams: streams))
        }
        try q.finish()
        return (nextID, sequences)
    }

    /// The references against the (version 3) pages: per stream and tier, pages of that layer and
    /// tier in the right role, holding distinct positions below the layer's next position; a
    /// row-wise tier's pages in ascending order and packed greedily (a page is full, or its
    /// successor's first token lies beyond its span); every page referenced by some sequence.
    func validate(_ sequences: [SnapshotSequence], configuration c: KVStoreConfiguration, codecs: [[TierCodecs]],
                  pages: [SnapshotPage]) throws(SnapshotError) {
        var referenced = [Bool](repeating: false, count: pages.count)
        for q in sequences {
            for l in 0..<c.layerCount {
                for head in 0..<c.kvHeadCount {
                    let context = "sequence \(q.id) layer \(l) KV head \(head)"
                    var seen = Set<Int32>()
                    for (t, refs) in q.streams[l * c.kvHeadCount + head].enumerated() {
                        let tierName = Tier.stored[t]
                        for (k, i) in refs.pages.enumerated() {
                            guard i < pages.count, pages[i].layer == l, pages[i].tier == t, !pages[i].isStaging else {
                                throw .malformed(section: "SEQS", reason: "\(context) tier \(tierName) names page \(i), which is not a page of that layer and tier")
                            }
                            if !codecs[l][t].isPageWise, k > 0 {
                                let before = pages[refs.pages[k - 1]], first = pages[i].positions[0]
                                guard first > before.positions.last! else {
                                    throw .malformed(section: "SEQS", reason: "\(context) tier \(tierName): page \(k) of \(refs.pages.count) does not follow page \(k - 1) in position order")
                                }
                                guard before.count == before.layout.capacity || Int(first) - Int(before.positions[0]) > PagePositions.maxSpan else {
                                    throw .malformed(section: "SEQS", reason: "\(context) tier \(tierName): page \(k - 1) of \(refs.pages.count) is not full (only the last may be, or one closed by the span rule)")
                                }
                            }
                        }
                        if let i = refs.staging {
                            guard i < pages.count, pages[i].layer == l, pages[i].tier == t, pages[i].isStaging else {
                                throw .malformed(section: "SEQS", reason: "\(context) tier \(tierName) names staging page \(i), which is not a staging page of that layer and tier")
                            }
                        }
                        for i in refs.pages + (refs.staging.map { [$0] } ?? []) {
                            referenced[i] = true
                            for p in pages[i].positions {
                                guard p < q.nextPositions[l] else { throw .malformed(section: "SEQS", reason: "\(context) holds position \(p), outside 0..<\(q.nextPositions[l])") }
                                guard seen.insert(p).inserted else { throw .malformed(section: "SEQS", reason: "\(context) holds position \(p) twice") }
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

    static func isFinite(_ half: UInt16) -> Bool { half & 0x7C00 != 0x7C00 }

    /// True if every FP16 number of a row-wise row (its elements, its groups' scales and zeros, or
    /// its norm) is finite.
    static func halvesAreFinite(_ row: UnsafeRawPointer, _ codec: RowCodec) -> Bool {
        if case .lloydMax = codec.format { return isFinite(row.loadUnaligned(fromByteOffset: codec.rowByteCount - 2, as: UInt16.self)) }
        if codec.format == .fp16 {
            for i in 0..<codec.headDim where !isFinite(row.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) { return false }
            return true
        }
        for k in 0..<codec.groupCount {
            let a = codec.parameters(ofGroup: k, in: row)
            if !isFinite(a.scaleBits) || !isFinite(a.zeroBits) { return false }
        }
        return true
    }
}

extension KVStore {
    /// Parses and validates a snapshot; with `target`, also checks that it fits a store of that
    /// configuration. Touches no store.
    static func parse(_ bytes: [UInt8], into target: KVStoreConfiguration?) throws(SnapshotError) -> ParsedSnapshot {
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(SnapshotError) in
                var parser = SnapshotParser()
                return try parser.parse(raw, into: target)
            }
        }
        return try result.get()
    }
}
