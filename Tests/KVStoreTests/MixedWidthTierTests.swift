import Foundation
import Testing
import TestSupport
import KVQuantization
@testable import KVStore

/// A store whose INT4 tier keeps mixed-width per-channel keys (`.mixedChannelwise`), GQA with two
/// KV heads of different widths, head dims 64 (rotated and not) and 20 (not a multiple of 8): sealed
/// pages are exactly each head's `MixedChannelwiseKeyCodec` pages, `attend` agrees with FP64
/// attention over the decoded rows within the derived bound (the segments' kernel bounds included,
/// `vnniScoreErrors`), the bytes follow the memory formula, snapshots round-trip bit for bit and
/// refuse other widths, and bad configurations and snapshots name what is wrong.
@Suite struct MixedWidthTierTests {
    /// Two heads of different widths at `d`, scattered over the channels: at 64, 32×INT4 + 32×INT3
    /// (28 B) and 16×INT8 + 16×INT3 + 32×INT2 (30 B) in the 32 B of `.channelwise(.int4)`; at 128,
    /// 64×INT4 + 32×INT8 + 32×INT2 (72 B) and 64×INT8 + 64×INT2 (80 B), so that a segment of 64
    /// (VNNI) and of 32 (AVX2 integer) INT4 channels is scored where the kernel path has them; at
    /// other head dims, all four widths in two patterns, one byte of padding.
    static func widths(_ d: Int) -> ChannelWidths {
        if d == 64 {
            let a = (0..<64).map { c -> CodeWidth in c % 2 == 0 ? .int4 : .int3 }
            let b = (0..<64).map { c -> CodeWidth in c % 4 == 0 ? .int8 : c % 4 == 1 ? .int3 : .int2 }
            return ChannelWidths(widths: [a, b], rowByteCount: 32)
        }
        if d == 128 {
            let a = (0..<128).map { c -> CodeWidth in c % 4 < 2 ? .int4 : c % 4 == 2 ? .int8 : .int2 }
            let b = (0..<128).map { c -> CodeWidth in c % 2 == 0 ? .int2 : .int8 }
            return ChannelWidths(widths: [a, b])
        }
        let a = (0..<d).map { c in [CodeWidth.int2, .int8, .int3, .int4][(c * 7 + c / 3) % 4] }
        let b = (0..<d).map { c in [CodeWidth.int4, .int2, .int8, .int3][(c * 5 + 1) % 4] }
        return ChannelWidths(widths: [a, b], rowByteCount: max(ChannelWidths.segmentByteCount(a), ChannelWidths.segmentByteCount(b)) + 1)
    }

    static func formats(_ w: ChannelWidths) -> TierFormats {
        TierFormats(keys: [.fp16: .fp16, .int8: .channelwise(.int8), .int4: .mixedChannelwise(w), .int2: .int2],
                    values: [.fp16: .fp16, .int8: .int8, .int4: .int4, .int2: .int2])
    }

    static let pageCapacity = 16

    static func configuration(_ d: Int, rotation: RotationSettings = .none) -> KVStoreConfiguration {
        KVStoreConfiguration(layerCount: 1, queryHeadCount: 4, kvHeadCount: 2, headDim: d, pageCapacity: pageCapacity,
                             tierFormats: formats(widths(d)), rotation: rotation)
    }

    static let shapes: [(d: Int, rotation: RotationSettings)] = [(64, .none), (20, .none), (64, RotationSettings(keys: .all, values: .all, seed: 9)), (128, .none)]

