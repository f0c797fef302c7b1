import Testing
import TestSupport
import KVQuantization
import KVSelection
import KVStore
@testable import KVCompression

/// The named operating points: names resolve, `configure` changes only the INT4 tier, the page
/// capacity and the value rotation, and each preset keeps its budget at every decode step of a
/// store made from it.
@Suite struct CompressionPresetTests {
    @Test func namesAndOrder() {
        #expect(CompressionPreset.all.map(\.name) == ["2x", "4x", "6x", "8x"])
        #expect(CompressionPreset.named("4x")?.budget == 0.25 && CompressionPreset.named("preset:8x")?.budget == 0.125)
        #expect(CompressionPreset.named("6x")?.budget == 1.0 / 6)
        #expect(CompressionPreset.named("3x") == nil && CompressionPreset.named("preset:") == nil)
        let budgets = CompressionPreset.all.map(\.budget)
        #expect(budgets == budgets.sorted(by: >), "least compression first")
    }

    @Test func configureChangesOnlyTheINT4TierPagesAndRotation() throws {
        let base = KVStoreConfiguration(layerCount: 3, queryHeadCount: 8, kvHeadCount: 2, headDim: 64, pageCapacity: 16, byteLimit: 1 << 30)
        for preset in CompressionPreset.all {
            let c = preset.configure(base)
            try c.validate()
            #expect(c.layerCount == 3 && c.queryHeadCount == 8 && c.kvHeadCount == 2 && c.headDim == 64 && c.byteLimit == 1 << 30)
            #expect(c.pageCapacity == preset.pageCapacity)
            #expect(c.tierFormats.keyFormat(.int4) == preset.int4Key && c.tierFormats.valueFormat(.int4) == preset.int4Value)
            #expect(c.tierFormats.keyFormat(.int2) == base.tierFormats.keyFormat(.int2) && c.tierFormats.valueFormat(.int2) == base.tierFormats.valueFormat(.int2))
            // Protected tokens at INT8: per-token INT8 rows in pages of 16, FP16 (the decode headroom) in pages of 16.
            #expect(preset.protectedTier == .int8)
            #expect(c.tierFormats.keyFormat(.int8) == .int8 && c.tierFormats.valueFormat(.int8) == .int8)
            #expect(c.pageCapacity(.int8, layer: 0) == 16 && c.pageCapacity(.fp16, layer: 0) == 16 && c.pageCapacity(.int4, layer: 0) == preset.pageCapacity)
            #expect(preset.policy().compressionSettings?.regions.tier == .int8)
            // At FP16 the INT8 tier and the page capacities are the base's.
            let f = preset.protecting(at: .fp16), cf = f.configure(base)
            for t in [Tier.int8, .int2] {
                #expect(cf.tierFormats.keyFormat(t) == base.tierFormats.keyFormat(t) && cf.tierFormats.valueFormat(t) == base.tierFormats.valueFormat(t))
            }
            #expect(Tier.stored.allSatisfy { cf.pageCapacity($0, layer: 0) == f.pageCapacity })
            #expect(f.policy().compressionSettings?.regions.tier == .fp16)
            #expect((0..<3).allSatisfy { c.rotatesValues(layer: $0) && !c.rotatesKeys(layer: $0) })
            // A head dim that is not a power of two keeps the formats, unrotated.
            let odd = preset.configure(KVStoreConfiguration(layerCount: 1, queryHeadCount: 2, kvHeadCount: 1, headDim: 48))
            try odd.validate()
            #expect(!odd.rotatesValues(layer: 0))
            // The policy is the plain plan at the preset's budget, re-planned at its interval.
            let p = preset.policy()
            #expect(p.name == "preset:\(preset.name)")
            let s = try #require(p.compressionSettings)
            #expect(s.planner == .plain(topShare: 0.02, tier: .int4) && s.budget == .fraction(preset.budget))
            #expect(s.decodeReplanInterval == preset.decodeReplanInterval && s.policy.usesScores)
        }
    }

