import Foundation
import Testing
import TestSupport
import KVQuantization
import KVSelection
@testable import KVStore

/// Builds a store and its model by random operations (appends, forks, removals, plans).
func randomPopulatedStore(_ config: KVStoreConfiguration, steps: Int, using g: inout SeededGenerator) throws -> (KVStore, ReferenceStore) {
    let store = try KVStore(config)
    var model = ReferenceStore(configuration: config)
    model.addEmptySequence(store.addSequence())
    for _ in 0..<steps {
        try randomOperation(store, &model, maxSequences: 3, appendSizes: [1, 2, 5, 17], using: &g)
    }
    return (store, model)
}

/// Everything observable about a store's sequences, for bit-exact comparison.
struct StoreImage: Equatable {
    var ids: [SequenceID]
    var byteCount: Int
    var pagesInUse: Int
    var streams: [[UInt32]]  // per (sequence, layer, head): positions, tiers, key bits, value bits, page counts
    var nextPositions: [Int]

    init(_ store: KVStore, ids: [SequenceID]? = nil) {
        let c = store.configuration
        self.ids = ids ?? store.sequences
        byteCount = store.byteCount
        pagesInUse = store.pool.pagesInUse
        streams = []
        nextPositions = []
        for id in self.ids {
            for layer in 0..<c.layerCount {
                nextPositions.append(store.nextPosition(of: id, layer: layer))
                for head in 0..<c.kvHeadCount {
                    let r = store.rows(id, layer: layer, kvHead: head)
                    let pages = store.pageCounts(of: id, layer: layer, kvHead: head)
                    streams.append(r.positions.map { UInt32(bitPattern: $0) } + r.tiers.map { UInt32($0.rawValue) }
                                   + r.keys.map(\.bitPattern) + r.values.map(\.bitPattern)
                                   + Tier.stored.map { UInt32(pages[$0]!) })
                }
            }
        }
    }

    /// Same contents, whatever the IDs and pool totals.
    func sameSequences(as other: StoreImage) -> Bool { streams == other.streams && nextPositions == other.nextPositions }
}

/// A snapshot split into its sections, to build crafted files with valid checksums.
struct SnapshotSections {
    var header: [UInt8]
    var payloads: [[UInt8]]

    init(_ bytes: [UInt8]) {
        header = Array(bytes[0..<24])
        payloads = []
        var o = 24
        for _ in 0..<3 {
            let n = Int(bytes[(o + 4)..<(o + 12)].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
            payloads.append(Array(bytes[(o + 12)..<(o + 12 + n)]))
            o += 16 + n
        }
    }

    var bytes: [UInt8] {
        var w = SnapshotWriter()
        w.bytes = header
        for (tag, p) in zip(SnapshotFormat.sectionTags, payloads) { w.section(tag, p) }
        return w.bytes
    }
}

@Suite struct SnapshotTests {
    static let fixedConfig = KVStoreConfiguration(
        layerCount: 2, queryHeadCount: 4, kvHeadCount: 2, headDim: 16, pageCapacity: 4,
        tierFormats: TierFormats(keys: [.fp16: .fp16, .int8: .channelwise(.int8), .int4: .int4, .int2: .channelwise(.int2)],
                                 values: [.fp16: .fp16, .int8: .int8, .int4: .grouped(.int4, groupSize: 8), .int2: .int2]))

    static func sample(seed: UInt64 = 1) throws -> (KVStore, ReferenceStore) {
        var g = SeededGenerator(seed: seed)
        return try randomPopulatedStore(fixedConfig, steps: 30, using: &g)
    }

