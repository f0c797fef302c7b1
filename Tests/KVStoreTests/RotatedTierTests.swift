import Foundation
import Testing
import TestSupport
import KVQuantization
import KVSelection
@testable import KVStore

/// The new formats (INT3, Lloyd–Max) and the rotation of quantised tiers inside the store: the read
/// path against FP64 attention over the decoded rows across thread counts, the rotation invisible to
/// callers, head dims without a rotation, and snapshots.
@Suite struct RotatedTierTests {
    /// Per-channel INT8/INT4/INT3 keys, INT8 and Lloyd–Max 3/2 values.
    static let channelKeysLloydMaxValues = TierFormats(
        keys: [.fp16: .fp16, .int8: .channelwise(.int8), .int4: .channelwise(.int4), .int2: .channelwise(.int3)],
        values: [.fp16: .fp16, .int8: .int8, .int4: .lloydMax(.int3), .int2: .lloydMax(.int2)])
    /// Row-wise new formats for keys and values: Lloyd–Max 4/2, grouped INT3.
    static let rowWiseNewFormats = TierFormats(
        keys: [.fp16: .fp16, .int8: .lloydMax(.int4), .int4: .grouped(.int3, groupSize: 32), .int2: .lloydMax(.int2)],
        values: [.fp16: .fp16, .int8: .lloydMax(.int4), .int4: .grouped(.int3, groupSize: 32), .int2: .lloydMax(.int3)])

    static let rotations: [(String, RotationSettings)] = [
        ("none", .none), ("values", RotationSettings(values: .all, seed: 3)), ("keys+values", RotationSettings(keys: .all, values: .all, seed: 4)),
    ]

    /// A store of one layer with `n` random tokens moved to random tiers (staging pages in every
    /// per-channel tier), then a few FP16 decode tokens appended.
    static func mixedStore(_ c: KVStoreConfiguration, tokens n: Int, using g: inout SeededGenerator) throws -> (KVStore, SequenceID) {
        let store = try KVStore(c)
        let id = store.addSequence()
        let d = c.headDim, kv = c.kvHeadCount
        try store.append(id, layer: 0, keys: randomRows(kv * n * d, using: &g), values: randomRows(kv * n * d, using: &g))
        let plan = RetentionPlan(streams: (0..<kv).map { h in
            StreamPlan(layer: 0, kvHead: h, moves: (0..<Int32(n - 5)).compactMap { p in
                let t = [Tier.fp16, .int8, .int4, .int2, .int4, .int2].randomElement(using: &g)!
                return t == .fp16 ? nil : StreamPlan.Move(position: p, tier: t)
            })
        })
        try store.apply(plan, to: id)
        try store.append(id, layer: 0, keys: randomRows(kv * 3 * d, using: &g), values: randomRows(kv * 3 * d, using: &g))
        return (store, id)
    }

    @Test(arguments: [(kv: 2, group: 1, d: 128), (kv: 2, group: 4, d: 128), (kv: 3, group: 3, d: 64), (kv: 1, group: 2, d: 96)])
    func attentionAcrossThreadCountsWithinBound(_ shape: (kv: Int, group: Int, d: Int)) throws {
        for (formatsName, formats) in [("channel keys, LM values", Self.channelKeysLloydMaxValues), ("row-wise new formats", Self.rowWiseNewFormats)] {
            for (rotationName, rotation) in Self.rotations {
                var g = SeededGenerator(seed: UInt64(8000 + shape.kv * 100 + shape.group * 10 + shape.d) &+ UInt64(formatsName.count * 7 + rotationName.count))
                let c = KVStoreConfiguration(layerCount: 1, queryHeadCount: shape.kv * shape.group, kvHeadCount: shape.kv, headDim: shape.d,
                                             tierFormats: formats, rotation: rotation)
                let (store, id) = try Self.mixedStore(c, tokens: 300, using: &g)
                let n = store.nextPosition(of: id, layer: 0)
                for queryCount in [1, 3] {
                    let q = randomRows(c.queryHeadCount * queryCount * shape.d, using: &g)
                    let positions: [Int32] = queryCount == 1 ? [Int32(n - 1)] : [40, 170, Int32(n - 1)]
                    let context = "seed \(g.seed) \(shape) \(formatsName) rotation \(rotationName) queries \(queryCount)"
                    let one = store.attend(id, layer: 0, queries: q, queryCount: queryCount, queryPositions: positions, threadCount: 1)
                    for threads in [2, 3] {
                        let other = store.attend(id, layer: 0, queries: q, queryCount: queryCount, queryPositions: positions, threadCount: threads)
                        #expect(other.output.map(\.bitPattern) == one.output.map(\.bitPattern), "\(context) threads \(threads)")
                    }
                    store.expectAttentionWithinBound(id, layer: 0, queries: q, queryCount: queryCount, positions: positions,
                                                     output: one.output, context)
                }
            }
        }
    }

