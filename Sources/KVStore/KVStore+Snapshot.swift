#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import KVQuantization
import KVSelection

// Snapshots: a store's sequences saved to a versioned, checksummed file (format in
// `SnapshotFormat`) and loaded back bit-exactly.
//
// Guarantees:
// - Saving writes a temporary file beside the destination, `fsync`s it, and `rename`s it over the
//   destination (then `fsync`s the directory). A failure or crash at any point before the rename
//   leaves the destination as it was: the previous snapshot stays loadable.
// - Loading parses and validates the whole file (magic, version, every section's CRC-32C, every
//   count, offset, format, position, page fill and decoded value) before it touches the store; any
//   problem is a `SnapshotError` naming the section and the rule, and then the store is unchanged.
// - A loaded sequence returns the same rows, tiers, positions, pages and bytes as the saved one;
//   pages shared by forks are stored once and shared again after loading.
extension KVStore {
    // MARK: Saving

    /// The snapshot of `sequences` (default: every sequence) as bytes: what `saveSnapshot` writes.
    ///
    /// Consistent per sequence: each sequence is captured under the store's lock at one instant
    /// (all of them together), then serialised outside the lock while appends go on.
    /// - Precondition: every ID is in the store, at most once (caller bug: traps).
    /// - Complexity: O(bytes of the captured pages).
    public func snapshotBytes(of sequences: [SequenceID]? = nil) -> [UInt8] {
        if let ids = sequences { precondition(Set(ids).count == ids.count, "KVStore.snapshotBytes: a sequence is named twice") }
        let (captured, nextID): ([(SequenceID, SequenceState)], UInt64) = state.withLock { s in
            let ids = sequences ?? s.sequences.keys.sorted()
            return (ids.map { id in (id, s.sequences[id]) }.compactMap { id, q in q.map { (id, $0) } }, s.nextID)
        }
        if let ids = sequences {
            for id in ids where !captured.contains(where: { $0.0 == id }) {
                preconditionFailure("KVStore.snapshotBytes: unknown sequence \(id)")
            }
        }
        let c = configuration
        // Unique pages in a deterministic order (first reference wins), with their tier and role.
        var index = [ObjectIdentifier: UInt32]()
        var pages = [(page: Page, tier: Int, staging: Bool)]()
        func number(_ page: Page, _ tier: Int, _ staging: Bool) -> UInt32 {
            if let i = index[ObjectIdentifier(page)] { return i }
            let i = UInt32(pages.count)
            index[ObjectIdentifier(page)] = i
            pages.append((page, tier, staging))
            return i
        }
        var seqs = SnapshotWriter()
        seqs.u64(nextID)
        seqs.u32(UInt32(captured.count))
        for (id, sequence) in captured {
            seqs.u64(id.rawValue)
            for layer in sequence.layers { seqs.i32(layer.nextPosition) }
            for layer in sequence.layers {
                for stream in layer.streams {
                    for (t, tier) in stream.tiers.enumerated() {
                        seqs.u32(UInt32(tier.pages.count))
                        for page in tier.pages { seqs.u32(number(page, t, false)) }
                        seqs.u32(tier.staging.map { number($0, t, true) } ?? SnapshotFormat.noPage)
                    }
                }
            }
        }
        var pageSection = SnapshotWriter()
        pageSection.u32(UInt32(pages.count))
        for (page, tier, staging) in pages {
            let l = page.layout
            pageSection.u8(UInt8(tier))
            pageSection.u8(staging ? 1 : 0)
            pageSection.u32(UInt32(page.count))
            pageSection.raw(page.keyRow(0), page.count * l.keyRowByteCount)
            pageSection.raw(page.valueRow(0), page.count * l.valueRowByteCount)
            pageSection.raw(page.keyParameters, l.keyParameterByteCount)
            for s in 0..<page.count { pageSection.i32(page.position(s)) }
        }
        var conf = SnapshotWriter()
        conf.configuration(c)

        var file = SnapshotWriter()
        file.bytes.reserveCapacity(SnapshotFormat.headerByteCount + 48 + conf.bytes.count + pageSection.bytes.count + seqs.bytes.count)
        file.bytes.append(contentsOf: SnapshotFormat.magic)
        file.u32(SnapshotFormat.version)
        file.u32(UInt32(SnapshotFormat.sectionTags.count))
        file.u32(0)
        file.u32(CRC32C.checksum(file.bytes))
        file.section("CONF", conf.bytes)
        file.section("PAGE", pageSection.bytes)
        file.section("SEQS", seqs.bytes)
        return file.bytes
    }

