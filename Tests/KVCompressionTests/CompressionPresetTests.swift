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
        #expect(CompressionPreset.all.map(\.name) == ["2x", "4x", "8x"])
        #expect(CompressionPreset.named("4x")?.budget == 0.25 && CompressionPreset.named("preset:8x")?.budget == 0.125)
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
            for t in [Tier.int8, .int2] {
                #expect(c.tierFormats.keyFormat(t) == base.tierFormats.keyFormat(t) && c.tierFormats.valueFormat(t) == base.tierFormats.valueFormat(t))
            }
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
}