    /// With near-lossless tiers (per-channel INT8 keys, INT8 values), a rotated store reads back the
    /// same rows and attention as an unrotated one up to quantisation error; FP16 tokens are the same
    /// bits.
    @Test func rotationIsInvisibleToCallers() throws {
        let formats = TierFormats(keys: [.fp16: .fp16, .int8: .channelwise(.int8), .int4: .int8, .int2: .int8],
                                  values: [.fp16: .fp16, .int8: .int8, .int4: .int8, .int2: .int8])
        for d in [64, 128] {
            var stores = [(KVStore, SequenceID)]()
            for rotation in [RotationSettings.none, RotationSettings(keys: .all, values: .all, seed: 11)] {
                var g = SeededGenerator(seed: 8100 + UInt64(d))
                let c = KVStoreConfiguration(layerCount: 1, queryHeadCount: 4, kvHeadCount: 2, headDim: d, tierFormats: formats, rotation: rotation)
                stores.append(try Self.mixedStore(c, tokens: 200, using: &g))
            }
            let (plain, a) = stores[0], (rotated, b) = stores[1]
            #expect(rotated.configuration.rotatesKeys(layer: 0) && rotated.configuration.rotatesValues(layer: 0))
            for h in 0..<2 {
                let x = plain.rows(a, layer: 0, kvHead: h), y = rotated.rows(b, layer: 0, kvHead: h)
                #expect(x.positions == y.positions && x.tiers == y.tiers)
                for t in 0..<x.count {
                    let kx = Array(x.keys[(t * d)..<((t + 1) * d)]), ky = Array(y.keys[(t * d)..<((t + 1) * d)])
                    let vx = Array(x.values[(t * d)..<((t + 1) * d)]), vy = Array(y.values[(t * d)..<((t + 1) * d)])
                    if x.tiers[t] == .fp16 {
                        #expect(kx == ky && vx == vy, "d \(d) head \(h) token \(t): FP16 rows must be untouched")
                    } else {
                        #expect(relativeError(ky, kx.map(Double.init)) < 0.02 && relativeError(vy, vx.map(Double.init)) < 0.02, "d \(d) head \(h) token \(t)")
                    }
                }
            }
            // Small queries (a flat softmax), so the output differs by about the rows' error; a peaked
            // one amplifies score errors, which the bound test above covers.
            var g = SeededGenerator(seed: 8200)
            let q = randomRows(4 * d, using: &g).map { $0 * 0.05 }
            let o1 = plain.attend(a, layer: 0, queries: q).output, o2 = rotated.attend(b, layer: 0, queries: q).output
            #expect(relativeError(o2, o1.map(Double.init)) < 0.01, "d \(d): attention")
        }
    }

    /// A head dim that is not a power of two has no rotation: the configuration says so and the
    /// store is bit for bit the unrotated one.
    @Test func headDimsWithoutARotationStayUnrotated() throws {
        for d in [7, 9, 63, 96] {
            var images = [StoreImage]()
            var outputs = [[UInt32]]()
            for rotation in [RotationSettings.none, RotationSettings(keys: .all, values: .all, seed: 5)] {
                var g = SeededGenerator(seed: 8300 + UInt64(d))
                let c = KVStoreConfiguration(layerCount: 1, queryHeadCount: 2, kvHeadCount: 1, headDim: d, pageCapacity: 8,
                                             tierFormats: Self.channelKeysLloydMaxValues, rotation: rotation)
                #expect(!c.isRotationSupported && !c.rotatesKeys(layer: 0) && !c.rotatesValues(layer: 0))
                let (store, id) = try Self.mixedStore(c, tokens: 40, using: &g)
                images.append(StoreImage(store))
                outputs.append(store.attend(id, layer: 0, queries: randomRows(2 * d, using: &g)).output.map(\.bitPattern))
            }
            #expect(images[0] == images[1] && outputs[0] == outputs[1], "d \(d)")
        }
        let c = KVStoreConfiguration(layerCount: 2, queryHeadCount: 1, kvHeadCount: 1, headDim: 64, rotation: RotationSettings(keys: .only([1])))
        #expect(c.isRotationSupported && !c.rotatesKeys(layer: 0) && c.rotatesKeys(layer: 1) && !c.rotatesValues(layer: 1))
        var bad = c
        bad.rotation.values = .only([2])
        #expect(throws: KVStoreConfigurationError.invalidField("rotation.values", "names layer 2, outside 0..<2")) { try bad.validate() }
    }

