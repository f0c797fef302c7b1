import TestSupport
import KVQuantization
import KVSelection
@testable import KVStore

// The reference model and random generators of the model-based tests; no `Testing` here, so the
// API fuzz target (Tests/Fuzz) compiles this file too.

/// The plain model the store is checked against: per stream, a dictionary of FP32 rows (exactly the
/// decoded values the store must return) and tiers.
///
/// Tiers the configuration rotates (`rotatesKeys(layer:)`, `rotatesValues(layer:)`) are modelled in
/// rotated coordinates (`storedKey`, `storedValue`: what the tier holds, decoded) with the scalar
/// twins of the rotation: a move into such a tier rotates, and the reader's rows (`key`, `value`)
/// are the stored ones un-rotated.
struct ReferenceStore {
    struct Token {
        var tier: Tier
        /// What the row reader returns.
        var key: [Float], value: [Float]
        /// What the tier holds, decoded (rotated in rotated tiers).
        var storedKey: [Float], storedValue: [Float]

        init(tier: Tier, key: [Float], value: [Float]) {
            self.tier = tier
            self.key = key
            self.value = value
            storedKey = key
            storedValue = value
        }
    }
    struct Sequence {
        var streams: [[[Int32: Token]]]  // [layer][kvHead]
        var next: [Int32]
    }
    let configuration: KVStoreConfiguration
    var sequences: [SequenceID: Sequence] = [:]

    /// True if every format is row-wise, so the model predicts every decoded value.
    var modelsValues: Bool {
        (0..<configuration.layerCount).allSatisfy { l in Tier.stored.allSatisfy { !configuration.tierFormats(layer: l).keyFormat($0).isPageWise } }
    }

    func codec(_ f: StorageFormat) -> RowCodec { try! RowCodec(f, headDim: configuration.headDim) }

    /// What storing `x` in format `f` gives back, computed with the scalar reference kernels.
    /// Page-wise (channelwise) formats depend on a page's other tokens and are not modelled: their
    /// values pass through unchanged, and only positions, tiers and bytes of such tiers are exact
    /// (`modelsValues` is false).
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

    /// The rotation tier `tier` of `layer` keeps keys or values under (nil: unrotated).
    func rotation(layer: Int, tier: Tier, values: Bool) -> HadamardRotation? {
        let c = configuration
        guard tier != .fp16, values ? c.rotatesValues(layer: layer) : c.rotatesKeys(layer: layer) else { return nil }
        return c.rotation.rotation(layer: layer, values: values, headDim: c.headDim)
    }

    /// For tokens in `tiers` of `layer`: which have rotated keys and values, and the values'
    /// rotation (`ReferenceAttention`'s `rotatedKeys`, `rotatedValues`, `valueRotation`).
    func rotatedRows(_ tiers: [Tier], layer: Int) -> (keys: [Bool], values: [Bool], valueRotation: HadamardRotation?) {
        (tiers.map { rotation(layer: layer, tier: $0, values: false) != nil }, tiers.map { rotation(layer: layer, tier: $0, values: true) != nil },
         rotation(layer: layer, tier: .int8, values: true))
    }

    /// `x` (decoded in tier `from`'s coordinates) in tier `to`'s, by the scalar twins.
    func convert(_ x: [Float], layer: Int, values: Bool, from: Tier, to: Tier) -> [Float] {
        let a = rotation(layer: layer, tier: from, values: values), b = rotation(layer: layer, tier: to, values: values)
        guard a != b else { return x }
        var y = x
        y.withUnsafeMutableBufferPointer { p in
            a?.unrotateReference(p.baseAddress!)
            b?.rotateReference(p.baseAddress!)
        }
        return y
    }

    mutating func apply(_ plan: RetentionPlan, to id: SequenceID) {
        for sp in plan.streams {
            for m in sp.moves {
                let old = sequences[id]!.streams[sp.layer][sp.kvHead][m.position]!
                guard m.tier != old.tier else { continue }
                if m.tier == .dropped {
                    sequences[id]!.streams[sp.layer][sp.kvHead][m.position] = nil
                } else {
                    let l = sp.layer, formats = configuration.tierFormats(layer: l)
                    let k = roundTrip(convert(old.storedKey, layer: l, values: false, from: old.tier, to: m.tier), formats.keyFormat(m.tier))
                    let v = roundTrip(convert(old.storedValue, layer: l, values: true, from: old.tier, to: m.tier), formats.valueFormat(m.tier))
                    var t = Token(tier: m.tier, key: convert(k, layer: l, values: false, from: m.tier, to: .fp16),
                                  value: convert(v, layer: l, values: true, from: m.tier, to: .fp16))
                    t.storedKey = k
                    t.storedValue = v
                    sequences[id]!.streams[sp.layer][sp.kvHead][m.position] = t
                }
            }
        }
    }

    /// Exact bytes of one sequence by the memory formula: every row-wise tier packs its tokens in
    /// position order greedily into pages of its capacity, a page closing early when the next
    /// token lies more than 65,535 positions past its first.
    func byteCount(_ id: SequenceID, layers: Range<Int>? = nil) -> Int {
        let c = configuration
        var total = 0
        for (l, layer) in sequences[id]!.streams.enumerated() where layers?.contains(l) ?? true {
            let formats = c.tierFormats(layer: l)
            for stream in layer {
                for tier in Tier.stored {
                    let positions = stream.filter { $0.value.tier == tier }.keys.sorted()
                    let capacity = c.pageCapacity(tier, layer: l)
                    let layout = PageLayout(keyFormat: formats.keyFormat(tier), valueFormat: formats.valueFormat(tier),
                                            headDim: c.headDim, capacity: capacity)
                    total += Self.greedyPageCount(positions, capacity: capacity) * layout.byteCount
                }
            }
        }
        return total
    }