    /// Keys first moved as one batch from FP16 into the mixed tier fill sealed pages that are exactly
    /// `encodePageReference` of those FP16 keys by each head's own codec; the remainder waits at FP16.
    @Test(arguments: [64, 20, 128])
    func sealedPagesAreEachHeadsCodecPages(_ d: Int) throws {
        let c = Self.configuration(d), widths = Self.widths(d), P = Self.pageCapacity
        let store = try KVStore(c)
        let id = store.addSequence()
        var g = SeededGenerator(seed: 14_100 + UInt64(d))
        let n = 50, moved = 40
        let keys = randomRows(2 * n * d, using: &g), values = randomRows(2 * n * d, using: &g)
        try store.append(id, layer: 0, keys: keys, values: values)
        try store.apply(.uniform(.int4, positions: 0..<Int32(moved), layerCount: 1, kvHeadCount: 2), to: id)
        let model = ReferenceStore(configuration: c)
        for h in 0..<2 {
            let codec = MixedChannelwiseKeyCodec(widths, kvHead: h)
            let half = (0..<(n * d)).map { Float(Float16(keys[h * n * d + $0])) }
            var expected = half
            for p in stride(from: 0, to: moved / P * P, by: P) {
                var codes = [UInt8](repeating: 0, count: P * codec.rowByteCount), params = [UInt8](repeating: 0, count: 4 * d)
                half.withUnsafeBufferPointer { x in
                    codes.withUnsafeMutableBytes { cp in
                        params.withUnsafeMutableBytes { pp in
                            codec.encodePageReference(x.baseAddress! + p * d, tokenCount: P, codes: cp.baseAddress!, params: pp.baseAddress!)
                            expected.withUnsafeMutableBufferPointer {
                                codec.decodeRows(slot: 0, count: P, tokenCount: P, codes: cp.baseAddress!, params: pp.baseAddress!, into: $0.baseAddress! + p * d)
                            }
                        }
                    }
                }
            }
            let rows = store.rows(id, layer: 0, kvHead: h)
            #expect(rows.positions == (0..<Int32(n)).map { $0 } && rows.tiers == (0..<n).map { $0 < moved ? Tier.int4 : .fp16 }, "d \(d) head \(h)")
            #expect(rows.keys.map(\.bitPattern) == expected.map(\.bitPattern), "d \(d) head \(h): keys are not this head's codec pages")
            for t in 0..<n {
                let v = (0..<d).map { Float(Float16(values[(h * n + t) * d + $0])) }
                let want = t < moved ? model.roundTrip(v, .int4) : v
                #expect(Array(rows.values[(t * d)..<((t + 1) * d)]) == want, "d \(d) head \(h) token \(t): value")
            }
            // The same through forEachToken.
            var seen = 0
            store.forEachToken(id, layer: 0, kvHead: h) { token, k, _ in
                #expect(Array(k).map(\.bitPattern) == expected[(seen * d)..<((seen + 1) * d)].map(\.bitPattern) && token.position == Int32(seen))
                seen += 1
            }
            #expect(seen == n)
            #expect(store.pageCounts(of: id, layer: 0, kvHead: h) == [.fp16: 1, .int8: 0, .int4: 3, .int2: 0], "d \(d) head \(h)")
        }
        // The other head's widths really differ: its codec decodes head 0's keys differently.
        let other = MixedChannelwiseKeyCodec(widths, kvHead: 1)
        #expect(other.channels != MixedChannelwiseKeyCodec(widths, kvHead: 0).channels)
    }

    /// The memory formula of a sealed mixed page and of its tier's staging page.
    static func mixedPageBytes(_ d: Int, _ w: ChannelWidths) -> (sealed: Int, staging: Int) {
        let P = pageCapacity, positions = PagePositions.byteCount(pageCapacity: P), values = P * StorageFormat.int4.rowByteCount(headDim: d)
        return (positions + 4 * d + P * w.rowByteCount + values, positions + P * 2 * d + values)
    }

    /// The store of the attention tests: 130 tokens per head to random tiers, then a second plan
    /// that moves INT8 and FP16 tokens into the mixed tier and drops some of its tokens (sealed pages
    /// losing tokens are decoded and sealed again), then three decode tokens.
    static func populatedStore(_ c: KVStoreConfiguration, using g: inout SeededGenerator) throws -> (KVStore, SequenceID) {
        let (store, id) = try RotatedTierTests.mixedStore(c, tokens: 130, using: &g)
        let plan = RetentionPlan(streams: (0..<2).map { h in
            let (positions, tiers) = store.tokenTiers(of: id, layer: 0, kvHead: h)
            var moves = [StreamPlan.Move]()
            for (p, t) in zip(positions, tiers) {
                if t == .int8 || (t == .fp16 && p < 100), Bool.random(using: &g) { moves.append(StreamPlan.Move(position: p, tier: .int4)) }
                if t == .int4, Int.random(in: 0..<5, using: &g) == 0 { moves.append(StreamPlan.Move(position: p, tier: .dropped)) }
            }
            return StreamPlan(layer: 0, kvHead: h, moves: moves)
        })
        try store.apply(plan, to: id)
        try store.append(id, layer: 0, keys: randomRows(2 * 3 * c.headDim, using: &g), values: randomRows(2 * 3 * c.headDim, using: &g))
        return (store, id)
    }

