import Testing
import TestSupport
import KVQuantization
import KVSelection
@testable import KVStore

/// The plain model the store is checked against: per stream, a dictionary of FP32 rows (exactly the
/// decoded values the store must return) and tiers.
struct ReferenceStore {
    struct Token { var tier: Tier; var key: [Float]; var value: [Float] }
    struct Sequence {
        var streams: [[[Int32: Token]]]  // [layer][kvHead]
        var next: [Int32]
    }
    let configuration: KVStoreConfiguration
    var sequences: [SequenceID: Sequence] = [:]

    func codec(_ f: StorageFormat) -> RowCodec { try! RowCodec(f, headDim: configuration.headDim) }

    /// What storing `x` in format `f` gives back, computed with the scalar reference kernels. For a
    /// page-wise format the result depends on the page's other tokens: the model keeps `x` and
    /// callers do not compare such keys.
    func roundTrip(_ x: [Float], _ f: StorageFormat) -> [Float] {
        guard !f.isPageWise else { return x }
        let c = codec(f)
        let clamped = x.map { min(max($0, -65504), 65504) }
        var row = [UInt8](repeating: 0, count: c.rowByteCount)
        var out = [Float](repeating: 0, count: x.count)
        clamped.withUnsafeBufferPointer { xp in
            row.withUnsafeMutableBytes { rp in
                try! c.encodeReference(xp.baseAddress!, into: rp.baseAddress!)
                out.withUnsafeMutableBufferPointer { c.decodeReference(rp.baseAddress!, into: $0.baseAddress!) }
            }
        }
        return out
    }

    mutating func append(_ id: SequenceID, layer: Int, keys: [Float], values: [Float]) {
        let d = configuration.headDim, h = configuration.kvHeadCount, n = keys.count / (d * h)
        for head in 0..<h {
            for t in 0..<n {
                let o = (head * n + t) * d
                let k = keys[o..<(o + d)].map { Float(Float16($0)) }, v = values[o..<(o + d)].map { Float(Float16($0)) }
                sequences[id]!.streams[layer][head][sequences[id]!.next[layer] + Int32(t)] = Token(tier: .fp16, key: k, value: v)
            }
        }
        sequences[id]!.next[layer] += Int32(n)
    }

    mutating func apply(_ plan: RetentionPlan, to id: SequenceID) {
        for sp in plan.streams {
            for m in sp.moves {
                let old = sequences[id]!.streams[sp.layer][sp.kvHead][m.position]!
                guard m.tier != old.tier else { continue }
                if m.tier == .dropped {
                    sequences[id]!.streams[sp.layer][sp.kvHead][m.position] = nil
                } else {
                    sequences[id]!.streams[sp.layer][sp.kvHead][m.position] = Token(
                        tier: m.tier, key: roundTrip(old.key, configuration.tierFormats.keyFormat(m.tier)),
                        value: roundTrip(old.value, configuration.tierFormats.valueFormat(m.tier)))
                }
            }
        }
    }

    /// Exact bytes of one sequence by the memory formula: every row-wise tier packs its tokens into
    /// ⌈tokens / capacity⌉ pages.
    func byteCount(_ id: SequenceID) -> Int {
        let c = configuration
        var total = 0
        for layer in sequences[id]!.streams {
            for stream in layer {
                for tier in Tier.stored {
                    let n = stream.values.filter { $0.tier == tier }.count
                    let layout = PageLayout(keyFormat: c.tierFormats.keyFormat(tier), valueFormat: c.tierFormats.valueFormat(tier),
                                            headDim: c.headDim, capacity: c.pageCapacity)
                    total += (n + c.pageCapacity - 1) / c.pageCapacity * layout.byteCount
                }
            }
        }
        return total
    }
}

/// Distinct live pages reachable from the store's sequences.
func livePages(_ store: KVStore) -> (count: Int, bytes: Int) {
    var seen = Set<ObjectIdentifier>(), bytes = 0
    store.state.withLock { s in
        for (_, seq) in s.sequences {
            for layer in seq.layers {
                for stream in layer.streams {
                    for tier in stream.tiers {
                        for page in tier.pages + (tier.staging.map { [$0] } ?? []) where seen.insert(ObjectIdentifier(page)).inserted {
                            bytes += page.layout.byteCount
                        }
                    }
                }
            }
        }
    }
    return (seen.count, bytes)
}