    /// Pages of a greedy packing of ascending `positions`: a page takes the next position while it
    /// has a free slot and the position is at most 65,535 past the page's first.
    static func greedyPageCount(_ positions: [Int32], capacity: Int) -> Int {
        var pages = 0, count = 0, first: Int32 = 0
        for p in positions {
            if count == 0 || count == capacity || Int(p) - Int(first) > 65535 {
                pages += 1
                count = 0
                first = p
            }
            count += 1
        }
        return pages
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

let rowWiseFormats: [StorageFormat] = [.fp16, .int8, .int4, .int2, .grouped(.int8, groupSize: 32), .grouped(.int4, groupSize: 64),
                                       .grouped(.int3, groupSize: 32), .grouped(.int3, groupSize: 8), .lloydMax(.int2), .lloydMax(.int3), .lloydMax(.int4)]

/// Random tier formats: FP16 on top, row-wise (or, with `channelwiseKeys`, per-channel) keys and
/// row-wise values below; half the time some tiers get their own page capacity.
func randomTierFormats<G: RandomNumberGenerator>(using g: inout G, channelwiseKeys: Bool = false) -> TierFormats {
    var keys: [Tier: StorageFormat] = [.fp16: .fp16], values: [Tier: StorageFormat] = [.fp16: .fp16]
    for t in [Tier.int8, .int4, .int2] {
        keys[t] = channelwiseKeys ? .channelwise(CodeWidth.allCases.randomElement(using: &g)!) : rowWiseFormats.randomElement(using: &g)!
        values[t] = rowWiseFormats.randomElement(using: &g)!
    }
    var capacities = [Tier: Int]()
    if Bool.random(using: &g) {
        for t in Tier.stored where Bool.random(using: &g) { capacities[t] = [1, 2, 4, 5, 8, 16, 32].randomElement(using: &g)! }
    }
    return TierFormats(keys: keys, values: values, pageCapacities: capacities)
}

/// A random valid configuration: 1–2 layers, GQA group 1–3, odd and even head dims, small pages
/// (per tier sometimes), sometimes per-layer tier formats, and rotation of none, some or all
/// layers' keys and values (head dims that are not powers of two ignore it).
func randomConfiguration<G: RandomNumberGenerator>(using g: inout G, channelwiseKeys: Bool = false) -> KVStoreConfiguration {
    let kv = [1, 2, 3].randomElement(using: &g)!, group = [1, 2, 3].randomElement(using: &g)!
    let layerCount = Int.random(in: 1...2, using: &g)
    let formats = randomTierFormats(using: &g, channelwiseKeys: channelwiseKeys)
    let perLayer: [TierFormats]? = Int.random(in: 0..<4, using: &g) == 0
        ? (0..<layerCount).map { _ in randomTierFormats(using: &g, channelwiseKeys: channelwiseKeys) } : nil
    func layers() -> RotationSettings.Layers {
        switch Int.random(in: 0..<4, using: &g) {
        case 0, 1: .none
        case 2: .all
        default: .only([Int.random(in: 0..<layerCount, using: &g)])
        }
    }
    let rotation = RotationSettings(keys: layers(), values: layers(), seed: UInt64.random(in: 0...3, using: &g))
    return KVStoreConfiguration(
        layerCount: layerCount, queryHeadCount: kv * group, kvHeadCount: kv,
        headDim: [1, 7, 8, 9, 16, 33, 64].randomElement(using: &g)!, pageCapacity: [1, 2, 3, 8, 16].randomElement(using: &g)!,
        tierFormats: formats, layerTierFormats: perLayer, rotation: rotation)
}

/// A random valid plan over the sequence's streams (moves down only, any subset).
func randomPlan<G: RandomNumberGenerator>(_ model: ReferenceStore, _ id: SequenceID, using g: inout G) -> RetentionPlan {
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

extension ReferenceStore {
    /// Models `store.addSequence()` having returned `id`: an empty sequence.
    mutating func addEmptySequence(_ id: SequenceID) {
        sequences[id] = .init(streams: Array(repeating: Array(repeating: [:], count: configuration.kvHeadCount), count: configuration.layerCount),
                              next: Array(repeating: 0, count: configuration.layerCount))
    }
}

/// One random operation applied to the store and its model alike: add or fork a sequence (while
/// fewer than `maxSequences` live), remove one (while more than one live), append one of
/// `appendSizes` tokens to a random layer, or apply a random valid plan. With no live sequence it
/// adds one.
func randomOperation(_ store: KVStore, _ model: inout ReferenceStore, maxSequences: Int, appendSizes: [Int],
                     using g: inout SeededGenerator) throws {
    let config = store.configuration
    let live = model.sequences.keys.sorted()
    switch Int.random(in: 0..<10, using: &g) {
    case 0 where live.count < maxSequences, _ where live.isEmpty:
        model.addEmptySequence(store.addSequence())
    case 1 where live.count < maxSequences:
        let source = live.randomElement(using: &g)!
        model.sequences[store.fork(source)] = model.sequences[source]
    case 2 where live.count > 1:
        let id = live.randomElement(using: &g)!
        store.removeSequence(id)
        model.sequences[id] = nil
    case 3, 4, 5:
        let id = live.randomElement(using: &g)!, layer = Int.random(in: 0..<config.layerCount, using: &g)
        let n = appendSizes.randomElement(using: &g)!
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
}