    @Test func attendAgreesWithAttentionOverTheDecodedRows() throws {
        var scorings = Set<KeyScoring>()
        for (d, rotation) in Self.shapes {
            let c = Self.configuration(d, rotation: rotation)
            var g = SeededGenerator(seed: 14_200 + UInt64(d) + (rotation == .none ? 0 : 1))
            let (store, id) = try Self.populatedStore(c, using: &g)
            let n = store.nextPosition(of: id, layer: 0)
            for h in 0..<2 {
                #expect(store.pageCounts(of: id, layer: 0, kvHead: h)[.int4]! >= 3, "d \(d): sealed mixed pages expected")
                let tc = store.codecs[0][h][Tier.int4.rawValue]
                #expect(tc.keyScoring == .mixedChannelwise && tc.mixedKeys!.codec.channels != store.codecs[0][1 - h][Tier.int4.rawValue].mixedKeys!.codec.channels)
                scorings.formUnion(tc.mixedKeys!.codec.segments.map(\.scoring))
            }
            for queryCount in [1, 3] {
                let q = randomRows(c.queryHeadCount * queryCount * d, using: &g)
                let positions: [Int32] = queryCount == 1 ? [Int32(n - 1)] : [37, 90, Int32(n - 1)]
                let context = "seed \(g.seed) d \(d) rotation \(rotation) queries \(queryCount)"
                let one = store.attend(id, layer: 0, queries: q, queryCount: queryCount, queryPositions: positions, threadCount: 1)
                let two = store.attend(id, layer: 0, queries: q, queryCount: queryCount, queryPositions: positions, threadCount: 2)
                #expect(two.output.map(\.bitPattern) == one.output.map(\.bitPattern), "\(context): threads")
                store.expectAttentionWithinBound(id, layer: 0, queries: q, queryCount: queryCount, positions: positions, output: one.output, context)
                // Peaked queries (large scores) stress the score bound.
                let peaked = q.map { $0 * 8 }
                let out = store.attend(id, layer: 0, queries: peaked, queryCount: queryCount, queryPositions: positions).output
                store.expectAttentionWithinBound(id, layer: 0, queries: peaked, queryCount: queryCount, positions: positions, output: out, context + " peaked")
            }
        }
        // The read path ran the integer-domain segment kernels wherever this process's path has them.
        let k = KernelSet.current
        #expect(scorings.contains(.channelwiseVNNI) == (k.vnniScores || k.avx2) && scorings.contains(.channelwiseInt3), "\(k): \(scorings)")
    }

    @Test func byteCountFollowsTheMemoryFormula() throws {
        for (d, rotation) in Self.shapes {
            let c = Self.configuration(d, rotation: rotation), w = Self.widths(d), P = Self.pageCapacity
            var g = SeededGenerator(seed: 14_300 + UInt64(d))
            let (store, id) = try Self.populatedStore(c, using: &g)
            let mixed = Self.mixedPageBytes(d, w)
            var total = 0
            for h in 0..<2 {
                let tc = store.codecs[0][h][Tier.int4.rawValue]
                #expect(tc.layout.byteCount == mixed.sealed && tc.stagingLayout!.byteCount == mixed.staging, "d \(d) head \(h): layouts")
                let counts = store.tokenCounts(of: id, layer: 0, kvHead: h), bytes = store.byteCounts(of: id, layer: 0, kvHead: h)
                let n4 = counts[.int4]!
                #expect(bytes[.int4] == n4 / P * mixed.sealed + (n4 % P > 0 ? mixed.staging : 0), "d \(d) head \(h): INT4 bytes")
                var stream = 0
                for t in Tier.stored {
                    let tcodec = store.codecs[0][h][t.rawValue], n = counts[t]!
                    let expected = tcodec.isPageWise ? n / P * tcodec.layout.byteCount + (n % P > 0 ? tcodec.stagingLayout!.byteCount : 0)
                        : (n + P - 1) / P * tcodec.layout.byteCount
                    #expect(bytes[t] == expected, "d \(d) head \(h) \(t)")
                    stream += expected
                }
                #expect(store.byteCount(of: id, layer: 0, kvHead: h) == stream)
                total += stream
            }
            #expect(store.byteCount(of: id) == total && store.byteCount == total && livePages(store).bytes == total, "d \(d)")
        }
    }