    @Test func crc32cMatchesTheCheckValueAndTheBitwiseDefinition() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8]()) == 0)
        var g = SeededGenerator(seed: 7)
        for n in [1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000] {
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
            #expect(CRC32C.checksum(bytes) == CRC32C.checksumReference(bytes), "length \(n)")
            // Continuing across a split gives the checksum of the whole.
            let k = n / 3
            let first = CRC32C.checksum(Array(bytes[..<k]))
            let whole = bytes[k...].withUnsafeBytes { CRC32C.checksum($0, continuing: first) }
            #expect(whole == CRC32C.checksum(bytes), "split \(k) of \(n)")
        }
    }

    /// Random stores of random shapes (row-wise and channelwise keys, forks sharing pages) restore
    /// bit-exactly, share pages the same way, and re-save to the identical bytes.
    @Test func snapshotsRoundTripBitExactly() throws {
        try forEachSeededCase(40, base: 9100) { g in
            let config = randomConfiguration(using: &g, channelwiseKeys: Bool.random(using: &g))
            let (store, model) = try randomPopulatedStore(config, steps: 20, using: &g)
            let bytes = store.snapshotBytes()
            let restored = try KVStore.restoring(bytes: bytes)
            #expect(restored.configuration == config, "seed \(g.seed)")
            #expect(StoreImage(restored) == StoreImage(store), "seed \(g.seed): restored store differs")
            #expect(restored.snapshotBytes() == bytes, "seed \(g.seed): re-saved snapshot differs")
            let live = livePages(restored)
            #expect(live.count == restored.pool.pagesInUse && live.bytes == restored.byteCount, "seed \(g.seed)")
            // The model still describes the restored store (rows, attention, bytes).
            if model.modelsValues { StoreModelTests.check(restored, model, &g, "seed \(g.seed) restored") }
            // A restored store keeps working: append to every sequence, and new IDs do not collide.
            for id in restored.sequences {
                let n = config.kvHeadCount * config.headDim
                try restored.append(id, layer: 0, keys: randomRows(n, using: &g), values: randomRows(n, using: &g))
            }
            #expect(!store.sequences.contains(restored.addSequence()))

            // Loading into another store of the same shape adds the sequences under new IDs.
            let other = try KVStore(config)
            _ = other.addSequence()
            let ids = try other.loadSnapshot(bytes: bytes)
            #expect(ids.count == store.sequences.count)
            #expect(StoreImage(other, ids: ids).sameSequences(as: StoreImage(store)), "seed \(g.seed): loaded sequences differ")
        }
    }

    @Test func savingASubsetAndFilesRoundTrip() throws {
        let (store, _) = try Self.sample()
        let ids = store.sequences
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kvcrush-snapshot-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = directory.appendingPathComponent("cache.kvsnap")
        try store.saveSnapshot(to: url, sequences: [ids.last!])
        let one = try KVStore.restoring(from: url)
        #expect(one.sequences == [ids.last!])
        #expect(StoreImage(one) == StoreImage(store, ids: [ids.last!]).with(byteCount: one.byteCount, pagesInUse: one.pool.pagesInUse))
        try store.saveSnapshot(to: url)  // replaces the file
        #expect(StoreImage(try KVStore.restoring(from: url)) == StoreImage(store))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["cache.kvsnap"], "temporary files left")
        #expect(throws: SnapshotError.io(operation: "open", path: directory.appendingPathComponent("missing").path, errno: ENOENT)) {
            try store.loadSnapshot(from: directory.appendingPathComponent("missing"))
        }
    }

    /// Every truncation and every single-bit flip of a snapshot is a typed error, and the store it
    /// was loaded into is unchanged.
    @Test func corruptedFilesAreTypedErrorsAndLeaveTheStoreUnchanged() throws {
        let (source, _) = try Self.sample(seed: 2)
        let bytes = source.snapshotBytes()
        let (target, _) = try Self.sample(seed: 3)
        let before = StoreImage(target)
        var cases = 0
        func expectRejected(_ data: [UInt8], _ what: String) {
            cases += 1
            do {
                try target.loadSnapshot(bytes: data)
                Issue.record("\(what): accepted")
            } catch {
                #expect(!error.description.isEmpty)
            }
            do {
                _ = try KVStore.restoring(bytes: data)
                Issue.record("\(what): restored")
            } catch {}
        }
        for n in 0..<bytes.count { expectRejected(Array(bytes[0..<n]), "truncated to \(n) bytes") }
        var g = SeededGenerator(seed: 11)
        for offset in 0..<bytes.count {
            var flipped = bytes
            flipped[offset] ^= 1 << UInt8.random(in: 0..<8, using: &g)
            expectRejected(flipped, "bit flipped at \(offset)")
        }
        expectRejected(bytes + [0], "one trailing byte")
        expectRejected([], "empty")
        expectRejected(Array("not a snapshot at all, just text".utf8), "text")
        #expect(StoreImage(target) == before, "a rejected load changed the store")
        #expect(cases > 2 * bytes.count)
        print("SnapshotTests: \(cases) corrupted files rejected (snapshot of \(bytes.count) bytes)")

        #expect(throws: SnapshotError.truncated(section: "header", expectedBytes: 24, availableBytes: 12)) {
            try target.loadSnapshot(bytes: Array(bytes[0..<12]))
        }
        #expect(throws: SnapshotError.notASnapshot) { try target.loadSnapshot(bytes: Array(repeating: 0, count: 100)) }
        var flipped = bytes
        flipped[bytes.count - 10] ^= 0x10
        do {
            try target.loadSnapshot(bytes: flipped)
        } catch {
            guard case .checksumMismatch(section: "SEQS", _, _) = error else { Issue.record("\(error)"); return }
        }
    }

    /// A version 1 file (written before the sinks and recent window left the store's configuration;
    /// `Fixtures/snapshot-v1` holds one the version 1 code saved) loads, and saves again as the
    /// current version with the same pages and sequences: PAGE and SEQS byte for byte, CONF without
    /// the two dropped fields (16 bytes) and with version 3's rotation (none: 18 bytes), and the
    /// re-saved file restores to the same bytes again.
    @Test func versionOneFilesLoadAndSaveAsCurrentVersion() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/snapshot-v1/mixed-tiers-forks.kvsnap")
        let v1 = try [UInt8](Data(contentsOf: url))
        #expect(v1[8] == 1)
        let restored = try KVStore.restoring(bytes: v1)
        let v2 = restored.snapshotBytes()
        #expect(v2[8] == 3)
        let old = SnapshotSections(v1), new = SnapshotSections(v2)
        #expect(new.payloads[1] == old.payloads[1], "PAGE")
        #expect(new.payloads[2] == old.payloads[2], "SEQS")
        #expect(new.payloads[0].count == old.payloads[0].count - 16 + 18)
        #expect(Array(new.payloads[0][0..<40]) == Array(old.payloads[0][0..<40]), "the shape fields")
        #expect(Array(new.payloads[0][40..<(new.payloads[0].count - 18)]) == Array(old.payloads[0][56...]), "limit, scale and formats")
        #expect(Array(new.payloads[0].suffix(18)) == [UInt8](repeating: 0, count: 18), "no rotation")
        #expect(try KVStore.restoring(bytes: v2).snapshotBytes() == v2)
    }

    @Test func wrongVersionAndWrongShapeAreNamed() throws {
        let (source, _) = try Self.sample()
        var sections = SnapshotSections(source.snapshotBytes())
        sections.header[8] = 4
        sections.header.replaceSubrange(20..<24, with: withUnsafeBytes(of: CRC32C.checksum(sections.header[0..<20]).littleEndian, Array.init))
        #expect(throws: SnapshotError.unsupportedVersion(found: 4, supported: 1...3)) { try KVStore.restoring(bytes: sections.bytes) }

        var c = Self.fixedConfig
        c.headDim = 32
        let wrongDim = try KVStore(c)
        #expect(throws: SnapshotError.configurationMismatch(field: "headDim", store: "32", snapshot: "16")) {
            try wrongDim.loadSnapshot(bytes: source.snapshotBytes())
        }
        c = Self.fixedConfig
        c.tierFormats.values[.int4] = .int4
        #expect(throws: SnapshotError.configurationMismatch(field: "tierFormats.values[int4]", store: "int4/g32", snapshot: "int4/g8")) {
            try KVStore(c).loadSnapshot(bytes: source.snapshotBytes())
        }
        // The limit and the scale may differ.
        c = Self.fixedConfig
        c.byteLimit = 1 << 30
        c.attentionScale = 0.5
        #expect(try KVStore(c).loadSnapshot(bytes: source.snapshotBytes()).count == source.sequences.count)
    }

    /// Files with valid checksums that break the format's rules (as a buggy or hostile writer
    /// would make them) are rejected with the rule named.
    @Test func craftedFilesWithValidChecksumsAreRejected() throws {
        let config = KVStoreConfiguration(layerCount: 1, queryHeadCount: 1, kvHeadCount: 1, headDim: 8, pageCapacity: 4)
        let store = try KVStore(config)
        let id = store.addSequence()
        try store.append(id, layer: 0, keys: (0..<48).map { Float($0) }, values: (0..<48).map { Float(-$0) })  // 6 tokens: 2 pages
        let good = SnapshotSections(store.snapshotBytes())
        #expect(try KVStore.restoring(bytes: good.bytes).rows(id, layer: 0, kvHead: 0).positions == Array(0..<6))
        // PAGE: count u32, then page 0: tier u8, staging u8, count u32, 4 key rows (16 B), 4 value rows, 4 positions.
        let firstKey = 4 + 6, firstPosition = 4 + 6 + 4 * 16 + 4 * 16
        func rejected(_ edit: (inout SnapshotSections) -> Void) -> String {
            var s = good
            edit(&s)
            do {
                _ = try KVStore.restoring(bytes: s.bytes)
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(rejected { $0.payloads[1][firstKey + 1] = 0x7C }.contains("slot 0: the key holds a non-finite"))  // key element 0 = +inf
        #expect(rejected { $0.payloads[1][firstKey + 1] = 0x7E }.contains("non-finite"))  // NaN
        #expect(rejected { $0.payloads[1][firstPosition] = 1 }.contains("position 1 twice"))
        #expect(rejected { $0.payloads[1][firstPosition] = 9 }.contains("outside 0..<6"))
        #expect(rejected { $0.payloads[1][firstPosition + 3] = 0x80 }.contains("outside 0..<6"))  // negative
        #expect(rejected { $0.payloads[1][4] = 7 }.contains("tier 7"))
        #expect(rejected { $0.payloads[1][5] = 1 }.contains("staging page"))
        #expect(rejected { $0.payloads[1][6] = 5 }.contains("holds 5 tokens"))
        #expect(rejected { $0.payloads[1][6] = 0 }.contains("holds 0 tokens"))
        #expect(rejected { $0.payloads[1][0] = 3 }.contains("PAGE"))
        #expect(rejected { $0.payloads[1].append(0) }.contains("unread bytes"))
        #expect(rejected { $0.payloads[0][16] = 0 }.contains("kvHeadCount"))  // kvHeadCount = 0
        #expect(rejected { $0.payloads[0][15] = 0x40 }.contains("queryHeadCount must be in 1...65536"))  // 2⁶²: fuzzer-found
        #expect(rejected { $0.payloads[0][24] = 5 } != "accepted")  // headDim 5: the rows no longer fit the payload
        // SEQS: nextID u64, count u32, id u64, next position i32, tier 0: pageCount u32 (= 2), indices...
        #expect(rejected { $0.payloads[2][28] = 1 }.contains("is not full"))  // pages [1, 1]: a partial page first
        #expect(rejected { $0.payloads[2][20] = 5 }.contains("outside 0..<5"))
        #expect(rejected { $0.payloads[2][0] = 0 }.contains("not below the next ID"))
        #expect(rejected { $0.payloads[2][32] = 0 }.contains("twice"))  // pages [0, 0]
        #expect(rejected { $0.payloads[2][12] = 5 }.contains("not below"))
        #expect(rejected { $0.payloads[2][8] = 0 }.contains("unread bytes"))  // zero sequences
        #expect(rejected { $0.payloads[2][24] = 1; $0.payloads[2].removeSubrange(32..<36) }.contains("page 1 belongs to no sequence"))
        #expect(rejected { $0.header[12] = 4; $0.header.replaceSubrange(20..<24, with: withUnsafeBytes(of: CRC32C.checksum($0.header[0..<20]).littleEndian, Array.init)) }
            .contains("section count"))
    }

    @Test func loadingBeyondTheByteLimitIsRefusedAndChangesNothing() throws {
        let (source, _) = try Self.sample()
        var c = Self.fixedConfig
        c.byteLimit = source.byteCount - 1
        let target = try KVStore(c)
        #expect(throws: SnapshotError.byteLimitExceeded(requestedBytes: source.byteCount, availableBytes: source.byteCount - 1)) {
            try target.loadSnapshot(bytes: source.snapshotBytes())
        }
        #expect(target.sequences.isEmpty && target.byteCount == 0 && target.pool.pagesInUse == 0)
        c.byteLimit = source.byteCount
        #expect(try KVStore(c).loadSnapshot(bytes: source.snapshotBytes()).count == source.sequences.count)
    }
}

extension StoreImage {
    func with(byteCount: Int, pagesInUse: Int) -> StoreImage {
        var s = self
        s.byteCount = byteCount
        s.pagesInUse = pagesInUse
        return s
    }
}