let rowWiseFormats: [StorageFormat] = [.fp16, .int8, .int4, .int2, .grouped(.int8, groupSize: 32), .grouped(.int4, groupSize: 64)]

func randomConfiguration(using g: inout SeededGenerator, channelwiseKeys: Bool = false) -> KVStoreConfiguration {
    let kv = [1, 2, 3].randomElement(using: &g)!, group = [1, 2, 3].randomElement(using: &g)!
    var keys: [Tier: StorageFormat] = [.fp16: .fp16], values: [Tier: StorageFormat] = [.fp16: .fp16]
    for t in [Tier.int8, .int4, .int2] {
        keys[t] = channelwiseKeys ? .channelwise([CodeWidth.int8, .int4, .int2].randomElement(using: &g)!) : rowWiseFormats.randomElement(using: &g)!
        values[t] = rowWiseFormats.randomElement(using: &g)!
    }
    return KVStoreConfiguration(
        layerCount: Int.random(in: 1...2, using: &g), queryHeadCount: kv * group, kvHeadCount: kv,
        headDim: [1, 7, 8, 9, 16, 33, 64].randomElement(using: &g)!, pageCapacity: [1, 2, 3, 8, 16].randomElement(using: &g)!,
        tierFormats: TierFormats(keys: keys, values: values))
}

func randomRows(_ count: Int, using g: inout SeededGenerator) -> [Float] {
    let sigma = Float.random(in: 0.1...4, using: &g)
    return (0..<count).map { _ in Float(g.nextGaussian()) * sigma }
}

/// A random valid plan over the sequence's streams (moves down only, any subset).
func randomPlan(_ model: ReferenceStore, _ id: SequenceID, using g: inout SeededGenerator) -> RetentionPlan {
    var plan = RetentionPlan()
    let seq = model.sequences[id]!
    for layer in seq.streams.indices {
        for head in seq.streams[layer].indices where Bool.random(using: &g) {
            var moves = [StreamPlan.Move]()
            for (p, t) in seq.streams[layer][head].sorted(by: { $0.key < $1.key }) where Double.random(in: 0..<1, using: &g) < 0.4 {
                let tier = Tier(rawValue: Int.random(in: t.tier.rawValue...Tier.dropped.rawValue, using: &g))!
                moves.append(.init(position: p, tier: tier))
            }
            moves.shuffle(using: &g)
            plan.streams.append(StreamPlan(layer: layer, kvHead: head, moves: moves))
        }
    }
    return plan
}

@Suite struct StoreModelTests {
    /// Checks rows, attention, bytes and pages of every live sequence against the model.
    static func check(_ store: KVStore, _ model: ReferenceStore, _ g: inout SeededGenerator, _ context: String) {
        let c = store.configuration, d = c.headDim
        for (id, seq) in model.sequences {
            #expect(store.byteCount(of: id) == model.byteCount(id), "\(context): bytes of \(id)")
            let layer = Int.random(in: 0..<c.layerCount, using: &g)
            var visibleRows = [[Float]](), allKeys = [[Float]](), allValues = [[Float]](), allPositions = [[Int32]]()
            for head in 0..<c.kvHeadCount {
                let rows = store.rows(id, layer: layer, kvHead: head)
                let expected = seq.streams[layer][head].sorted { $0.key < $1.key }
                #expect(rows.positions == expected.map(\.key), "\(context): positions of \(id) layer \(layer) head \(head)")
                guard rows.positions == expected.map(\.key) else { return }
                #expect(rows.tiers == expected.map(\.value.tier), "\(context): tiers")
                let keys = expected.flatMap(\.value.key), values = expected.flatMap(\.value.value)
                #expect(rows.keys.map(\.bitPattern) == keys.map(\.bitPattern), "\(context): keys of head \(head)")
                #expect(rows.values.map(\.bitPattern) == values.map(\.bitPattern), "\(context): values of head \(head)")
                allKeys.append(keys)
                allValues.append(values)
                allPositions.append(expected.map(\.key))
                let counts = store.tokenCounts(of: id, layer: layer, kvHead: head)
                for t in Tier.stored { #expect(counts[t] == expected.filter { $0.value.tier == t }.count, "\(context): tokens in \(t)") }
                visibleRows.append([])
            }
            // Attention: 1–3 queries at the latest positions (or arbitrary ones).
            let nq = Int.random(in: 1...3, using: &g)
            let q = randomRows(c.queryHeadCount * nq * d, using: &g)
            let next = seq.next[layer]
            let positions: [Int32] = Bool.random(using: &g) ? (0..<nq).map { next - Int32(nq) + Int32($0) }
                : (0..<nq).map { _ in Int32.random(in: -1...max(next, 0), using: &g) }
            let result = store.attend(id, layer: layer, queries: q, queryCount: nq, queryPositions: positions,
                                      returnWeights: true, threadCount: Int.random(in: 1...3, using: &g))
            for h in 0..<c.queryHeadCount {
                let kv = h / c.groupSize
                let pageCount = store.pageCounts(of: id, layer: layer, kvHead: kv).values.reduce(0, +)
                for i in 0..<nq {
                    let qrow = Array(q[((h * nq + i) * d)..<((h * nq + i + 1) * d)])
                    let ref = ReferenceAttention(q: qrow, keys: allKeys[kv], values: allValues[kv],
                                                 visible: allPositions[kv].map { $0 <= positions[i] }, scale: c.effectiveAttentionScale,
                                                 pageCount: pageCount)
                    let o = Array(result.output[((h * nq + i) * d)..<((h * nq + i + 1) * d)])
                    for e in 0..<d {
                        #expect(abs(Double(o[e]) - ref.output[e]) <= ref.bound[e] + 1e-30,
                                "\(context): attend head \(h) query \(i) element \(e): \(o[e]) vs \(ref.output[e]) bound \(ref.bound[e])")
                    }
                    let w = result.weights![kv].row(groupHead: h % c.groupSize, query: i)
                    for (j, x) in w.enumerated() {
                        #expect(abs(Double(x) - ref.weights[j]) <= 1e-5 * max(1, ref.weights[j] * 10), "\(context): weight \(j)")
                    }
                }
            }
        }
        let live = livePages(store)
        #expect(live.count == store.pool.pagesInUse && live.bytes == store.byteCount, "\(context): page leak or miscount")
    }

