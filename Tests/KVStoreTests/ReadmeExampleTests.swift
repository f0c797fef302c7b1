import Testing
import KVQuantization
import KVCrush

/// The README's API example, verbatim, so that it keeps compiling and working.
@Test func readmeExample() throws {
    let (kvHeads, tokens, headDim) = (3, 300, 64)
    let prefillKeys = (0..<kvHeads * tokens * headDim).map { _ in Float.random(in: -1...1) }
    let prefillValues = prefillKeys.map { $0 * 0.5 }
    let observationQueries = (0..<9 * 32 * headDim).map { _ in Float.random(in: -1...1) }
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
    let query = [Float](repeating: 0.1, count: 9 * headDim)
    let out = store.attend(seq, layer: 0, queries: query).output

    // Exact memory, per tier.
    print(store.byteCount, store.tokenCounts(of: seq, layer: 0, kvHead: 0))
    // --- README example ends ---
    #expect(out.count == 9 * headDim)
    #expect(store.byteCount(of: seq, layer: 0, kvHead: 0) <= tokens * (4 * headDim + 4) / 4 + store.slackByteBoundPerStream)
}