    /// A 1,536-token prompt compressed by each preset, then 120 decode steps through its session: every
    /// stream's bytes (whole pages, staging included) stay within the budget of the tokens so far,
    /// the middle is kept at INT4 in the preset's formats, and attention stays finite.
    @Test(arguments: CompressionPreset.all)
    func keepsItsBudgetWhileDecoding(preset: CompressionPreset) throws {
        var g = SeededGenerator(seed: 7)
        let config = preset.configure(KVStoreConfiguration(layerCount: 1, queryHeadCount: 2, kvHeadCount: 2, headDim: 64))
        let store = try KVStore(config)
        let id = store.addSequence()
        let d = config.headDim, prompt = 1536, kv = config.kvHeadCount
        try store.append(id, layer: 0, keys: randomRows(kv * prompt * d, using: &g), values: randomRows(kv * prompt * d, using: &g))
        let window = (prompt - 32)..<prompt
        let observation = ObservationWindow(positions: window.map { Int32($0) }, queries: [randomRows(2 * window.count * d, using: &g)])
        var session = try #require(try preset.policy().apply(to: id, in: store, observation: observation, keepingBudgetDuringDecode: true))
        for h in 0..<kv {
            // INT4 keeps more tokens than the whole budget could hold at FP16.
            #expect((store.tokenCounts(of: id, layer: 0, kvHead: h)[.int4] ?? 0) > Int(preset.budget * Double(prompt)), "seed 7 head \(h): the middle is kept at INT4")
        }
        let fp16Token = 2 * (2 * d) + 4
        for step in 0..<120 {
            try store.append(id, layer: 0, keys: randomRows(kv * d, using: &g), values: randomRows(kv * d, using: &g))
            let result = store.attend(id, layer: 0, queries: randomRows(2 * d, using: &g), returnWeights: true)
            let finite = result.output.allSatisfy { $0.isFinite }
            #expect(finite, "seed 7, \(preset) step \(step): attention is finite")
            session.record(layer: 0, result)
            try session.appended(layer: 0, count: 1)
            let n = store.nextPosition(of: id, layer: 0)
            let budget = Int(preset.budget * Double(n * fp16Token))
            for h in 0..<kv {
                let bytes = store.byteCount(of: id, layer: 0, kvHead: h)
                #expect(bytes <= budget, "seed 7, \(preset) step \(step) head \(h): \(bytes) bytes, budget \(budget)")
            }
        }
    }

    /// A calibrated preset: per-layer INT4 formats from the profile in the store, per-layer budget
    /// factors in the policy, and at every decode step each stream within its layer's budget and the
    /// sequence within the preset's budget of the FP16 bytes (plus one page per tier per stream).
    @Test(arguments: ["4x", "6x"])
    func calibratedKeepsItsBudgetWhileDecoding(name: String) throws {
        let profile = SensitivityProfileTests.profile(layers: 3, seed: 11, sharp: 40)
        let preset = CompressionPreset.named(name)!.calibrated(with: profile, expectedTokenCount: 1024)
        #expect(preset.description == name + "+cal")
        let a = try #require(preset.allocation)
        // 4x at 1,024 tokens keeps everything in the cheapest formats or better; 6x cannot, and
        // shares the preset's own formats' mean cost instead.
        let own = profile.tokenByteCount(key: preset.int4Key, value: preset.int4Value, pageCapacity: preset.pageCapacity)
        #expect(name == "4x" ? a.targetTokenByteCount >= Double(profile.cheapestTokenByteCount(pageCapacity: preset.pageCapacity))
                             : a.targetTokenByteCount == Double(own))
        #expect(a.meanTokenByteCount <= a.targetTokenByteCount)
        var g = SeededGenerator(seed: 13)
        let config = preset.configure(KVStoreConfiguration(layerCount: 3, queryHeadCount: 2, kvHeadCount: 1, headDim: 64))
        try config.validate()
        for l in 0..<3 {
            #expect(config.tierFormats(layer: l).keyFormat(.int4) == a.keyFormats[l] && config.tierFormats(layer: l).valueFormat(.int4) == a.valueFormats[l])
            #expect(config.rotatesValues(layer: l) && !config.rotatesKeys(layer: l))
        }
        let policy = preset.policy()
        #expect(policy.name == "preset:\(name)+cal")
        let settings = try #require(policy.compressionSettings)
        #expect(settings.layerBudgetScales == a.budgetScales)
        let store = try KVStore(config)
        let id = store.addSequence()
        let d = 64, prompt = 1024
        for l in 0..<3 {
            try store.append(id, layer: l, keys: randomRows(prompt * d, using: &g), values: randomRows(prompt * d, using: &g))
        }
        let window = (prompt - 32)..<prompt
        let observation = ObservationWindow(positions: window.map { Int32($0) },
                                            queries: (0..<3).map { _ in randomRows(2 * window.count * d, using: &g) })
        var session = try #require(try policy.apply(to: id, in: store, observation: observation, keepingBudgetDuringDecode: true))
        let fp16Token = TierCosts(formats: config.tierFormats, headDim: d, pageCapacity: config.pageCapacity).byteCount(.fp16)
        for step in 0..<80 {
            var total = 0, n = 0
            for l in 0..<3 {
                try store.append(id, layer: l, keys: randomRows(d, using: &g), values: randomRows(d, using: &g))
                let result = store.attend(id, layer: l, queries: randomRows(2 * d, using: &g), returnWeights: true)
                #expect(result.output.allSatisfy { $0.isFinite }, "seed 13, \(name) step \(step) layer \(l): attention is finite")
                session.record(layer: l, result)
                try session.appended(layer: l, count: 1)
                n = store.nextPosition(of: id, layer: l)
                let bytes = store.byteCount(of: id, layer: l, kvHead: 0)
                let budget = Int(preset.budget * a.budgetScales[l] * Double(n * fp16Token))
                #expect(bytes <= budget, "seed 13, \(name) step \(step) layer \(l): \(bytes) bytes, layer budget \(budget)")
                total += bytes
            }
            #expect(Double(total) <= preset.budget * Double(3 * n * fp16Token) + 3, "seed 13, \(name) step \(step): \(total) bytes over the sequence budget")
        }
    }
}
