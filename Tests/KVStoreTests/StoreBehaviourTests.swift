import Testing
import Foundation
import TestSupport
import KVQuantization
import KVSelection
import KVExperiments
@testable import KVStore

@Suite struct StoreBehaviourTests {
    static let small = KVStoreConfiguration(layerCount: 2, queryHeadCount: 4, kvHeadCount: 2, headDim: 8, pageCapacity: 4)

    @Test func invalidConfigurationsNameTheField() {
        func field(_ change: (inout KVStoreConfiguration) -> Void) -> String? {
            var c = Self.small
            change(&c)
            do { _ = try KVStore(c); return nil } catch { return error.field }
        }
        #expect(field { $0.layerCount = 0 } == "layerCount")
        #expect(field { $0.queryHeadCount = 0 } == "queryHeadCount")
        #expect(field { $0.kvHeadCount = 3 } == "kvHeadCount")
        #expect(field { $0.headDim = 0 } == "headDim")
        #expect(field { $0.pageCapacity = 0 } == "pageCapacity")
        #expect(field { $0.byteLimit = -5 } == "byteLimit")
        #expect(field { $0.attentionScale = .nan } == "attentionScale")
        #expect(field { $0.tierFormats.keys[.int4] = .grouped(.int4, groupSize: 12) } == "tierFormats.keys[int4]")
        #expect(field { $0.tierFormats.values[.int8] = .channelwise(.int8) } == "tierFormats.values[int8]")
        #expect(field { $0.tierFormats.keys[.fp16] = .int8 } == "tierFormats[fp16]")
        #expect(field { $0.tierFormats.values[.int2] = nil } == "tierFormats.values[int2]")
        #expect(field { _ in } == nil)
    }