    /// Thousands of random operations on random shapes, checked after every step.
    @Test func randomOperationSequencesMatchTheModel() throws {
        var operations = 0
        try forEachSeededCase(120, base: 3000) { g in
            let config = randomConfiguration(using: &g)
            let store = try KVStore(config)
            var model = ReferenceStore(configuration: config)
            let context = "seed \(g.seed) config kv \(config.kvHeadCount)×\(config.groupSize) d \(config.headDim) P \(config.pageCapacity) formats \(config.tierFormats.keys.sorted { $0.key < $1.key }.map(\.value)) / \(config.tierFormats.values.sorted { $0.key < $1.key }.map(\.value))"
            for step in 0..<25 {
                operations += 1
                let live = model.sequences.keys.sorted()
                switch Int.random(in: 0..<10, using: &g) {
                case 0 where live.count < 4, _ where live.isEmpty:
                    let id = store.addSequence()
                    model.sequences[id] = .init(streams: Array(repeating: Array(repeating: [:], count: config.kvHeadCount), count: config.layerCount),
                                                next: Array(repeating: 0, count: config.layerCount))
                case 1 where live.count < 4:
                    let source = live.randomElement(using: &g)!
                    let id = store.fork(source)
                    model.sequences[id] = model.sequences[source]
                case 2 where live.count > 1:
                    let id = live.randomElement(using: &g)!
                    store.removeSequence(id)
                    model.sequences[id] = nil
                case 3, 4, 5:
                    let id = live.randomElement(using: &g)!
                    let layer = Int.random(in: 0..<config.layerCount, using: &g)
                    let n = [0, 1, 1, 2, 5, 17, 40].randomElement(using: &g)!
                    let k = randomRows(config.kvHeadCount * n * config.headDim, using: &g)
                    let v = randomRows(config.kvHeadCount * n * config.headDim, using: &g)
                    try store.append(id, layer: layer, keys: k, values: v)
                    model.append(id, layer: layer, keys: k, values: v)
                default:
                    let id = live.randomElement(using: &g)!
                    let plan = randomPlan(model, id, using: &g)
                    try store.apply(plan, to: id)
                    model.apply(plan, to: id)
                }
                Self.check(store, model, &g, "\(context) step \(step)")
            }
            for id in model.sequences.keys { store.removeSequence(id) }
            #expect(store.byteCount == 0 && store.pool.pagesInUse == 0, "\(context): pages leaked after removing every sequence")
        }
        #expect(operations >= 3000)
    }
}
