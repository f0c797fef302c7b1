import Testing
import TestSupport
import KVQuantization
import KVCrush
@testable import KVStore

/// The README's API example, verbatim, so that it keeps compiling and working, on seeded input;
/// then what its comments promise: the budget holds (within the page slack), sinks and the recent
/// window stay at FP16, KVCrush representatives sit at INT4, tokens were dropped, and the output
/// is attention over the stored rows within the derived FP32 bound.
@Test func readmeExample() throws {
    let (kvHeads, tokens, headDim) = (3, 300, 64)
    var g = SeededGenerator(seed: 2026)
    let prefillKeys = randomRows(kvHeads * tokens * headDim, using: &g)
    let prefillValues = randomRows(kvHeads * tokens * headDim, using: &g)
    let observationQueries = randomRows(9 * 32 * headDim, using: &g)
    let query = randomRows(9 * headDim, using: &g)
    // --- README example starts ---
    // A SmolLM2-shaped cache: 9 query heads share 3 KV heads (GQA), head vectors of 64.
    let store = try KVStore(KVStoreConfiguration(layerCount: 1, queryHeadCount: 9, kvHeadCount: 3, headDim: 64))
    let seq = store.addSequence()
    // Keys and values arrive as [kvHead][token][headDim] floats; they enter at FP16.
    try store.append(seq, layer: 0, keys: prefillKeys, values: prefillValues)

    // Compress once after prefill: SnapKV scores from the last 32 prompt queries, a quarter of the
    // FP16 bytes, 30% of them spent on KVCrush representatives kept at INT4.
    let compressor = KVCompressor(store: store, settings: CompressionSettings(
        policy: .snapKV(), budget: .fraction(0.25, representativeShare: 0.3, representativeTier: .int4)))
    try compressor.compressPrefill(seq, observationQueries: [observationQueries],
                                   queryPositions: [(268..<300).map { Int32($0) }])

    // Decode attention over every tier through one read path ([queryHead][query][headDim]).
    let out = store.attend(seq, layer: 0, queries: query).output

    // Exact memory, per tier.
    print(store.byteCount, store.tokenCounts(of: seq, layer: 0, kvHead: 0))
    // --- README example ends ---
    let fp16Token = 2 * 2 * headDim + 4
    for h in 0..<kvHeads {
        #expect(store.byteCount(of: seq, layer: 0, kvHead: h) <= tokens * fp16Token / 4, "head \(h): whole pages within the budget")
        let t = store.tokenTiers(of: seq, layer: 0, kvHead: h)
        #expect(Array(t.positions.prefix(4)) == [0, 1, 2, 3] && t.positions.suffix(32) == ArraySlice((268..<300).map { Int32($0) }))
        #expect(t.tiers.prefix(4).allSatisfy { $0 == .fp16 } && t.tiers.suffix(32).allSatisfy { $0 == .fp16 })
        let counts = store.tokenCounts(of: seq, layer: 0, kvHead: h)
        #expect(counts[.int4]! > 0 && counts[.int8] == 0 && counts[.int2] == 0, "head \(h): \(counts)")
        #expect(t.positions.count < tokens, "head \(h) dropped tokens")
    }
    store.expectAttentionWithinBound(seq, layer: 0, queries: query, queryCount: 1, positions: [Int32(tokens - 1)], output: out, "README")
}

/// The README's `CachePolicy` lines, verbatim: a named policy compresses a prefilled sequence to
/// its budget and hands back the decode session that keeps it there.
@Test func readmePolicyExample() throws {
    var g = SeededGenerator(seed: 2027)
    let store = try KVStore(KVStoreConfiguration(layerCount: 1, queryHeadCount: 9, kvHeadCount: 3, headDim: 64))
    let seq = store.addSequence()
    try store.append(seq, layer: 0, keys: randomRows(3 * 1000 * 64, using: &g), values: randomRows(3 * 1000 * 64, using: &g))
    let window = ObservationWindow(positions: (968..<1000).map { Int32($0) }, queries: [randomRows(9 * 32 * 64, using: &g)])
    // --- README policy example starts ---
    let policy = try PolicyName(parsing: "snapkv+kvcrush").cachePolicy(
        budget: 0.25, kvCrush: KVCrushSettings(share: 0.3, representativeTier: .int4, anchor: .random(seed: 0)))
    var session = try policy.apply(to: seq, in: store, observation: window, keepingBudgetDuringDecode: true)
    // --- README policy example ends ---
    let fp16Token = 2 * 2 * 64 + 4
    for h in 0..<3 { #expect(store.byteCount(of: seq, layer: 0, kvHead: h) <= 1000 * fp16Token / 4) }
    // Forty decode steps: the session re-plans, and the budget (a quarter of every token appended so
    // far) holds after every step, in whole pages.
    for step in 0..<40 {
        try store.append(seq, layer: 0, keys: randomRows(3 * 64, using: &g), values: randomRows(3 * 64, using: &g))
        session!.record(layer: 0, store.attend(seq, layer: 0, queries: randomRows(9 * 64, using: &g), returnWeights: true))
        try session!.appended(layer: 0, count: 1)
        for h in 0..<3 { #expect(store.byteCount(of: seq, layer: 0, kvHead: h) <= (1001 + step) * fp16Token / 4, "step \(step)") }
    }
    #expect(session!.replanCount == 1)
}
