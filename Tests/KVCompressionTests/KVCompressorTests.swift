import Testing
import Foundation
import TestSupport
import KVQuantization
import KVSelection
import KVExperiments
import KVStore
@testable import KVCompression

@Suite struct KVCompressorTests {
    /// 2,000 decode steps with a fixed budget fraction: after every step every stream's bytes (whole
    /// pages, staging pages included) stay within the budget of the tokens appended so far, and sinks
    /// stay at FP16. H2O scores come from the store's own attention weights.
    @Test(arguments: [
        CompressionSettings(policy: .h2o(), budget: .fraction(0.3, representativeShare: 0.3, representativeTier: .int4)),
        CompressionSettings(policy: .h2o(), budget: .fraction(0.25), planner: .tiered(nil, candidateTiers: [.fp16, .int8, .int4])),
        CompressionSettings(policy: .streamingLLM, budget: .fraction(0.3)),
    ])
    func decodeSimulationKeepsTheBudget(settings: CompressionSettings) throws {
        var g = SeededGenerator(seed: 42)
        let config = KVStoreConfiguration(layerCount: 1, queryHeadCount: 2, kvHeadCount: 1, headDim: 8, pageCapacity: 16)
        let store = try KVStore(config)
        let compressor = KVCompressor(store: store, settings: settings)
        let id = store.addSequence()
        let d = config.headDim, prompt = 256
        try store.append(id, layer: 0, keys: randomRows(prompt * d, using: &g), values: randomRows(prompt * d, using: &g))
        let window = (prompt - 32)..<prompt
        try compressor.compressPrefill(id, observationQueries: [randomRows(2 * window.count * d, using: &g)],
                                       queryPositions: [window.map { Int32($0) }], reservingDecodeHeadroom: true)
        var session = compressor.decodeSession(id)
        let fp16Token = 2 * (2 * d) + 4
        var worstOverBudget = Int.min
        guard case .fractionOfFP16(let fraction) = settings.budget.amount else { Issue.record("a fraction budget is expected"); return }
        for step in 0..<2_000 {
            try store.append(id, layer: 0, keys: randomRows(d, using: &g), values: randomRows(d, using: &g))
            let result = store.attend(id, layer: 0, queries: randomRows(2 * d, using: &g), returnWeights: true)
            session.record(layer: 0, result)
            try session.appended(layer: 0, count: 1)
            let n = store.nextPosition(of: id, layer: 0)
            let budget = Int(fraction * Double(n * fp16Token))
            for h in 0..<config.kvHeadCount {
                let bytes = store.byteCount(of: id, layer: 0, kvHead: h)
                worstOverBudget = max(worstOverBudget, bytes - budget)
                #expect(bytes <= budget, "step \(step) head \(h): \(bytes) bytes, budget \(budget) (whole pages, staging included)")
                let tiers = store.tokenTiers(of: id, layer: 0, kvHead: h)
                #expect(Array(tiers.positions.prefix(4)) == [0, 1, 2, 3] && tiers.tiers.prefix(4).allSatisfy { $0 == .fp16 }, "step \(step): sinks")
                #expect(tiers.positions.last == Int32(n - 1) && tiers.tiers.last == .fp16, "step \(step): newest token")
            }
        }
        #expect(session.replanCount >= 2_000 / 16 - 1)
        // The budget binds: memory sits near it, not far below.
        #expect(worstOverBudget > -2 * store.slackByteBoundPerStream)
    }

    /// On real SmolLM2 tensors: compressing the fixture's prompt after prefill keeps every stream
    /// within budget + slack, keeps sinks and window at FP16, and SnapKV scores beat StreamingLLM at
    /// the same budget on the evaluation queries.
    @Test func prefillCompressionOnTheRealFixture() throws {
        let dump = try KVDump(contentsOf: KVDump.bundledFixtureURL, layers: [15])
        let s = dump.shape, layer = dump.layers[0], d = s.headDim
        let prompt = s.tokenCount - 32
        let evalCount = 8, scale = 1 / Float(d).squareRoot()
        let references: [[ReferenceAttention]] = (0..<s.headCount).map { h in
            let kv = h / s.groupSize
            let keys = layer.keys(kvHead: kv).map { Float(Float16($0)) }, values = layer.values(kvHead: kv).map { Float(Float16($0)) }
            return (0..<evalCount).map { i in
                ReferenceAttention(q: Array(layer.query(head: h, position: prompt + i)), keys: keys, values: values,
                                   visible: (0..<s.tokenCount).map { $0 <= prompt + i }, scale: scale)
            }
        }
        var errors: [String: Double] = [:]
        for (name, policy) in [("streaming", EvictionPolicy.streamingLLM), ("snapkv", .snapKV())] {
            let store = try KVStore(KVStoreConfiguration(layerCount: 1, queryHeadCount: s.headCount, kvHeadCount: s.kvHeadCount, headDim: d))
            let id = store.addSequence()
            func rows(_ data: [Float], _ range: Range<Int>) -> [Float] {
                (0..<s.kvHeadCount).flatMap { h in data[((h * s.tokenCount + range.lowerBound) * d)..<((h * s.tokenCount + range.upperBound) * d)] }
            }
            try store.append(id, layer: 0, keys: rows(layer.keys, 0..<prompt), values: rows(layer.values, 0..<prompt))
            let window = (prompt - 32)..<prompt
            let q = (0..<s.headCount).flatMap { h in window.flatMap { layer.query(head: h, position: $0) } }
            try KVCompressor(store: store, settings: CompressionSettings(policy: policy, budget: .fraction(0.25)))
                .compressPrefill(id, observationQueries: [q], queryPositions: [window.map { Int32($0) }])
            let fp16Token = 2 * 2 * d + 4
            for h in 0..<s.kvHeadCount {
                #expect(store.byteCount(of: id, layer: 0, kvHead: h) <= prompt * fp16Token / 4 + store.slackByteBoundPerStream)
                let t = store.tokenTiers(of: id, layer: 0, kvHead: h)
                #expect(Array(t.positions.prefix(4)) == [0, 1, 2, 3] && t.positions.suffix(32) == ArraySlice((window).map { Int32($0) }))
            }
            // Evaluation queries: each attends over the compressed prompt plus the exact new tokens.
            try store.append(id, layer: 0, keys: rows(layer.keys, prompt..<s.tokenCount), values: rows(layer.values, prompt..<s.tokenCount))
            let evalQ = (0..<s.headCount).flatMap { h in (prompt..<(prompt + evalCount)).flatMap { layer.query(head: h, position: $0) } }
            let out = store.attend(id, layer: 0, queries: evalQ, queryCount: evalCount,
                                   queryPositions: (0..<evalCount).map { Int32(prompt + $0) })
            var total = 0.0
            for h in 0..<s.headCount {
                for i in 0..<evalCount {
                    total += relativeError(Array(out.output[((h * evalCount + i) * d)..<((h * evalCount + i + 1) * d)]), references[h][i].output)
                }
            }
            errors[name] = total / Double(s.headCount * evalCount)
        }
        #expect(errors["snapkv"]! < errors["streaming"]!, "\(errors)")
    }
}
