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

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")

    /// The `.image` beside a fixture snapshot (written by the code that wrote the snapshot, see
    /// `Fixtures/snapshot-v2/make_v2_fixtures.swift`): per sequence (ID order) its ID, then per
    /// layer its next position and per KV head the token count, positions, tiers, key and value bits.
    static func image(_ store: KVStore) -> [UInt32] {
        var out = [UInt32]()
        let c = store.configuration
        for id in store.sequences {
            out.append(UInt32(id.rawValue))
            for layer in 0..<c.layerCount {
                out.append(UInt32(store.nextPosition(of: id, layer: layer)))
                for head in 0..<c.kvHeadCount {
                    let r = store.rows(id, layer: layer, kvHead: head)
                    out.append(UInt32(r.count))
                    out += r.positions.map { UInt32(bitPattern: $0) } + r.tiers.map { UInt32($0.rawValue) }
                    out += r.keys.map(\.bitPattern) + r.values.map(\.bitPattern)
                }
            }
        }
        return out
    }

    static func fixture(_ path: String) throws -> (snapshot: [UInt8], image: [UInt32]) {
        let snapshot = try [UInt8](Data(contentsOf: fixtures.appendingPathComponent(path + ".kvsnap")))
        let raw = try [UInt8](Data(contentsOf: fixtures.appendingPathComponent(path + ".image")))
        let image = raw.withUnsafeBytes { b in (0..<(raw.count / 4)).map { UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) } }
        return (snapshot, image)
    }

    /// Version 1, 2 and 3 files (`Fixtures/snapshot-v1`, `snapshot-v2`, `snapshot-v3`, written by that code) load,
    /// converted: the same sequences, positions, tiers and decoded keys and values as the code that
    /// wrote them had, bit for bit, the same pages shared by forks; and they save again as version 4,
    /// which restores to the same rows and re-saves to the same bytes.
    @Test func olderVersionsLoadConvertedAndSaveAsVersionFour() throws {
        for (path, version) in [("snapshot-v1/mixed-tiers-forks", 1), ("snapshot-v2/mixed-tiers-forks", 2),
                                ("snapshot-v3/mixed-tiers-forks", 3)] {
            let (old, image) = try Self.fixture(path)
            #expect(old[8] == UInt8(version), "\(path)")
            let restored = try KVStore.restoring(bytes: old)
            #expect(Self.image(restored) == image, "\(path): restored rows differ from the writer's")
            let new = restored.snapshotBytes()
            #expect(new[8] == 4)
            let again = try KVStore.restoring(bytes: new)
            #expect(Self.image(again) == image && again.snapshotBytes() == new, "\(path)")
            #expect(again.byteCount == restored.byteCount && again.pool.pagesInUse == restored.pool.pagesInUse)
            // Loading into a store of the same shape gives the same rows too.
            let other = try KVStore(restored.configuration)
            let ids = try other.loadSnapshot(bytes: old)
            #expect(StoreImage(other, ids: ids).sameSequences(as: StoreImage(restored)), "\(path)")
            // The same pages, each shared as before: the old PAGE section's page count (these files
            // hold no page the conversion must split or repack).
            let oldPages = SnapshotSections(old).payloads[1][0..<4].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
            #expect(restored.pool.pagesInUse == oldPages, "\(path): \(restored.pool.pagesInUse) pages from \(oldPages)")
        }
    }

    /// A version 2 file with what version 3 no longer stores as is: a row-wise page out of position
    /// order spanning more than 65,535 positions, an FP16 page spanning more, sealed per-channel
    /// pages spanning more, and a fork. It loads with every token in place and every decoded row
    /// exact, except the keys of split sealed pages (re-quantised from their decoded values: within
    /// the format's error bound of them); the result obeys version 3's rules (it re-saves and
    /// restores), and the pages no split or repack touches stay shared by the two sequences.
    @Test func versionTwoPagesSpanningTooFarAreSplitOnLoading() throws {
        let (old, image) = try Self.fixture("snapshot-v2/edge-cases")
        let restored = try KVStore.restoring(bytes: old)
        let now = Self.image(restored)
        #expect(now.count == image.count)
        // Walk both images; keys of the per-channel tiers (int8, int2 here) may differ where a sealed
        // page was split: by at most the INT8 step of their page (values in ±4: 8/255 < 2⁻⁵).
        var i = 0, differing = 0
        for _ in restored.sequences {
            #expect(now[i] == image[i]); i += 1  // id
            #expect(now[i] == image[i]); i += 1  // next position
            let n = Int(now[i]); #expect(now[i] == image[i]); i += 1
            let positions = now[i..<(i + n)].map { Int32(bitPattern: $0) }, tiers = now[(i + n)..<(i + 2 * n)].map { Tier(rawValue: Int($0))! }
            #expect(Array(now[i..<(i + 2 * n)]) == Array(image[i..<(i + 2 * n)]), "positions and tiers")
            i += 2 * n
            let d = restored.configuration.headDim
            for k in 0..<n {
                for e in 0..<d {
                    let a = Float(bitPattern: now[i + k * d + e]), b = Float(bitPattern: image[i + k * d + e])
                    if restored.configuration.tierFormats.keyFormat(tiers[k]).isPageWise {
                        if a != b { differing += 1 }
                        #expect(abs(a - b) <= 0x1p-5, "position \(positions[k]) key \(e): \(a) vs \(b)")
                    } else {
                        #expect(a.bitPattern == b.bitPattern, "position \(positions[k]) key \(e)")
                    }
                }
            }
            i += n * d
            #expect(Array(now[i..<(i + n * d)]) == Array(image[i..<(i + n * d)]), "values")
            i += n * d
        }
        #expect(i == now.count)
        #expect(differing > 0)
        print("SnapshotTests: \(differing) key elements of split pages re-quantised")
        // Version 3's rules hold: the result re-saves and restores to itself.
        let new = restored.snapshotBytes()
        #expect(try KVStore.restoring(bytes: new).snapshotBytes() == new)
        // Every page spans at most 65,535 positions and holds its positions in order.
        restored.state.withLock { s in
            for (_, q) in s.sequences {
                for tier in q.layers[0].streams[0].tiers {
                    for page in tier.pages + (tier.staging.map { [$0] } ?? []) {
                        #expect(Int(page.lastPosition) - Int(page.basePosition) <= 65535)
                    }
                }
            }
        }
        let ids = restored.sequences
        #expect(restored.byteCount < restored.byteCount(of: ids[0]) + restored.byteCount(of: ids[1]), "the fork shares pages")
    }

    @Test func wrongVersionAndWrongShapeAreNamed() throws {
        let (source, _) = try Self.sample()
        var sections = SnapshotSections(source.snapshotBytes())
        sections.header[8] = 5
        sections.header.replaceSubrange(20..<24, with: withUnsafeBytes(of: CRC32C.checksum(sections.header[0..<20]).littleEndian, Array.init))
        #expect(throws: SnapshotError.unsupportedVersion(found: 5, supported: 1...4)) { try KVStore.restoring(bytes: sections.bytes) }

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
        c = Self.fixedConfig
        c.tierFormats.pageCapacities[.int8] = 8
        #expect(throws: SnapshotError.configurationMismatch(field: "tierFormats.pageCapacities[int8]", store: "8", snapshot: "4")) {
            try KVStore(c).loadSnapshot(bytes: source.snapshotBytes())
        }
        c = Self.fixedConfig
        c.layerTierFormats = [c.tierFormats, c.tierFormats.withPageCapacities([.int2: 2])]
        #expect(throws: SnapshotError.configurationMismatch(field: "layerTierFormats[1].pageCapacities[int2]", store: "2", snapshot: "4")) {
            try KVStore(c).loadSnapshot(bytes: source.snapshotBytes())
        }
        // Equal layouts load, whichever way the configuration spells them.
        c = Self.fixedConfig
        c.layerTierFormats = [c.tierFormats, c.tierFormats.withPageCapacities([.int2: 4])]
        #expect(try KVStore(c).loadSnapshot(bytes: source.snapshotBytes()).count == source.sequences.count)
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
        // PAGE: count u32, then page 0: layer u32, tier u8, staging u8, count u32, base i32, 4 offsets u16,
        // 4 key rows (16 B), 4 value rows; page 1 (2 tokens) from byte 154.
        let firstKey = 4 + 14 + 8, firstOffset = 4 + 14, secondBase = 154 + 10
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
        #expect(rejected { $0.payloads[1][firstOffset] = 1 }.contains("offsets ascend strictly from 0"))
        #expect(rejected { $0.payloads[1][firstOffset + 2] = 0 }.contains("offsets ascend strictly from 0"))  // offsets 0, 0
        #expect(rejected { $0.payloads[1][secondBase] = 9 }.contains("outside 0..<6"))  // page 1 holds 9, 10
        #expect(rejected { $0.payloads[1][secondBase + 3] = 0x80 }.contains("has base position"))  // negative
        #expect(rejected { $0.payloads[1][secondBase] = 3 }.contains("does not follow page 0"))  // position 3 twice
        #expect(rejected { $0.payloads[1][4] = 1 }.contains("has layer 1"))
        #expect(rejected { $0.payloads[1][8] = 7 }.contains("tier 7"))
        #expect(rejected { $0.payloads[1][9] = 1 }.contains("staging page"))
        #expect(rejected { $0.payloads[1][10] = 5 }.contains("holds 5 tokens"))
        #expect(rejected { $0.payloads[1][10] = 0 }.contains("holds 0 tokens"))
        #expect(rejected { $0.payloads[1][0] = 3 }.contains("PAGE"))
        #expect(rejected { $0.payloads[1].append(0) }.contains("unread bytes"))
        #expect(rejected { $0.payloads[0][16] = 0 }.contains("kvHeadCount"))  // kvHeadCount = 0
        #expect(rejected { $0.payloads[0][15] = 0x40 }.contains("queryHeadCount must be in 1...65536"))  // 2⁶²: fuzzer-found
        #expect(rejected { $0.payloads[0][24] = 5 } != "accepted")  // headDim 5: the rows no longer fit the payload
        // CONF ends with hasLayerFormats (0 here), the rotation (none: 18 bytes), hasWindows (0).
        #expect(rejected { $0.payloads[0][$0.payloads[0].count - 20] = 2 }.contains("hasLayerFormats is 2"))
        #expect(rejected { $0.payloads[0][$0.payloads[0].count - 21] = 0x7F }.contains("pageCapacities[int2] must be in 1...65536"))
        #expect(rejected { $0.payloads[0][$0.payloads[0].count - 1] = 2 }.contains("hasWindows is 2"))
        #expect(rejected { $0.payloads[0][$0.payloads[0].count - 1] = 1 }.contains("windows do not fit the payload"))
        // Page 0 holding 3 of its 4 slots (positions 0, 1, 2) before page 1 (4, 5): not packed.
        #expect(rejected { s in
            s.payloads[1][10] = 3
            s.payloads[1].removeSubrange((firstKey + 64 + 48)..<(firstKey + 64 + 64))  // value row 3
            s.payloads[1].removeSubrange((firstKey + 48)..<(firstKey + 64))  // key row 3
            s.payloads[1].removeSubrange((firstOffset + 6)..<(firstOffset + 8))  // offset 3
        }.contains("page 0 of 2 is not full"))
        // SEQS: nextID u64, count u32, id u64, next position i32, tier 0: pageCount u32 (= 2), indices...
        #expect(rejected { $0.payloads[2][28] = 1 }.contains("does not follow page 0"))  // pages [1, 1]
        #expect(rejected { $0.payloads[2][20] = 5 }.contains("outside 0..<5"))
        #expect(rejected { $0.payloads[2][0] = 0 }.contains("not below the next ID"))
        #expect(rejected { $0.payloads[2][32] = 0 }.contains("does not follow page 0"))  // pages [0, 0]
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