    @Test func invalidValuesAreRejectedWithTheirCoordinatesAndChangeNothing() throws {
        let store = try KVStore(Self.small)
        let id = store.addSequence()
        var g = SeededGenerator(seed: 1)
        try store.append(id, layer: 0, keys: randomRows(2 * 3 * 8, using: &g), values: randomRows(2 * 3 * 8, using: &g))
        let before = (store.byteCount, store.rows(id, layer: 0, kvHead: 1).keys, store.nextPosition(of: id, layer: 0))
        var keys = randomRows(2 * 5 * 8, using: &g)
        keys[(1 * 5 + 3) * 8 + 6] = .infinity  // KV head 1, token 3, element 6
        #expect(throws: KVStoreError.invalidValue(layer: 0, kvHead: 1, token: 3, element: 6, .nonFinite(index: 6, value: .infinity))) {
            try store.append(id, layer: 0, keys: keys, values: randomRows(2 * 5 * 8, using: &g))
        }
        var values = randomRows(2 * 5 * 8, using: &g)
        values[2] = 70_000
        #expect(throws: KVStoreError.invalidValue(layer: 0, kvHead: 0, token: 0, element: 2, .outOfRange(index: 2, value: 70_000))) {
            try store.append(id, layer: 0, keys: randomRows(2 * 5 * 8, using: &g), values: values)
        }
        #expect(store.byteCount == before.0 && store.rows(id, layer: 0, kvHead: 1).keys == before.1)
        #expect(store.nextPosition(of: id, layer: 0) == before.2)
    }

    /// An exhausted byte limit is a typed error and the failed call changes nothing; compressing
    /// frees room so the same append then succeeds.
    @Test func byteLimitIsATypedErrorAndChangesNothing() throws {
        var config = Self.small
        config.layerCount = 1
        config.tierFormats = .grouped
        let fp16Page = PageLayout(keyFormat: .fp16, valueFormat: .fp16, headDim: 8, capacity: 4).byteCount
        config.byteLimit = 4 * fp16Page  // two FP16 pages per KV head
        let store = try KVStore(config)
        let id = store.addSequence()
        var g = SeededGenerator(seed: 2)
        try store.append(id, layer: 0, keys: randomRows(2 * 8 * 8, using: &g), values: randomRows(2 * 8 * 8, using: &g))
        #expect(store.byteCount == 4 * fp16Page)
        let rowsBefore = store.rows(id, layer: 0, kvHead: 0)
        #expect(throws: KVStoreError.byteLimitExceeded(requestedBytes: 2 * fp16Page, availableBytes: 0)) {
            try store.append(id, layer: 0, keys: randomRows(2 * 1 * 8, using: &g), values: randomRows(2 * 1 * 8, using: &g))
        }
        #expect(store.byteCount == 4 * fp16Page && store.nextPosition(of: id, layer: 0) == 8)
        #expect(store.rows(id, layer: 0, kvHead: 0).keys == rowsBefore.keys)
        // Drop four tokens per head: one FP16 page each returns to the pool.
        let drop = (2..<6).map { StreamPlan.Move(position: Int32($0), tier: .dropped) }
        try store.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 0, moves: drop), StreamPlan(layer: 0, kvHead: 1, moves: drop)]), to: id)
        #expect(store.byteCount == 2 * fp16Page && store.pool.pagesInUse == 2)
        try store.append(id, layer: 0, keys: randomRows(2 * 1 * 8, using: &g), values: randomRows(2 * 1 * 8, using: &g))
        #expect(store.byteCount == 4 * fp16Page)
        // A plan that would need more than the limit (quantising while a fork keeps the originals).
        let fork = store.fork(id)
        let demote = [0, 1, 6, 7, 8].map { StreamPlan.Move(position: Int32($0), tier: .int8) }
        let rowsOfFork = store.rows(fork, layer: 0, kvHead: 0)
        #expect(throws: KVStoreError.self) {
            try store.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 0, moves: demote)]), to: id)
        }
        #expect(store.tokenCounts(of: id, layer: 0, kvHead: 0)[.fp16] == 5 && store.rows(fork, layer: 0, kvHead: 0).keys == rowsOfFork.keys)
        #expect(livePages(store).bytes == store.byteCount)
    }

    /// Forks share pages until one changes; the total counts shared pages once.
    @Test func forksShareUntilWritten() throws {
        let store = try KVStore(Self.small)
        let a = store.addSequence()
        var g = SeededGenerator(seed: 3)
        try store.append(a, layer: 1, keys: randomRows(2 * 6 * 8, using: &g), values: randomRows(2 * 6 * 8, using: &g))
        let single = store.byteCount
        let b = store.fork(a)
        #expect(store.byteCount == single && store.byteCount(of: a) == single && store.byteCount(of: b) == single)
        let before = store.rows(a, layer: 1, kvHead: 0)
        try store.append(b, layer: 1, keys: randomRows(2 * 1 * 8, using: &g), values: randomRows(2 * 1 * 8, using: &g))
        // b's partly filled last page was copied before writing: a is untouched.
        #expect(store.rows(a, layer: 1, kvHead: 0).keys == before.keys && store.nextPosition(of: a, layer: 1) == 6)
        #expect(store.rows(b, layer: 1, kvHead: 0).count == 7)
        #expect(store.byteCount > single && store.byteCount < store.byteCount(of: a) + store.byteCount(of: b))
        store.removeSequence(a)
        #expect(store.rows(b, layer: 1, kvHead: 0).keys.prefix(6 * 8) == before.keys[...])
        store.removeSequence(b)
        #expect(store.byteCount == 0 && store.pool.pagesInUse == 0)
    }

    /// Tokens demoted together into a per-channel key tier fill sealed pages quantised exactly as
    /// `ChannelwiseKeyCodec` quantises those tokens' FP16 keys; the remainder waits at FP16 in the
    /// staging page.
    @Test func channelwiseTiersSealFullPagesAndStageTheRest() throws {
        var config = Self.small
        config.layerCount = 1
        config.tierFormats = .standard
        let store = try KVStore(config)
        let id = store.addSequence()
        var g = SeededGenerator(seed: 4)
        let keys = randomRows(2 * 11 * 8, using: &g)
        try store.append(id, layer: 0, keys: keys, values: randomRows(2 * 11 * 8, using: &g))
        let fp16Keys = store.rows(id, layer: 0, kvHead: 1).keys
        let moved = [1, 2, 3, 5, 6, 8, 9]  // 7 tokens: one sealed page of 4, three staged
        try store.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 1, moves: moved.map { .init(position: Int32($0), tier: .int4) })]), to: id)
        #expect(store.pageCounts(of: id, layer: 0, kvHead: 1)[.int4] == 2)
        let rows = store.rows(id, layer: 0, kvHead: 1)
        let codec = try ChannelwiseKeyCodec(.int4, headDim: 8)
        var codes = [UInt8](repeating: 0, count: 4 * codec.rowByteCount), params = [UInt8](repeating: 0, count: codec.parameterByteCount)
        let sealedInput = [1, 2, 3, 5].flatMap { fp16Keys[($0 * 8)..<(($0 + 1) * 8)] }
        try sealedInput.withUnsafeBufferPointer { x in
            try codes.withUnsafeMutableBytes { c in
                try params.withUnsafeMutableBytes { p in
                    try codec.encodePage(x.baseAddress!, tokenCount: 4, codes: c.baseAddress!, params: p.baseAddress!)
                    for (k, pos) in [1, 2, 3, 5].enumerated() {
                        var expected = [Float](repeating: 0, count: 8)
                        codec.decode(c.baseAddress! + k * codec.rowByteCount, params: p.baseAddress!, into: &expected)
                        let i = rows.positions.firstIndex(of: Int32(pos))!
                        #expect(Array(rows.keys[(i * 8)..<((i + 1) * 8)]) == expected, "sealed token \(pos)")
                        #expect(rows.tiers[i] == .int4)
                    }
                }
            }
        }
        for pos in [6, 8, 9] {
            let i = rows.positions.firstIndex(of: Int32(pos))!
            #expect(Array(rows.keys[(i * 8)..<((i + 1) * 8)]) == Array(fp16Keys[(pos * 8)..<((pos + 1) * 8)]), "staged token \(pos) keeps FP16 keys")
        }
        // One more token fills the staging page, which is then sealed.
        try store.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 1, moves: [.init(position: 10, tier: .int4)])]), to: id)
        #expect(store.pageCounts(of: id, layer: 0, kvHead: 1)[.int4] == 2)
        let sealed = store.state.withLock { $0.sequences[id]!.layers[0].streams[1].tiers[Tier.int4.rawValue] }
        #expect(sealed.pages.count == 2 && sealed.staging == nil && sealed.pages.allSatisfy(\.isFull))
    }

    /// The model-based sequence with per-channel key tiers: structure, values, accounting and the
    /// read path's agreement with the row reader.
    @Test func randomOperationsWithChannelwiseKeys() throws {
        try forEachSeededCase(40, base: 5000) { g in
            let config = randomConfiguration(using: &g, channelwiseKeys: true)
            let store = try KVStore(config)
            var model = ReferenceStore(configuration: config)
            let id = store.addSequence()
            model.addEmptySequence(id)
            for step in 0..<12 {
                let context = "seed \(g.seed) step \(step)"
                if step % 3 != 2 {
                    let layer = Int.random(in: 0..<config.layerCount, using: &g), n = Int.random(in: 0...20, using: &g)
                    let k = randomRows(config.kvHeadCount * n * config.headDim, using: &g)
                    let v = randomRows(config.kvHeadCount * n * config.headDim, using: &g)
                    try store.append(id, layer: layer, keys: k, values: v)
                    model.append(id, layer: layer, keys: k, values: v)
                } else {
                    let plan = randomPlan(model, id, using: &g)
                    try store.apply(plan, to: id)
                    model.apply(plan, to: id)
                }
                for layer in 0..<config.layerCount {
                    for h in 0..<config.kvHeadCount {
                        let rows = store.rows(id, layer: layer, kvHead: h)
                        let expected = model.sequences[id]!.streams[layer][h].sorted { $0.key < $1.key }
                        #expect(rows.positions == expected.map(\.key) && rows.tiers == expected.map(\.value.tier), "\(context)")
                        #expect(rows.values == expected.flatMap(\.value.value), "\(context): values are row-wise, exact")
                        var bytes = 0
                        for t in Tier.stored {
                            let n = expected.filter { $0.value.tier == t }.count, c = store.codecs[layer][h][t.rawValue], p = c.layout.capacity
                            bytes += c.isPageWise ? n / p * c.layout.byteCount + (n % p > 0 ? c.stagingLayout!.byteCount : 0)
                                : (n + p - 1) / p * c.layout.byteCount
                        }
                        #expect(store.byteCount(of: id, layer: layer, kvHead: h) == bytes, "\(context): bytes")
                    }
                }
                // attend agrees with FP64 attention over what the row reader returns.
                let layer = Int.random(in: 0..<config.layerCount, using: &g), d = config.headDim
                let q = randomRows(config.queryHeadCount * d, using: &g)
                let out = store.attend(id, layer: layer, queries: q)
                let next = Int32(store.nextPosition(of: id, layer: layer) - 1)
                store.expectAttentionWithinBound(id, layer: layer, queries: q, queryCount: 1, positions: [next], output: out.output, "\(context): attend")
            }
            #expect(livePages(store).bytes == store.byteCount)
        }
    }

    /// On the real fixture: an all-FP16 store's attention equals exact attention over the FP16 keys
    /// and values (the dump's exact attention at FP16 accuracy), within the derived FP32 bound; INT8
    /// and INT4 stores' relative output errors are reported and ordered.
    @Test func realFixtureAttentionAtEachTier() throws {
        let dump = try KVDump(contentsOf: KVDump.bundledFixtureURL, layers: [29])
        let s = dump.shape, layer = dump.layers[0], d = s.headDim, n = 512, queries = 4
        let config = KVStoreConfiguration(layerCount: 1, queryHeadCount: s.headCount, kvHeadCount: s.kvHeadCount, headDim: d)
        func rows(_ data: [Float]) -> [Float] { (0..<s.kvHeadCount).flatMap { h in data[(h * s.tokenCount * d)..<((h * s.tokenCount + n) * d)] } }
        // Real queries from the dump's last positions, attending causally over the first n tokens.
        let q = (0..<s.headCount).flatMap { h in (0..<queries).flatMap { layer.query(head: h, position: s.queryStart + $0) } }
        let positions = (0..<queries).map { Int32(n - queries + $0) }
        var errors: [Tier: Double] = [:]
        for tier in [Tier.fp16, .int8, .int4] {
            let store = try KVStore(config)
            let id = store.addSequence()
            try store.append(id, layer: 0, keys: rows(layer.keys), values: rows(layer.values))
            if tier != .fp16 {
                try store.apply(.uniform(tier, positions: 0..<Int32(n), layerCount: 1, kvHeadCount: s.kvHeadCount), to: id)
            }
            let out = store.attend(id, layer: 0, queries: q, queryCount: queries, queryPositions: positions)
            var total = 0.0
            for h in 0..<s.headCount {
                let kv = h / s.groupSize
                let keys = layer.keys(kvHead: kv).prefix(n * d).map { Float(Float16($0)) }, values = layer.values(kvHead: kv).prefix(n * d).map { Float(Float16($0)) }
                for i in 0..<queries {
                    let ref = ReferenceAttention(q: Array(q[((h * queries + i) * d)..<((h * queries + i + 1) * d)]), keys: keys, values: values,
                                                 visible: (0..<n).map { $0 <= Int(positions[i]) }, scale: config.effectiveAttentionScale, pageCount: n / 32)
                    let o = Array(out.output[((h * queries + i) * d)..<((h * queries + i + 1) * d)])
                    if tier == .fp16 {
                        for e in 0..<d { #expect(abs(Double(o[e]) - ref.output[e]) <= ref.bound[e], "head \(h) query \(i) element \(e)") }
                    }
                    total += relativeError(o, ref.output)
                }
            }
            errors[tier] = total / Double(s.headCount * queries)
        }
        print("real fixture layer 29, \(n) tokens: mean relative attention-output error fp16 \(errors[.fp16]!), int8 \(errors[.int8]!), int4 \(errors[.int4]!)")
        #expect(errors[.fp16]! < 1e-5 && errors[.fp16]! < errors[.int8]! && errors[.int8]! < errors[.int4]! && errors[.int4]! < 0.2)
    }

    /// Results (outputs and weights) are bit-identical whatever the thread count, batched or not.
    @Test func attendIsIdenticalForEveryThreadCount() throws {
        var g = SeededGenerator(seed: 6)
        let config = KVStoreConfiguration(layerCount: 1, queryHeadCount: 6, kvHeadCount: 3, headDim: 24, pageCapacity: 8)
        let store = try KVStore(config)
        let ids = (0..<3).map { _ in store.addSequence() }
        for (k, id) in ids.enumerated() {
            try store.append(id, layer: 0, keys: randomRows(3 * (40 + k) * 24, using: &g), values: randomRows(3 * (40 + k) * 24, using: &g))
            let plan = RetentionPlan(streams: (0..<3).map { h in
                StreamPlan(layer: 0, kvHead: h, moves: (8..<30).map { .init(position: Int32($0), tier: Tier(rawValue: 1 + ($0 + h) % 4)!) })
            })
            try store.apply(plan, to: id)
        }
        let requests = ids.map { KVStore.AttendRequest(sequence: $0, queries: randomRows(6 * 2 * 24, using: &g), queryCount: 2) }
        let one = store.attend(batch: requests, layer: 0, returnWeights: true, threadCount: 1)
        for threads in [2, 3, 8] {
            let many = store.attend(batch: requests, layer: 0, returnWeights: true, threadCount: threads)
            for b in ids.indices {
                #expect(many[b].output.map(\.bitPattern) == one[b].output.map(\.bitPattern), "\(threads) threads, sequence \(b)")
                #expect(many[b].weights!.map(\.weights) == one[b].weights!.map(\.weights))
                let single = store.attend(ids[b], layer: 0, queries: requests[b].queries, queryCount: 2, threadCount: threads)
                #expect(single.output.map(\.bitPattern) == one[b].output.map(\.bitPattern))
            }
        }
    }
}
