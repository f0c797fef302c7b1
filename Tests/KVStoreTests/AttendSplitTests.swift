import Foundation
import Testing
import TestSupport
import KVQuantization
@testable import KVStore

/// `attend` with fewer streams than threads (a prefill chunk of a multi-query layer, a small batch
/// of MQA sequences) cuts each stream's query rows into tile-aligned runs, one thread each: the
/// outputs are the bits of the one-thread run (and of the weights path, which never cuts) for every
/// thread count, format family, rotation, sliding window, buffer layout and query precision, and
/// the cut itself covers every row once on tile boundaries.
@Suite struct AttendSplitTests {
    /// Every stream's rows exactly once, in order, in runs that start on multiples of
    /// `PageKernels.rowTile`, at most `parts` of them, as even as whole tiles allow; one query is never cut.
    @Test func unitsCoverEveryRowOnTileBoundaries() {
        let tile = PageKernels.rowTile
        for (counts, kv, group, parts) in [([13], 1, 4, 2), ([1], 1, 8, 2), ([2], 1, 1, 2), ([7, 1, 40], 2, 3, 3), ([1536], 1, 4, 2),
                                           ([5], 3, 1, 8), ([3], 1, 2, 5), ([64, 64], 1, 4, 1)] {
            let units = KVStore.attendUnits(queryCounts: counts, kvHeadCount: kv, groupSize: group, parts: parts)
            var at = 0
            for (b, n) in counts.enumerated() {
                for h in 0..<kv {
                    let mine = units[at...].prefix { $0.block == b && $0.kvHead == h }
                    at += mine.count
                    let rows = group * n, context = "counts \(counts) kv \(kv) group \(group) parts \(parts) block \(b) head \(h)"
                    #expect(mine.first?.rows.lowerBound == 0 && mine.last?.rows.upperBound == rows, "\(context): \(mine.map(\.rows))")
                    #expect(zip(mine, mine.dropFirst()).allSatisfy { $0.rows.upperBound == $1.rows.lowerBound }, "\(context)")
                    #expect(mine.allSatisfy { $0.rows.lowerBound % tile == 0 && !$0.rows.isEmpty }, "\(context)")
                    let tiles = (rows + tile - 1) / tile
                    #expect(mine.count == (n == 1 ? 1 : min(parts, tiles)), "\(context): \(mine.count) runs")
                    let sizes = mine.map { ($0.rows.count + tile - 1) / tile }
                    #expect((sizes.max() ?? 0) - (sizes.min() ?? 0) <= 1, "\(context): tiles per run \(sizes)")
                }
            }
            #expect(at == units.count)
        }
    }

    /// How many runs a stream is cut into: enough that every thread gets as many units, only when
    /// the streams are fewer than the threads and no weights are asked.
    @Test func partsOnlyWhenThreadsWouldIdle() {
        #expect(KVStore.attendParts(streams: 1, threads: 2, returnWeights: false) == 2)
        #expect(KVStore.attendParts(streams: 1, threads: 2, returnWeights: true) == 1)
        #expect(KVStore.attendParts(streams: 2, threads: 2, returnWeights: false) == 1)
        #expect(KVStore.attendParts(streams: 3, threads: 2, returnWeights: false) == 1)
        #expect(KVStore.attendParts(streams: 2, threads: 4, returnWeights: false) == 2)
        #expect(KVStore.attendParts(streams: 2, threads: 3, returnWeights: false) == 3)
        #expect(KVStore.attendParts(streams: 1, threads: 1, returnWeights: false) == 1)
    }

    static let standard = TierFormats.standard

    /// (name, kv heads, group, head dim, formats, rotation, sliding window).
    static let cases: [(String, Int, Int, Int, TierFormats, RotationSettings, Int?)] = [
        ("standard MQA", 1, 4, 64, standard, .none, nil),
        ("standard MQA d100 window", 1, 3, 100, standard, .none, 37),
        ("channel keys, LM values, rotated", 1, 4, 256, RotatedTierTests.channelKeysLloydMaxValues, RotationSettings(keys: .all, values: .all, seed: 4), nil),
        ("row-wise new formats, window", 1, 2, 64, RotatedTierTests.rowWiseNewFormats, .none, 90),
        ("mixed-width keys GQA", 2, 2, 64, MixedWidthTierTests.formats(MixedWidthTierTests.widths(64)), .none, nil),
        ("standard GQA rotated values", 2, 3, 128, standard, RotationSettings(values: .all, seed: 7), nil),
    ]

