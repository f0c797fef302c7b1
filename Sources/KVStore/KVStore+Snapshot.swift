#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import KVQuantization

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
        var pages = [(page: Page, layer: Int, tier: Int, staging: Bool)]()
        func number(_ page: Page, _ layer: Int, _ tier: Int, _ staging: Bool) -> UInt32 {
            if let i = index[ObjectIdentifier(page)] { return i }
            let i = UInt32(pages.count)
            index[ObjectIdentifier(page)] = i
            pages.append((page, layer, tier, staging))
            return i
        }
        var seqs = SnapshotWriter()
        seqs.u64(nextID)
        seqs.u32(UInt32(captured.count))
        for (id, sequence) in captured {
            seqs.u64(id.rawValue)
            for layer in sequence.layers { seqs.i32(layer.nextPosition) }
            for (l, layer) in sequence.layers.enumerated() {
                for stream in layer.streams {
                    for (t, tier) in stream.tiers.enumerated() {
                        seqs.u32(UInt32(tier.pages.count))
                        for page in tier.pages { seqs.u32(number(page, l, t, false)) }
                        seqs.u32(tier.staging.map { number($0, l, t, true) } ?? SnapshotFormat.noPage)
                    }
                }
            }
        }
        var pageSection = SnapshotWriter()
        pageSection.u32(UInt32(pages.count))
        for (page, layer, tier, staging) in pages {
            let l = page.layout
            pageSection.u32(UInt32(layer))
            pageSection.u8(UInt8(tier))
            pageSection.u8(staging ? 1 : 0)
            pageSection.u32(UInt32(page.count))
            pageSection.i32(page.basePosition)
            for s in 0..<page.count { pageSection.u16(page.offsets[s]) }
            pageSection.raw(page.keyRow(0), page.count * l.keyRowByteCount)
            pageSection.raw(page.valueRow(0), page.count * l.valueRowByteCount)
            pageSection.raw(page.keyParameters, l.keyParameterByteCount)
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
        try SnapshotFile.writeAtomically(snapshotBytes(of: sequences), to: url, operations)
    }

    // MARK: Loading

    /// Loads the sequences of the snapshot at `url` into this store as new sequences, returning
    /// their IDs in the snapshot's order.
    ///
    /// - Throws: `SnapshotError` if the file cannot be read, is not a valid snapshot, was written
    ///   with a different shape (`layerCount`, `kvHeadCount`, `headDim`, any layer's tier formats or
    ///   page capacities, the layers rotated and the rotation seed, every layer's sliding window:
    ///   `.configurationMismatch`), or does not fit the byte limit. The store is then unchanged. A
    ///   version 1, 2 or 3 file is converted (see `SnapshotFormat`; a version 3 file has no windows,
    ///   so it loads only into a store without them).
    @discardableResult
    public func loadSnapshot(from url: URL) throws(SnapshotError) -> [SequenceID] {
        try loadSnapshot(bytes: SnapshotFile.readAll(url.path))
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
        try restoring(bytes: SnapshotFile.readAll(url.path))
    }

    /// `restoring(from:)` from bytes in memory.
    public static func restoring(bytes: [UInt8]) throws(SnapshotError) -> KVStore {
        let parsed = try parse(bytes, into: nil)
        let store: KVStore
        do { store = try KVStore(parsed.configuration) } catch { throw .invalidConfiguration(error) }
        try store.install(parsed, preservingIDs: true)
        return store
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
