import KVQuantization

/// One page as read from a snapshot (validated): its layout, fill, filled rows and positions.
struct SnapshotPage {
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
struct SnapshotTier {
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
/// header, then each section in order, one function each. Every rule broken is a `SnapshotError`
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
        let codecs = Tier.stored.map { TierCodecs(tier: $0, configuration: c) }
        let pages = try pages(payloads[1], configuration: c, codecs: codecs)
        let (nextID, sequences) = try sequences(payloads[2], configuration: c, codecs: codecs, pages: pages)
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
        try check("layerCount", t.layerCount, c.layerCount)
        try check("kvHeadCount", t.kvHeadCount, c.kvHeadCount)
        try check("headDim", t.headDim, c.headDim)
        try check("pageCapacity", t.pageCapacity, c.pageCapacity)
        for tier in Tier.stored {
            try check("tierFormats.keys[\(tier)]", t.tierFormats.keyFormat(tier), c.tierFormats.keyFormat(tier))
            try check("tierFormats.values[\(tier)]", t.tierFormats.valueFormat(tier), c.tierFormats.valueFormat(tier))
        }
        // Pages of rotated tiers hold rotated rows: the rotations in effect must agree.
        for l in 0..<c.layerCount {
            try check("rotation.keys[layer \(l)]", t.rotatesKeys(layer: l), c.rotatesKeys(layer: l))
            try check("rotation.values[layer \(l)]", t.rotatesValues(layer: l), c.rotatesValues(layer: l))
        }
        if (0..<c.layerCount).contains(where: { c.rotatesKeys(layer: $0) || c.rotatesValues(layer: $0) }) {
            try check("rotation.seed", t.rotation.seed, c.rotation.seed)
        }
        return c
    }

    /// PAGE: every page's tier, role and fill legal for its tier, and every stored FP16 number
    /// (elements, group and channel parameters) finite.
    func pages(_ payload: UnsafeRawBufferPointer, configuration c: KVStoreConfiguration,
               codecs: [TierCodecs]) throws(SnapshotError) -> [SnapshotPage] {
        var r = SnapshotReader(payload, section: "PAGE")
        let cap = c.pageCapacity
        let pageCount = try r.count("page count", max: r.remaining / 6)
        var pages = [SnapshotPage]()
        pages.reserveCapacity(pageCount)
        for i in 0..<pageCount {
            let tier = Int(try r.u8("tier of page \(i)"))
            guard tier < codecs.count else { throw r.fail("page \(i) has tier \(tier) (0..<4 exist)") }
            let staging = try r.flag("staging flag of page \(i)")
            let tc = codecs[tier]
            guard !staging || tc.isPageWise else { throw r.fail("page \(i) is a staging page of tier \(Tier.stored[tier]), which has none") }
            let layout = staging ? tc.stagingLayout! : tc.layout
            let count = Int(try r.u32("count of page \(i)"))
            guard count >= 1, count <= cap else { throw r.fail("page \(i) holds \(count) tokens (1...\(cap) allowed)") }
            if tc.isPageWise {
                guard staging ? count < cap : count == cap else {
                    throw r.fail("page \(i) of channelwise tier \(Tier.stored[tier]) holds \(count) tokens: sealed pages are full, staging pages are not")
                }
            }
            // Compact copy (filled rows only, so memory stays bounded by the file's size until the
            // store allocates pages): key rows · value rows · key parameters.
            let keyBytes = count * layout.keyRowByteCount, valueBytes = count * layout.valueRowByteCount
            let rows = try r.take(keyBytes + valueBytes + layout.keyParameterByteCount, "rows of page \(i)")
            var positions = [Int32](repeating: 0, count: count)
            for s in 0..<count { positions[s] = try r.i32("position \(s) of page \(i)") }
            let data = [UInt8](rows)
            if let bad = Self.firstNonFiniteHalf(data, count: count, layout: layout, codecs: tc, staging: staging) {
                throw r.fail("page \(i) \(bad) holds a non-finite FP16 number")
            }
            pages.append(SnapshotPage(tier: tier, isStaging: staging, count: count, layout: layout, data: data, positions: positions))
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
            if !staging, let k = tc.keyChannels {
                for ch in 0..<k.headDim {
                    let a = k.parameters(ofChannel: ch, in: base + keyBytes + valueBytes)
                    if !isFinite(a.scaleBits) || !isFinite(a.zeroBits) { return "key channel \(ch): the page parameters" }
                }
            }
            return nil
        }
    }