    @Test(arguments: 0..<cases.count)
    func splitRowsGiveTheBitsOfOneThread(_ index: Int) throws {
        let (name, kv, group, d, formats, rotation, window) = Self.cases[index]
        var g = SeededGenerator(seed: 15_000 + UInt64(index))
        let c = KVStoreConfiguration(layerCount: 1, queryHeadCount: kv * group, kvHeadCount: kv, headDim: d, pageCapacity: 16,
                                     tierFormats: formats, rotation: rotation, layerSlidingWindows: [window])
        let (store, id) = try RotatedTierTests.mixedStore(c, tokens: 200, using: &g)
        let n = store.nextPosition(of: id, layer: 0)
        for queryCount in [2, 7, 13] {
            let q = randomRows(c.queryHeadCount * queryCount * d, using: &g)
            for explicit in [false, true] {
                let positions: [Int32]? = explicit ? (0..<queryCount).map { _ in Int32.random(in: 0..<Int32(n), using: &g) } : nil
                let context = "seed \(g.seed) \(name) queries \(queryCount) positions \(positions.map { "\($0)" } ?? "last")"
                let one = store.attend(id, layer: 0, queries: q, queryCount: queryCount, queryPositions: positions, threadCount: 1).output
                let weighed = store.attend(id, layer: 0, queries: q, queryCount: queryCount, queryPositions: positions,
                                           returnWeights: true, threadCount: 2).output
                #expect(weighed.map(\.bitPattern) == one.map(\.bitPattern), "\(context): weights path")
                for threads in [2, 3, 5] {
                    let split = store.attend(id, layer: 0, queries: q, queryCount: queryCount, queryPositions: positions, threadCount: threads).output
                    #expect(split.map(\.bitPattern) == one.map(\.bitPattern), "\(context) threads \(threads)")
                }
                // Token-major buffers (gathered and scattered per run), FP32 and FP16.
                let tq = ZeroCopyTests.tokenMajor(q, heads: c.queryHeadCount, tokens: queryCount, d: d)
                var out = [Float](repeating: .nan, count: tq.count)
                var span = out.mutableSpan
                store.attend(id, layer: 0, queries: tq.span, layout: .tokenMajor, queryPositions: positions, into: &span, threadCount: 3)
                #expect(out.map(\.bitPattern) == ZeroCopyTests.tokenMajor(one, heads: c.queryHeadCount, tokens: queryCount, d: d).map(\.bitPattern),
                        "\(context): token-major")
                let hq = tq.map(Float16.init)
                var halfOne = [Float](repeating: .nan, count: tq.count), halfSplit = halfOne
                var s1 = halfOne.mutableSpan, s2 = halfSplit.mutableSpan
                store.attend(id, layer: 0, queries: hq.span, layout: .tokenMajor, queryPositions: positions, into: &s1, threadCount: 1)
                store.attend(id, layer: 0, queries: hq.span, layout: .tokenMajor, queryPositions: positions, into: &s2, threadCount: 2)
                #expect(halfSplit.map(\.bitPattern) == halfOne.map(\.bitPattern), "\(context): FP16 queries")
                if window == nil {
                    let ps = positions ?? (0..<queryCount).map { Int32(n - queryCount + $0) }
                    store.expectAttentionWithinBound(id, layer: 0, queries: q, queryCount: queryCount, positions: ps, output: one, context)
                }
            }
        }
    }

    /// A batch of MQA sequences (fewer streams than threads) is cut too: each sequence's output is
    /// the bits of attending it alone on one thread.
    @Test func batchOfMultiQuerySequences() throws {
        var g = SeededGenerator(seed: 15_100)
        let c = KVStoreConfiguration(layerCount: 1, queryHeadCount: 4, kvHeadCount: 1, headDim: 64, pageCapacity: 16)
        let store = try KVStore(c)
        var requests = [KVStore.AttendRequest]()
        for (tokens, queries) in [(90, 9), (31, 1), (57, 6)] {
            let id = store.addSequence()
            try store.append(id, layer: 0, keys: randomRows(tokens * 64, using: &g), values: randomRows(tokens * 64, using: &g))
            try store.apply(.uniform(.int4, positions: 0..<Int32(tokens / 2), layerCount: 1, kvHeadCount: 1), to: id)
            requests.append(KVStore.AttendRequest(sequence: id, queries: randomRows(4 * queries * 64, using: &g), queryCount: queries))
        }
        let alone = requests.map { store.attend($0.sequence, layer: 0, queries: $0.queries, queryCount: $0.queryCount, threadCount: 1).output }
        for threads in [4, 7] {
            let batch = store.attend(batch: requests, layer: 0, threadCount: threads)
            for (b, r) in batch.enumerated() {
                #expect(r.output.map(\.bitPattern) == alone[b].map(\.bitPattern), "seed \(g.seed) threads \(threads) sequence \(b)")
            }
        }
    }
}
