import Foundation
import Testing
import TestSupport
import KVQuantization
import KVSelection
import KVStore
@testable import KVCompression

/// Key channel statistics in a profile: the names `mixB/channel`, widths per layer from the
/// statistics, the JSON round trip, typed errors for inconsistent statistics, and allocations that
/// take mixed keys where they are measured to be better, giving store configurations that work.
@Suite struct KeyChannelStatisticsTests {
    /// Statistics for `layers` layers of `heads` KV heads × 64 channels: one outlier channel per
    /// (layer, head) with a large range and query energy, the rest seeded.
    static func statistics(layers: Int, heads: Int, seed: UInt64) -> KeyChannelStatistics {
        var g = SeededGenerator(seed: seed)
        func table(_ outlier: Double) -> [[[Double]]] {
            (0..<layers).map { l in (0..<heads).map { h in (0..<64).map { c in
                c == (7 * l + 13 * h) % 64 ? outlier : Double.random(in: 0.1...2, using: &g)
            } } }
        }
        return KeyChannelStatistics(pageCapacity: 64, skippedTokenCount: 4, tokenCount: 1024, queryEnergy: table(40), rangeRMS: table(30))
    }

    static func profile(seed: UInt64, layers: Int = 4) -> SensitivityProfile {
        var p = SensitivityProfileTests.profile(layers: layers, seed: seed)
        let int4 = p.keys[1].kld
        p.keys.append(.init(format: "mix4/channel", kld: int4.map { $0 / 2 }))       // as measured on SmolLM2: about half int4's cost
        p.keys.append(.init(format: "mix3.5/channel", kld: int4.map { $0 * 0.7 }))
        p.keyChannels = statistics(layers: layers, heads: 3, seed: seed)
        return p
    }

    @Test func mixedNames() {
        #expect(KeyChannelStatistics.mixedBits(named: "mix4/channel") == 4)
        #expect(KeyChannelStatistics.mixedBits(named: "mix3.5/channel") == 3.5)
        for bad in ["mix/channel", "int4/channel", "mix4", "mix4/g32", "mixnan/channel", "mix4/channelx"] {
            #expect(KeyChannelStatistics.mixedBits(named: bad) == nil, "\(bad)")
        }
        #expect(ChannelWidths.name(averageBits: 3.5) == "mix3.5/channel")
        #expect(ChannelWidths.name(averageBits: 4) == "mix4/channel")
        #expect(ChannelWidths.name(averageBits: 3.25) == "mix3.25/channel")
    }

    @Test func widthsPerLayerFollowTheStatistics() throws {
        let k = Self.statistics(layers: 3, heads: 2, seed: 7)
        for l in 0..<3 {
            let w = try #require(k.widths(layer: l, averageBits: 3.5))
            #expect(w.rowByteCount == 28 && w.kvHeadCount == 2 && w.headDim == 64)
            #expect(w.description == "mix3.5/channel")
            for h in 0..<2 {
                // The outlier channel (largest range and energy) gets the most bits of its head.
                let outlier = (7 * l + 13 * h) % 64
                #expect(w.widths[h][outlier].bits == w.widths[h].map(\.bits).max(), "layer \(l) head \(h)")
                #expect(ChannelWidths.segmentByteCount(w.widths[h]) <= 28)
            }
            try StorageFormat.mixedChannelwise(w).validate(headDim: 64)
        }
        // Different layers put their outliers in different channels, so their widths differ.
        #expect(k.widths(layer: 0, averageBits: 4) != k.widths(layer: 1, averageBits: 4))
        // Not a whole number of bytes per row, or below 2 bits: no widths.
        #expect(k.widths(layer: 0, averageBits: 3.3) == nil)
        #expect(k.widths(layer: 0, averageBits: 1.5) == nil)
    }

    @Test func profileRoundTripAndResolution() throws {
        let p = Self.profile(seed: 3)
        let back = try SensitivityProfile(json: p.json())
        #expect(back == p)
        for l in 0..<p.layerCount {
            let f = try #require(back.keyFormat(named: "mix4/channel", layer: l))
            guard case .mixedChannelwise(let w) = f else { Issue.record("mix4 resolved to \(f)"); continue }
            #expect(w == p.keyChannels!.widths(layer: l, averageBits: 4))
        }
        #expect(back.keyFormat(named: "int4/channel", layer: 0) == .channelwise(.int4))
        // A profile without statistics cannot resolve mixed names.
        var q = p
        q.keyChannels = nil
        #expect(q.keyFormat(named: "mix4/channel", layer: 0) == nil)
        #expect(throws: SensitivityProfileError.self) { try q.validate() }
    }