    /// SEQS: unique IDs below the next ID; per stream and tier, references to pages of that tier
    /// (only the last row-wise page partly filled) holding distinct positions below the layer's
    /// next position; every page referenced by some sequence.
    func sequences(_ payload: UnsafeRawBufferPointer, configuration c: KVStoreConfiguration, codecs: [TierCodecs],
                   pages: [SnapshotPage]) throws(SnapshotError) -> (UInt64, [SnapshotSequence]) {
        var q = SnapshotReader(payload, section: "SEQS")
        let nextID = try q.u64("next sequence ID")
        let streamCount = c.layerCount * c.kvHeadCount  // both ≤ maxStreamCount (checked with CONF): no overflow
        let minSequenceBytes = 8 + 4 * c.layerCount + streamCount * Tier.stored.count * 8
        let sequenceCount = try q.count("sequence count", max: q.remaining / max(minSequenceBytes, 1))
        var referenced = [Bool](repeating: false, count: pages.count)
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
                    streams.append(try stream(&q, context: "sequence \(id) layer \(l) KV head \(head)", nextPosition: next[l],
                                              configuration: c, codecs: codecs, pages: pages, referenced: &referenced))
                }
            }
            sequences.append(SnapshotSequence(id: id, nextPositions: next, streams: streams))
        }
        try q.finish()
        if let unused = referenced.firstIndex(of: false) {
            throw .malformed(section: "PAGE", reason: "page \(unused) belongs to no sequence")
        }
        return (nextID, sequences)
    }

    /// One stream's page references, tier by tier.
    private func stream(_ q: inout SnapshotReader, context: String, nextPosition: Int32, configuration c: KVStoreConfiguration,
                        codecs: [TierCodecs], pages: [SnapshotPage], referenced: inout [Bool]) throws(SnapshotError) -> [SnapshotTier] {
        var tiers = [SnapshotTier]()
        var seen = Set<Int32>()
        for t in 0..<Tier.stored.count {
            let n = try q.count("page count of \(context) tier \(t)", max: q.remaining / 4)
            var refs = [Int]()
            for k in 0..<n {
                let i = Int(try q.u32("page index of \(context)"))
                guard i < pages.count, pages[i].tier == t, !pages[i].isStaging else {
                    throw q.fail("\(context) tier \(Tier.stored[t]) names page \(i), which is not a page of that tier")
                }
                if !codecs[t].isPageWise, k < n - 1, pages[i].count != c.pageCapacity {
                    throw q.fail("\(context) tier \(Tier.stored[t]): page \(k) of \(n) is not full (only the last may be)")
                }
                refs.append(i)
            }
            let s = try q.u32("staging page index of \(context)")
            var staging: Int?
            if s != SnapshotFormat.noPage {
                let i = Int(s)
                guard i < pages.count, pages[i].tier == t, pages[i].isStaging else {
                    throw q.fail("\(context) tier \(Tier.stored[t]) names staging page \(i), which is not a staging page of that tier")
                }
                staging = i
            }
            for i in refs + (staging.map { [$0] } ?? []) {
                referenced[i] = true
                for p in pages[i].positions {
                    guard p >= 0, p < nextPosition else { throw q.fail("\(context) holds position \(p), outside 0..<\(nextPosition)") }
                    guard seen.insert(p).inserted else { throw q.fail("\(context) holds position \(p) twice") }
                }
            }
            tiers.append(SnapshotTier(pages: refs, staging: staging))
        }
        return tiers
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
