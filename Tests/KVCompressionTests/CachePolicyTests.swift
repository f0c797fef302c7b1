import Testing
import KVQuantization
import KVSelection
import KVStore
import TestSupport
@testable import KVCompression

/// One description of what to do to a cache: names map to the settings they mean, and applying a
/// policy does what it says to a freshly prefilled sequence.
@Suite struct CachePolicyTests {
    let regions = StreamRegions(sinkTokenCount: 2, recentTokenCount: 8)
    let crush = KVCrushSettings(share: 0.3, representativeTier: .int4, anchor: .alternate)

    @Test func namesMapToTheirSettings() throws {
        #expect(try PolicyName(parsing: "full").cachePolicy(budget: nil).action == .keep)
        #expect(try PolicyName(parsing: "uncompressed").cachePolicy(budget: 0.5).action == .keep)
        #expect(try PolicyName(parsing: "uniform-int4").cachePolicy(budget: nil).action == .uniform(.int4))
        let tiered = try PolicyName(parsing: "snapkv+tiered+kvcrush", observationWindow: 16).cachePolicy(budget: 0.25, kvCrush: crush, regions: regions)
        #expect(tiered.name == "snapkv+tiered+kvcrush")
        let s = try #require(tiered.compressionSettings)
        #expect(s.policy == .snapKV(SnapKVOptions(observationQueryCount: 16)) && s.regions == regions)
        #expect(s.budget == .fraction(0.25, representativeShare: 0.3, representativeTier: .int4, restTier: .dropped))
        #expect(s.planner == .tiered(nil, candidateTiers: [.fp16, .int8, .int4]) && s.kvCrush.anchor == .alternate)
        let mikv = try #require(try PolicyName(parsing: "h2o+mikv").cachePolicy(budget: 0.5).compressionSettings)
        #expect(mikv.policy == .h2o() && mikv.budget.restTier == .int2 && mikv.planner == .budget)
        #expect(try PolicyName(parsing: "streaming").cachePolicy(budget: 0.5).compressionSettings?.policy == .streamingLLM)
        #expect(try PolicyName(parsing: "tiered+int2").cachePolicy(budget: 0.5).compressionSettings?.planner
                == .tiered(nil, candidateTiers: [.fp16, .int8, .int4, .int2]))
    }

    @Test func uniformPlansNameEveryStream() {
        let plan = RetentionPlan.uniform(.int8, positions: 3..<7, layerCount: 2, kvHeadCount: 3)
        #expect(plan.streams.map { [$0.layer, $0.kvHead] } == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
        #expect(plan.streams.allSatisfy { $0.moves == (3..<7).map { StreamPlan.Move(position: $0, tier: .int8) } })
        #expect(RetentionPlan.uniform(.int4, positions: 0..<0, layerCount: 1, kvHeadCount: 1).streams[0].moves.isEmpty)
    }

    func prefilled(tokens n: Int, seed: UInt64) throws -> (KVStore, SequenceID, ObservationWindow) {
        var g = SeededGenerator(seed: seed)
        let store = try KVStore(KVStoreConfiguration(layerCount: 2, queryHeadCount: 4, kvHeadCount: 2, headDim: 16, pageCapacity: 8))
        let id = store.addSequence()
        for l in 0..<2 { try store.append(id, layer: l, keys: randomRows(2 * n * 16, using: &g), values: randomRows(2 * n * 16, using: &g)) }
        let window = ((n - 8)..<n).map { Int32($0) }
        return (store, id, ObservationWindow(positions: window, queries: (0..<2).map { _ in randomRows(4 * 8 * 16, using: &g) }))
    }

    @Test func applyingAPolicy() throws {
        let (store, id, observation) = try prefilled(tokens: 128, seed: 1)
        let before = store.byteCount(of: id)
        #expect(try CachePolicy.uncompressed.apply(to: id, in: store, observation: nil) == nil)
        #expect(store.byteCount(of: id) == before)
        let uniform = store.fork(id)
        #expect(try CachePolicy.uniform(.int4).apply(to: uniform, in: store, observation: nil) == nil)
        for l in 0..<2 { for h in 0..<2 { #expect(store.tokenCounts(of: uniform, layer: l, kvHead: h)[.int4] == 128) } }
        // A budgeted policy compresses, and hands back a decode session only when asked.
        let policy = try PolicyName(parsing: "snapkv+kvcrush", observationWindow: 8).cachePolicy(budget: 0.3, kvCrush: crush, regions: regions)
        let a = store.fork(id), b = store.fork(id)
        #expect(try policy.apply(to: a, in: store, observation: observation) == nil)
        #expect(try policy.apply(to: b, in: store, observation: observation, keepingBudgetDuringDecode: true) != nil)
        for seq in [a, b] {
            #expect(store.byteCount(of: seq) < before / 2)
            let t = store.tokenTiers(of: seq, layer: 1, kvHead: 0)
            #expect(Array(t.positions.prefix(2)) == [0, 1] && t.positions.suffix(8) == ArraySlice((120..<128).map { Int32($0) }))
        }
        // Keeping the budget while decoding reserves FP16 slots for the tokens before the first re-plan.
        #expect(store.byteCount(of: b) <= store.byteCount(of: a))
        #expect(store.tokenTiers(of: b, layer: 0, kvHead: 1).positions.count <= store.tokenTiers(of: a, layer: 0, kvHead: 1).positions.count)
        // StreamingLLM needs no observation and keeps the latest tokens the budget holds.
        let streaming = store.fork(id)
        _ = try PolicyName(parsing: "streaming").cachePolicy(budget: 0.5, regions: regions).apply(to: streaming, in: store, observation: nil)
        let kept = store.tokenTiers(of: streaming, layer: 0, kvHead: 0).positions
        #expect(kept.count > 10 && Array(kept.prefix(2)) == [0, 1])
        #expect(Array(kept.dropFirst(2)) == Array(Int32(128 - kept.count + 2)..<128), "sinks, then one run of the latest tokens")
    }

    /// Decode planning: `full` plans nothing; StreamingLLM keeps the latest tokens as the window
    /// slides (positions, not attention, rank).
    @Test func planDecode() throws {
        let planner = BudgetPlanner(configuration: PlannerConfiguration(headDim: 16, regions: regions, pageCapacity: 8))
        let n = 80
        var scores = H2OAccumulator(headCount: 4)
        scores.appendPositions(count: n)
        let streams = (0..<2).map { _ in SequencePlanner.DecodeStream(positions: (0..<Int32(n)).map { $0 }, tiers: Array(repeating: .fp16, count: n)) }
        let full = try SequencePlanner(policy: .full, kvHeadCount: 2).planDecode(
            layer: 1, streams: streams, scores: scores, normalization: .none, tokenCount: n, planner: planner, budget: .fraction(0.1))
        #expect(full.streams.map(\.layer) == [1, 1] && full.streams.allSatisfy { $0.moves.isEmpty })
        let streaming = try SequencePlanner(policy: .streamingLLM, kvHeadCount: 2).planDecode(
            layer: 1, streams: streams, scores: scores, normalization: .none, tokenCount: n, planner: planner, budget: .fraction(0.5))
        for s in streaming.streams {
            // Budget 0.5 · 80 FP16 tokens = 40 tokens: 2 sinks, 8 recent, the latest 30 of the middle.
            #expect(s.moves.map(\.position) == Array(2..<42) && s.moves.allSatisfy { $0.tier == .dropped })
        }
    }
}