    @Test func inconsistentStatisticsAreTypedErrors() throws {
        let good = Self.profile(seed: 4)
        var cases = [(String, SensitivityProfile)]()
        var p = good; p.keyChannels!.queryEnergy.removeLast(); cases.append(("a layer short", p))
        p = good; p.keyChannels!.rangeRMS[1][0].removeLast(); cases.append(("a channel short", p))
        p = good; p.keyChannels!.rangeRMS[2][1][5] = .nan; cases.append(("NaN", p))
        p = good; p.keyChannels!.queryEnergy[0][2][0] = -1; cases.append(("negative", p))
        p = good; p.keyChannels!.rangeRMS = p.keyChannels!.rangeRMS.map { Array($0.prefix(2)) }; cases.append(("heads disagree", p))
        p = good; p.keyChannels!.pageCapacity = 0; cases.append(("page", p))
        p = good; p.keys.append(.init(format: "mix3.3/channel", kld: good.keys[0].kld)); cases.append(("fractional bytes", p))
        for (name, bad) in cases {
            // (NaN cannot be written as JSON: `validate` is what reading a file runs.)
            #expect(throws: SensitivityProfileError.self, "\(name)") { try bad.validate() }
        }
    }

    /// With mixed keys measured at half int4/channel's cost and the same bytes, the allocation never
    /// keeps int4/channel keys, and its per-layer formats make a valid store that takes tokens.
    @Test func allocationTakesMixedKeysAndMakesAStore() throws {
        let p = Self.profile(seed: 5, layers: 6)
        let base = CompressionPreset.named("4x")!.tierFormats(.standard)
        let a = p.allocation(budget: 0.25, base: base, pageCapacity: 64, expectedTokenCount: 1536)
        #expect(!a.keyFormats.contains(.channelwise(.int4)))
        #expect(a.keyFormats.contains { if case .mixedChannelwise = $0 { true } else { false } })
        var c = KVStoreConfiguration(layerCount: 6, queryHeadCount: 9, kvHeadCount: 3, headDim: 64, pageCapacity: 64)
        c.layerTierFormats = a.layerTierFormats(base: base)
        let store = try KVStore(c)
        let id = store.addSequence()
        var g = SeededGenerator(seed: 5)
        let n = 130
        for layer in 0..<6 {
            let keys = (0..<(3 * n * 64)).map { _ in Float.random(in: -4...4, using: &g) }
            try store.append(id, layer: layer, keys: keys, values: keys)
        }
        // Everything but the last two tokens to INT4: two sealed pages of 64 per stream.
        let plan = RetentionPlan(streams: (0..<6).flatMap { l in (0..<3).map { h in
            StreamPlan(layer: l, kvHead: h, moves: (0..<Int32(n - 2)).map { StreamPlan.Move(position: $0, tier: .int4) })
        } })
        try store.apply(plan, to: id)
        for l in 0..<6 {
            #expect(store.tokenTiers(of: id, layer: l, kvHead: 0).positions.count == n)
            var seen = 0
            store.forEachToken(id, layer: l, kvHead: 1) { _, key, _ in
                #expect(key.allSatisfy { $0.isFinite && abs($0) <= 4.1 })
                seen += 1
            }
            #expect(seen == n)
        }
    }

    /// The planners' derived error model costs mixed keys by their average bits, not their widest channel.
    @Test func tierErrorModelUsesTheAverageBits() throws {
        let w = try #require(Self.statistics(layers: 1, heads: 3, seed: 9).widths(layer: 0, averageBits: 3.5))
        #expect(w.widths.joined().contains(.int8))
        func error(_ key: StorageFormat) -> Double {
            var f = TierFormats.standard
            f.keys[.int4] = key
            return TierErrorModel.derived(from: f).relativeError(.int4)
        }
        let mixed = error(.mixedChannelwise(w))
        #expect(error(.channelwise(.int4)) < mixed && mixed < error(.channelwise(.int3)))
    }
}