    /// What rotation is for: Lloyd–Max codes on vectors with a few outlier channels are far more
    /// accurate rotated, read back through the store.
    @Test func rotationHelpsLloydMaxOnOutlierChannels() throws {
        let formats = TierFormats(keys: [.fp16: .fp16, .int8: .lloydMax(.int3), .int4: .lloydMax(.int3), .int2: .lloydMax(.int3)],
                                  values: [.fp16: .fp16, .int8: .lloydMax(.int3), .int4: .lloydMax(.int3), .int2: .lloydMax(.int3)])
        let d = 64, n = 64
        var g = SeededGenerator(seed: 8400)
        let x = (0..<n).flatMap { _ in RowFamily.outlierChannels.row(d, using: &g) }
        var errors = [Double](), valueErrors = [Double]()
        for rotation in [RotationSettings.none, RotationSettings(keys: .all, values: .all)] {
            let store = try KVStore(KVStoreConfiguration(layerCount: 1, queryHeadCount: 1, kvHeadCount: 1, headDim: d, tierFormats: formats, rotation: rotation))
            let id = store.addSequence()
            try store.append(id, layer: 0, keys: x, values: x)
            try store.apply(.uniform(.int4, positions: 0..<Int32(n), layerCount: 1, kvHeadCount: 1), to: id)
            let r = store.rows(id, layer: 0, kvHead: 0)
            errors.append(relativeError(r.keys, x.map { Double(Float(Float16($0))) }))
            valueErrors.append(relativeError(r.values, x.map { Double(Float(Float16($0))) }))
        }
        #expect(errors[1] < 0.3 && errors[1] < 0.5 * errors[0], "keys: rotated \(errors[1]) vs unrotated \(errors[0])")
        #expect(valueErrors[1] < 0.3 && valueErrors[1] < 0.5 * valueErrors[0], "values: rotated \(valueErrors[1]) vs unrotated \(valueErrors[0])")
    }

    static let snapshotConfig = KVStoreConfiguration(layerCount: 2, queryHeadCount: 4, kvHeadCount: 2, headDim: 16, pageCapacity: 4,
                                                     tierFormats: rowWiseNewFormats,
                                                     rotation: RotationSettings(keys: .only([1]), values: .all, seed: 7))

    /// Stores with the new formats and rotation save and restore bit for bit (rows, attention, the
    /// snapshot's own bytes); a store with other rotations refuses the snapshot, naming the field;
    /// a version 2 file (no rotation in CONF) still loads.
    @Test func snapshotsRoundTripNewFormatsAndRotation() throws {
        var g = SeededGenerator(seed: 8500)
        for config in [Self.snapshotConfig, { var c = Self.snapshotConfig; c.tierFormats = Self.channelKeysLloydMaxValues; return c }()] {
            let (store, _) = try randomPopulatedStore(config, steps: 30, using: &g)
            let bytes = store.snapshotBytes()
            let restored = try KVStore.restoring(bytes: bytes)
            #expect(restored.configuration == config)
            #expect(StoreImage(restored) == StoreImage(store))
            #expect(restored.snapshotBytes() == bytes)
            for id in store.sequences {
                for layer in 0..<2 {
                    let q = randomRows(4 * 16, using: &g)
                    #expect(restored.attend(id, layer: layer, queries: q).output.map(\.bitPattern) == store.attend(id, layer: layer, queries: q).output.map(\.bitPattern))
                }
            }
            var other = config
            other.rotation.seed = 8
            #expect(throws: SnapshotError.configurationMismatch(field: "rotation.seed", store: "8", snapshot: "7")) { try KVStore(other).loadSnapshot(bytes: bytes) }
            other = config
            other.rotation.values = .only([1])
            #expect(throws: SnapshotError.configurationMismatch(field: "rotation.values[layer 0]", store: "false", snapshot: "true")) {
                try KVStore(other).loadSnapshot(bytes: bytes)
            }
            #expect(throws: Never.self) { try KVStore(config).loadSnapshot(bytes: bytes) }
        }
        // Version 2 (no rotation in CONF): the fixture written by the version 2 code loads unrotated
        // (its conversion is checked in SnapshotTests).
        let (v2, _) = try SnapshotTests.fixture("snapshot-v2/mixed-tiers-forks")
        #expect(try KVStore.restoring(bytes: v2).configuration.rotation == .none)
        // A rotation block naming a layer out of range is malformed.
        var crafted = SnapshotSections(try KVStore(Self.snapshotConfig).snapshotBytes())
        let conf = crafted.payloads[0]
        // … keys: kind 2, count 1, layer 1 → layer 5.
        let keyLayer = conf.count - 5 - 4
        crafted.payloads[0].replaceSubrange(keyLayer..<(keyLayer + 4), with: [5, 0, 0, 0])
        #expect(throws: SnapshotError.self) { try KVStore.restoring(bytes: crafted.bytes) }
    }
}
