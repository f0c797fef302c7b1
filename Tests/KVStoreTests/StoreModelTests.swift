import Testing
import TestSupport
import KVQuantization
import KVSelection
@testable import KVStore

@Suite struct StoreModelTests {
    /// Checks rows, attention, bytes and pages of every live sequence against the model.
    static func check(_ store: KVStore, _ model: ReferenceStore, _ g: inout SeededGenerator, _ context: String) {
        let c = store.configuration, d = c.headDim
        for (id, seq) in model.sequences {
            #expect(store.byteCount(of: id) == model.byteCount(id), "\(context): bytes of \(id)")
            let layer = Int.random(in: 0..<c.layerCount, using: &g)
            var visibleRows = [[Float]](), allKeys = [[Float]](), allValues = [[Float]](), allPositions = [[Int32]]()
            var allFormats = [[StorageFormat]](), allTiers = [[Tier]]()
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
                allFormats.append(expected.map { c.tierFormats(layer: layer).valueFormat($0.value.tier) })
                allTiers.append(expected.map(\.value.tier))
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
                    let rotated = model.rotatedRows(allTiers[kv], layer: layer)
                    let ref = ReferenceAttention(q: qrow, keys: allKeys[kv], values: allValues[kv],
                                                 visible: allPositions[kv].map { $0 <= positions[i] }, scale: c.effectiveAttentionScale,
                                                 pageCount: pageCount, scoreErrors: store.vnniScoreErrors(id, layer: layer, kvHead: kv, query: qrow),
                                                 valueFormats: allFormats[kv], rotatedKeys: rotated.keys, rotatedValues: rotated.values,
                                                 valueRotation: rotated.valueRotation)
                    let o = Array(result.output[((h * nq + i) * d)..<((h * nq + i + 1) * d)])
                    for e in 0..<d {
                        #expect(abs(Double(o[e]) - ref.output[e]) <= ref.bound[e] + 1e-30,
                                "\(context): attend head \(h) query \(i) element \(e): \(o[e]) vs \(ref.output[e]) bound \(ref.bound[e])")
                    }
                    #expect(result.weights![kv].positions == allPositions[kv] && result.weights![kv].tiers == allTiers[kv], "\(context): weights' tokens")
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
            let context = "seed \(g.seed) config kv \(config.kvHeadCount)×\(config.groupSize) d \(config.headDim) P \(config.pageCapacity) formats \(config.tierFormats.keys.sorted { $0.key < $1.key }.map(\.value)) / \(config.tierFormats.values.sorted { $0.key < $1.key }.map(\.value)) capacities \(config.tierFormats.pageCapacities.sorted { $0.key < $1.key }) per-layer \(config.layerTierFormats != nil)"
            for step in 0..<25 {
                operations += 1
                try randomOperation(store, &model, maxSequences: 4, appendSizes: [0, 1, 1, 2, 5, 17, 40], using: &g)
                Self.check(store, model, &g, "\(context) step \(step)")
            }
            for id in model.sequences.keys { store.removeSequence(id) }
            #expect(store.byteCount == 0 && store.pool.pagesInUse == 0, "\(context): pages leaked after removing every sequence")
        }
        #expect(operations >= 3000)
    }
}