    /// Saves `sequences` (default: every sequence) to `url`, atomically.
    ///
    /// Writes a temporary file in the destination's directory, syncs it to disk, renames it over
    /// `url` and syncs the directory. If anything fails before the rename, the temporary file is
    /// removed and `url` is untouched (the previous snapshot there stays loadable).
    ///
    /// - Throws: `SnapshotError.io` naming the failed call and its `errno`.
    /// - Precondition: every ID is in the store, at most once.
    public func saveSnapshot(to url: URL, sequences: [SequenceID]? = nil) throws(SnapshotError) {
        try saveSnapshot(to: url, sequences: sequences, operations: .system)
    }

    func saveSnapshot(to url: URL, sequences: [SequenceID]?, operations: SnapshotFileOperations) throws(SnapshotError) {
        try Self.writeAtomically(snapshotBytes(of: sequences), to: url, operations)
    }

    static func writeAtomically(_ bytes: [UInt8], to url: URL, _ ops: SnapshotFileOperations) throws(SnapshotError) {
        let path = url.path, directory = url.deletingLastPathComponent().path
        let temporary = directory + "/." + url.lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io(operation: "open", path: temporary, errno: errno) }
        func fail(_ operation: String) -> SnapshotError {
            let e = errno
            return .io(operation: operation, path: temporary, errno: e)
        }
        var failure: SnapshotError?
        var done = 0
        bytes.withUnsafeBytes { raw in
            while done < raw.count {
                let n = ops.write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = fail("write")
                    return
                }
                if n == 0 { failure = .io(operation: "write", path: temporary, errno: EIO); return }
                done += n  // a short write: write the rest
            }
        }
        if failure == nil, ops.fsync(fd) != 0 { failure = fail("fsync") }
        if close(fd) != 0, failure == nil { failure = fail("close") }
        if failure == nil, ops.rename(temporary, path) != 0 { failure = fail("rename") }
        if let failure {
            unlink(temporary)
            throw failure
        }
        // Make the rename durable. A failure here is not reported: the new snapshot is in place.
        let dfd = open(directory, O_RDONLY | O_CLOEXEC)
        if dfd >= 0 {
            _ = fsync(dfd)
            close(dfd)
        }
    }

    // MARK: Loading

    /// Loads the sequences of the snapshot at `url` into this store as new sequences, returning
    /// their IDs in the snapshot's order.
    ///
    /// - Throws: `SnapshotError` if the file cannot be read, is not a valid snapshot, was written
    ///   with a different shape (`layerCount`, `kvHeadCount`, `headDim`, `pageCapacity`,
    ///   `tierFormats`: `.configurationMismatch`), or does not fit the byte limit. The store is
    ///   then unchanged.
    @discardableResult
    public func loadSnapshot(from url: URL) throws(SnapshotError) -> [SequenceID] {
        try loadSnapshot(bytes: Self.readFile(url.path))
    }

    /// `loadSnapshot(from:)` from bytes in memory.
    @discardableResult
    public func loadSnapshot(bytes: [UInt8]) throws(SnapshotError) -> [SequenceID] {
        let parsed = try Self.parse(bytes, into: configuration)
        return try install(parsed, preservingIDs: false)
    }

    /// A new store restored from the snapshot at `url`: the snapshot's configuration, its
    /// sequences under their original IDs, and the same next ID.
    ///
    /// - Throws: `SnapshotError` if the file cannot be read or is not a valid snapshot.
    public static func restoring(from url: URL) throws(SnapshotError) -> KVStore {
        try restoring(bytes: readFile(url.path))
    }

    /// `restoring(from:)` from bytes in memory.
    public static func restoring(bytes: [UInt8]) throws(SnapshotError) -> KVStore {
        let parsed = try parse(bytes, into: nil)
        let store: KVStore
        do { store = try KVStore(parsed.configuration) } catch { throw .invalidConfiguration(error) }
        try store.install(parsed, preservingIDs: true)
        return store
    }

    static func readFile(_ path: String) throws(SnapshotError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(operation: "open", path: path, errno: errno) }
        defer { close(fd) }
        var bytes = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "read", path: path, errno: errno)
            }
            if n == 0 { return bytes }
            bytes.append(contentsOf: chunk[0..<n])
        }
    }

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

    /// Parses and validates a snapshot; with `target`, also checks that it fits a store of that
    /// configuration. Touches no store.
    static func parse(_ bytes: [UInt8], into target: KVStoreConfiguration?) throws(SnapshotError) -> ParsedSnapshot {
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(SnapshotError) in try parse(raw, into: target) }
        }
        return try result.get()
    }

    static func parse(_ raw: UnsafeRawBufferPointer, into target: KVStoreConfiguration?) throws(SnapshotError) -> ParsedSnapshot {
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
        guard version == SnapshotFormat.version else { throw .unsupportedVersion(found: version, supported: SnapshotFormat.version) }
        guard sectionCount == SnapshotFormat.sectionTags.count, reserved == 0 else {
            throw .malformed(section: "header", reason: "section count \(sectionCount) (must be 3) or reserved \(reserved) (must be 0)")
        }
        // Sections: tag, length, payload, CRC.
        var offset = h
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

        // CONF
        var confReader = SnapshotReader(payloads[0], section: "CONF")
        let c = try confReader.configuration()
        try confReader.finish()
        do { try c.validate() } catch { throw .invalidConfiguration(error) }
        // Every sequence holds layerCount × kvHeadCount streams: bound them so a crafted
        // configuration cannot make the restored store allocate without bound per sequence.
        guard c.layerCount <= SnapshotFormat.maxStreamCount, c.kvHeadCount <= SnapshotFormat.maxStreamCount,
              c.layerCount * c.kvHeadCount <= SnapshotFormat.maxStreamCount else {
            throw .malformed(section: "CONF", reason: "layerCount \(c.layerCount) × kvHeadCount \(c.kvHeadCount) exceeds \(SnapshotFormat.maxStreamCount) streams per sequence")
        }
        if let t = target {
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
        }
        let codecs = Tier.stored.map { TierCodecs(tier: $0, configuration: c) }
        let cap = c.pageCapacity, d = c.headDim

        // PAGE
        var r = SnapshotReader(payloads[1], section: "PAGE")
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
            let kr = layout.keyRowByteCount, vr = layout.valueRowByteCount
            let keyBytes = count * kr, valueBytes = count * vr
            let paramBytes = layout.keyParameterByteCount
            let rows = try r.take(keyBytes + valueBytes + paramBytes, "rows of page \(i)")
            var positions = [Int32](repeating: 0, count: count)
            for s in 0..<count { positions[s] = try r.i32("position \(s) of page \(i)") }
            let data = [UInt8](rows)
            // Every stored half (FP16 elements, group and channel scales and zeros) must be finite:
            // the fast decoders assume it, and the store never writes anything else.
            var bad: String?
            data.withUnsafeBytes { img in
                let base = img.baseAddress!
                for s in 0..<count where bad == nil {
                    if let keyCodec = staging ? tc.fp16 : tc.keyRows, !Self.halvesAreFinite(base + s * kr, keyCodec) {
                        bad = "slot \(s): the key"
                    } else if !Self.halvesAreFinite(base + keyBytes + s * vr, tc.values) {
                        bad = "slot \(s): the value"
                    }
                }
                if bad == nil, !staging, let k = tc.keyChannels {
                    for ch in 0..<d where bad == nil {
                        let a = k.parameters(ofChannel: ch, in: base + keyBytes + valueBytes)
                        if !Self.isFinite(a.scaleBits) || !Self.isFinite(a.zeroBits) { bad = "key channel \(ch): the page parameters" }
                    }
                }
            }
            if let bad { throw r.fail("page \(i) \(bad) holds a non-finite FP16 number") }
            pages.append(SnapshotPage(tier: tier, isStaging: staging, count: count, layout: layout, data: data, positions: positions))
        }
        try r.finish()

        // SEQS
        var q = SnapshotReader(payloads[2], section: "SEQS")
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
                    let context = "sequence \(id) layer \(l) KV head \(head)"
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
                            if !codecs[t].isPageWise, k < n - 1, pages[i].count != cap {
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
                                guard p >= 0, p < next[l] else {
                                    throw q.fail("\(context) holds position \(p), outside 0..<\(next[l])")
                                }
                                guard seen.insert(p).inserted else { throw q.fail("\(context) holds position \(p) twice") }
                            }
                        }
                        tiers.append(SnapshotTier(pages: refs, staging: staging))
                    }
                    streams.append(tiers)
                }
            }
            sequences.append(SnapshotSequence(id: id, nextPositions: next, streams: streams))
        }
        try q.finish()
        if let unused = referenced.firstIndex(of: false) {
            throw .malformed(section: "PAGE", reason: "page \(unused) belongs to no sequence")
        }
        let byteCount = pages.reduce(0) { $0 + $1.layout.byteCount }
        return ParsedSnapshot(configuration: c, pages: pages, nextID: nextID, sequences: sequences, byteCount: byteCount)
    }

    static func isFinite(_ half: UInt16) -> Bool { half & 0x7C00 != 0x7C00 }

    /// True if every FP16 number of a row-wise row (its elements, or its groups' scales and zeros)
    /// is finite.
    static func halvesAreFinite(_ row: UnsafeRawPointer, _ codec: RowCodec) -> Bool {
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

    /// Adds the parsed sequences to the store (new IDs, or the snapshot's in a fresh store).
    @discardableResult
    func install(_ p: ParsedSnapshot, preservingIDs: Bool) throws(SnapshotError) -> [SequenceID] {
        let c = configuration, pool = pool
        let result: Result<[SequenceID], SnapshotError> = state.withLock { s in
            if let limit = c.byteLimit, pool.bytesInUse + p.byteCount > limit {
                return .failure(.byteLimitExceeded(requestedBytes: p.byteCount, availableBytes: max(0, limit - pool.bytesInUse)))
            }
            var previous: Page?
            let pages = p.pages.map { record in
                let page = pool.allocate(record.layout, after: previous)
                record.write(into: page)
                previous = page
                return page
            }
            var ids = [SequenceID]()
            for q in p.sequences {
                var layers = [LayerState]()
                for l in 0..<c.layerCount {
                    var streams = [StreamState]()
                    for head in 0..<c.kvHeadCount {
                        var stream = StreamState()
                        for (t, refs) in q.streams[l * c.kvHeadCount + head].enumerated() {
                            stream.tiers[t].pages = refs.pages.map { pages[$0] }
                            stream.tiers[t].staging = refs.staging.map { pages[$0] }
                        }
                        streams.append(stream)
                    }
                    layers.append(LayerState(streams: streams, nextPosition: q.nextPositions[l]))
                }
                let id: SequenceID
                if preservingIDs {
                    id = SequenceID(rawValue: q.id)
                } else {
                    id = SequenceID(rawValue: s.nextID)
                    s.nextID += 1
                }
                s.sequences[id] = SequenceState(layers: layers)
                ids.append(id)
            }
            if preservingIDs { s.nextID = max(s.nextID, p.nextID) }
            return .success(ids)
        }
        return try result.get()
    }
}

/// The system calls `saveSnapshot` makes to write a file, replaceable in tests to inject faults
/// (failed and short writes, failed syncs and renames).
struct SnapshotFileOperations: Sendable {
    var write: @Sendable (Int32, UnsafeRawPointer, Int) -> Int
    var fsync: @Sendable (Int32) -> Int32
    var rename: @Sendable (String, String) -> Int32

    static let system = SnapshotFileOperations(
        write: { fd, p, n in
            #if canImport(Glibc)
            Glibc.write(fd, p, n)
            #else
            Darwin.write(fd, p, n)
            #endif
        },
        fsync: { fd in
            #if canImport(Glibc)
            Glibc.fsync(fd)
            #else
            Darwin.fsync(fd)
            #endif
        },
        rename: { a, b in
            #if canImport(Glibc)
            Glibc.rename(a, b)
            #else
            Darwin.rename(a, b)
            #endif
        })
}