    @Test func snapshotsRoundTripAndRefuseOtherWidths() throws {
        for (d, rotation) in Self.shapes {
            let c = Self.configuration(d, rotation: rotation)
            var g = SeededGenerator(seed: 14_400 + UInt64(d))
            let (store, id) = try Self.populatedStore(c, using: &g)
            _ = store.fork(id)
            let bytes = store.snapshotBytes()
            let restored = try KVStore.restoring(bytes: bytes)
            #expect(restored.configuration == c, "d \(d)")
            #expect(StoreImage(restored) == StoreImage(store), "d \(d)")
            #expect(restored.snapshotBytes() == bytes, "d \(d): snapshot bytes")
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("mixed-width-\(d)-\(ProcessInfo.processInfo.processIdentifier).kvsnap")
            defer { try? FileManager.default.removeItem(at: url) }
            try store.saveSnapshot(to: url)
            let fromFile = try KVStore.restoring(from: url)
            #expect(StoreImage(fromFile) == StoreImage(store), "d \(d): from file")
            for s in store.sequences {
                let q = randomRows(c.queryHeadCount * d, using: &g)
                let a = store.attend(s, layer: 0, queries: q).output.map(\.bitPattern)
                #expect(restored.attend(s, layer: 0, queries: q).output.map(\.bitPattern) == a && fromFile.attend(s, layer: 0, queries: q).output.map(\.bitPattern) == a,
                        "d \(d) sequence \(s): attention after restoring")
            }
            // A store whose INT4 widths differ, even at the same bytes per row (the same name,
            // `mix…/channel`), must not read these pages.
            let w = Self.widths(d)
            let swapped = ChannelWidths(widths: [w.widths[1], w.widths[0]], rowByteCount: w.rowByteCount)
            #expect(swapped.description == w.description && swapped != w)
            var other = c
            other.tierFormats = Self.formats(swapped)
            let otherStore = try KVStore(other)
            #expect(throws: SnapshotError.self) { try otherStore.loadSnapshot(bytes: bytes) }
            do { _ = try otherStore.loadSnapshot(bytes: bytes) } catch {
                if case .configurationMismatch(let field, let a, let b) = error {
                    #expect(field == "tierFormats.keys[int4]" && a != b && a.hasPrefix(w.description) && a.contains("KV head 0 channel"), "d \(d): \(error)")
                } else {
                    Issue.record("d \(d): \(error)")
                }
            }
            #expect(throws: Never.self) { try KVStore(c).loadSnapshot(bytes: bytes) }
        }
    }

    @Test func configurationErrorsNameTheField() throws {
        func field(_ change: (inout KVStoreConfiguration) -> Void) -> String? {
            var c = Self.configuration(64)
            change(&c)
            do { _ = try KVStore(c); return nil } catch { return error.field }
        }
        let w = Self.widths(64)
        #expect(field { _ in } == nil)
        // Widths for three KV heads in a store of two.
        let three = ChannelWidths(widths: w.widths + [w.widths[0]], rowByteCount: w.rowByteCount)
        #expect(field { $0.tierFormats.keys[.int4] = .mixedChannelwise(three) } == "tierFormats.keys[int4]")
        // Widths for another head dim.
        #expect(field { $0.tierFormats.keys[.int4] = .mixedChannelwise(Self.widths(20)) } == "tierFormats.keys[int4]")
        #expect(field { $0.tierFormats.keys[.int2] = .mixedChannelwise(Self.widths(20)) } == "tierFormats.keys[int2]")
        // Mixed values, and mixed keys in the FP16 tier.
        #expect(field { $0.tierFormats.values[.int4] = .mixedChannelwise(w) } == "tierFormats.values[int4]")
        #expect(field { $0.tierFormats.keys[.fp16] = .mixedChannelwise(w) } == "tierFormats[fp16]")
        // Per-layer formats name the layer.
        #expect(field { c in
            c.layerCount = 2
            c.layerTierFormats = [Self.formats(w), Self.formats(three)]
        } == "layerTierFormats[1].keys[int4]")
        var bad = Self.configuration(64)
        bad.tierFormats.keys[.int4] = .mixedChannelwise(three)
        #expect(throws: KVStoreConfigurationError.self) { try bad.validate() }
        do { try bad.validate() } catch { #expect(error.description.contains("3 KV heads"), "\(error)") }
    }

    /// The CONF bytes of the mixed format (kind 4): kind, 0 bits, row bytes, KV heads, head dim,
    /// then one width byte per (head, channel). Returns the offset of the first width byte.
    static func widthBytesOffset(_ conf: [UInt8], _ w: ChannelWidths) -> Int? {
        func u32(_ x: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: x >> (8 * $0)) } }
        let marker = [4, 0] + u32(w.rowByteCount) + u32(w.kvHeadCount) + u32(w.headDim) + w.widths.joined().map { UInt8($0.bits) }
        guard conf.count >= marker.count else { return nil }
        for o in 0...(conf.count - marker.count) where conf[o] == 4 && Array(conf[o..<(o + marker.count)]) == marker { return o + 14 }
        return nil
    }

    @Test func corruptedWidthBytesAreSnapshotErrors() throws {
        let d = 20, c = Self.configuration(d), w = Self.widths(d)
        var g = SeededGenerator(seed: 14_500)
        let (store, _) = try Self.populatedStore(c, using: &g)
        let bytes = store.snapshotBytes()
        let sections = SnapshotSections(bytes)
        let start = try #require(Self.widthBytesOffset(sections.payloads[0], w), "the widths in CONF")
        // Untouched, the crafted-file path (re-checksummed sections) loads.
        #expect(throws: Never.self) { try KVStore.restoring(bytes: sections.bytes) }
        // A width that does not exist.
        for (k, value) in [(0, UInt8(5)), (7, 0), (2 * d - 1, 16), (d, 1)] {
            var s = sections
            s.payloads[0][start + k] = value
            #expect(throws: SnapshotError.self, "width byte \(k) = \(value)") { try KVStore.restoring(bytes: s.bytes) }
            do { _ = try KVStore.restoring(bytes: s.bytes) } catch {
                if case .malformed(let section, _) = error { #expect(section == "CONF", "\(error)") } else { Issue.record("width byte \(k): \(error)") }
            }
        }
        // Valid widths that no longer fit the row's bytes (every channel of head 0 at INT8).
        var wide = sections
        for k in 0..<d { wide.payloads[0][start + k] = 8 }
        #expect(throws: SnapshotError.self) { try KVStore.restoring(bytes: wide.bytes) }
        // Row bytes beyond 4·d, and a head count or head dim the configuration does not have.
        for (field, value) in [(start - 12, 4 * d + 1), (start - 8, 3), (start - 4, 21)] {
            var s = sections
            for i in 0..<4 { s.payloads[0][field + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
            #expect(throws: SnapshotError.self, "field at \(field - start) = \(value)") { try KVStore.restoring(bytes: s.bytes) }
        }
        // The same byte flipped in the file itself: the checksum catches it.
        var raw = bytes
        let offsetInFile = 24 + 12 + start  // header, CONF's tag and length
        #expect(raw[offsetInFile] == sections.payloads[0][start])
        raw[offsetInFile] ^= 0x0C
        #expect(throws: SnapshotError.self) { try KVStore.restoring(bytes: raw) }
        do { _ = try KVStore.restoring(bytes: raw) } catch {
            if case .checksumMismatch(let section, _, _) = error { #expect(section == "CONF") } else { Issue.record("\(error)") }
        }
    }
}
