import Testing
import Foundation
import TestSupport
import KVQuantization
@testable import KVStore

/// Per-layer sliding windows: attention sees exactly the last W keys, and the store evicts what no
/// later query can see (memory bounded, not just masked).
@Suite struct SlidingWindowTests {
    /// FP64 attention of one query over keys/values at `positions` (FP16-rounded, as stored), the
    /// query at `q` seeing positions in (q − W, q] (or [0, q] without a window).
    static func reference(query: ArraySlice<Float>, at q: Int, keys: [[Float]], values: [[Float]], window: Int?, scale: Double) -> [Double] {
        let visible = (0...q).filter { p in window.map { p > q - $0 } ?? true }
        let scores = visible.map { p in zip(query, keys[p]).reduce(0.0) { $0 + Double($1.0) * Double($1.1) } * scale }
        let m = scores.max()!, e = scores.map { exp($0 - m) }, z = e.reduce(0, +)
        var out = [Double](repeating: 0, count: query.count)
        for (k, p) in visible.enumerated() { for i in out.indices { out[i] += e[k] / z * Double(values[p][i]) } }
        return out
    }

    /// Layer 0 has a window, layer 1 none; tokens arrive in chunks; every chunk's attention matches
    /// the windowed (or causal) FP64 reference, and layer 0 never holds more than W − 1 + chunk
    /// tokens plus a page of slack (W plus a page after `releaseOutsideWindow`), while layer 1 keeps all.
    @Test(arguments: [(5, 4, 3), (4, 4, 1), (1, 4, 2), (9, 2, 7), (16, 8, 16)])
    func attentionSeesTheWindowAndTheRestIsEvicted(window w: Int, page: Int, chunk: Int) throws {
        let seed = UInt64(w * 1000 + page * 10 + chunk)
        var g = SeededGenerator(seed: seed)
        let d = 8, qh = 4, kv = 2
        let config = KVStoreConfiguration(layerCount: 2, queryHeadCount: qh, kvHeadCount: kv, headDim: d, pageCapacity: page,
                                          layerSlidingWindows: [w, nil])
        let store = try KVStore(config)
        let id = store.addSequence()
        // Stored (FP16-rounded) rows per layer and KV head, by position.
        var keys = [[[[Float]]]](repeating: [[[Float]]](repeating: [], count: kv), count: 2), values = keys
        let scale = 1 / Double(d).squareRoot()
        var next = 0
        for round in 0..<6 {
            for layer in 0..<2 {
                let k = randomRows(kv * chunk * d, using: &g), v = randomRows(kv * chunk * d, using: &g)
                try store.append(id, layer: layer, keys: k, values: v)
                for h in 0..<kv {
                    for t in 0..<chunk {
                        keys[layer][h].append((0..<d).map { Float(Float16(k[(h * chunk + t) * d + $0])) })
                        values[layer][h].append((0..<d).map { Float(Float16(v[(h * chunk + t) * d + $0])) })
                    }
                }
                let held = store.tokenCounts(of: id, layer: layer, kvHead: 0).values.reduce(0, +)
                if layer == 0 {
                    #expect(held <= w - 1 + chunk + page - 1, "seed \(seed) round \(round): \(held) tokens held")
                } else {
                    #expect(held == next + chunk)
                }
                let queries = randomRows(qh * chunk * d, using: &g)
                let out = store.attend(id, layer: layer, queries: queries, queryCount: chunk).output
                var worst = 0.0
                for head in 0..<qh {
                    for i in 0..<chunk {
                        let row = (head * chunk + i) * d
                        let ref = Self.reference(query: queries[row..<(row + d)], at: next + i, keys: keys[layer][head / (qh / kv)],
                                                 values: values[layer][head / (qh / kv)], window: layer == 0 ? w : nil, scale: scale)
                        worst = max(worst, relativeError(Array(out[row..<(row + d)]), ref))
                    }
                }
                #expect(worst < 1e-5, "seed \(seed) round \(round) layer \(layer): relative error \(worst)")
                // The weights list only visible tokens as non-zero.
                let weights = store.attend(id, layer: layer, queries: queries, queryCount: chunk, returnWeights: true).weights![0]
                for (k, p) in weights.positions.enumerated() where layer == 0 && Int(p) <= next + chunk - 1 - w {
                    let row = weights.row(groupHead: 0, query: chunk - 1)
                    #expect(row[row.startIndex + k] == 0)
                }
                store.releaseOutsideWindow(id, layer: layer)
                if layer == 0 {
                    let (positions, _) = store.tokenTiers(of: id, layer: 0, kvHead: 1)
                    #expect(positions.count <= w + page - 1)
                    // Everything the next query sees is still there.
                    let needed = max(0, next + chunk - w + 1)..<(next + chunk)
                    #expect(Set(needed.map { Int32($0) }).isSubset(of: Set(positions)))
                }
            }
            next += chunk
        }
    }

    /// Eviction also frees pages of the quantised tiers, and the freed bytes count toward the limit.
    @Test func evictionFreesQuantisedPagesAndBytes() throws {
        var g = SeededGenerator(seed: 7)
        let d = 8
        let config = KVStoreConfiguration(layerCount: 1, queryHeadCount: 2, kvHeadCount: 1, headDim: d, pageCapacity: 4,
                                          layerSlidingWindows: [8])
        let store = try KVStore(config)
        let id = store.addSequence()
        try store.append(id, layer: 0, keys: randomRows(16 * d, using: &g), values: randomRows(16 * d, using: &g))
        let held = store.tokenTiers(of: id, layer: 0, kvHead: 0).positions
        try store.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 0, moves: held.prefix(12).map { .init(position: $0, tier: .int8) })]), to: id)
        #expect(store.tokenCounts(of: id, layer: 0, kvHead: 0)[.int8] == 12)
        let before = store.byteCount
        // The next query (position 32) sees 25…32: all int8 pages (positions 0…11) go.
        try store.append(id, layer: 0, keys: randomRows(16 * d, using: &g), values: randomRows(16 * d, using: &g))
        store.releaseOutsideWindow(id, layer: 0)
        let counts = store.tokenCounts(of: id, layer: 0, kvHead: 0)
        #expect(counts[.int8] == 0)
        #expect(counts.values.reduce(0, +) <= 8 + 3)
        #expect(store.byteCount <= before)
    }

    @Test func invalidWindowsNameTheField() {
        func field(_ windows: [Int?]) -> String? {
            do { _ = try KVStore(KVStoreConfiguration(layerCount: 2, queryHeadCount: 2, kvHeadCount: 1, headDim: 8, layerSlidingWindows: windows)); return nil }
            catch { return error.field }
        }
        #expect(field([4]) == "layerSlidingWindows")
        #expect(field([4, 0]) == "layerSlidingWindows[1]")
        #expect(field([nil, 512]) == nil)
    }

    /// A windowed store's snapshot keeps its windows (version 4): restoring gives the same
    /// configuration, rows and attention, and the restored store goes on evicting; loading it into a
    /// store with other windows (or none), or a windowless snapshot into a windowed store, is a
    /// `.configurationMismatch` naming the layer, and the store is unchanged.
    @Test func snapshotsKeepTheWindows() throws {
        var g = SeededGenerator(seed: 11)
        let d = 8, w = 6
        let config = KVStoreConfiguration(layerCount: 2, queryHeadCount: 4, kvHeadCount: 2, headDim: d, pageCapacity: 4,
                                          layerSlidingWindows: [w, nil])
        let store = try KVStore(config)
        let id = store.addSequence()
        for layer in 0..<2 { try store.append(id, layer: layer, keys: randomRows(2 * 19 * d, using: &g), values: randomRows(2 * 19 * d, using: &g)) }
        store.releaseOutsideWindow(id, layer: 0)
        let bytes = store.snapshotBytes()
        #expect(bytes[8] == 4)
        let restored = try KVStore.restoring(bytes: bytes)
        #expect(restored.configuration.layerSlidingWindows == [w, nil])
        #expect(restored.byteCount == store.byteCount && restored.snapshotBytes() == bytes)
        let queries = randomRows(4 * d, using: &g)
        for layer in 0..<2 {
            for h in 0..<2 { #expect(restored.tokenTiers(of: id, layer: layer, kvHead: h).positions == store.tokenTiers(of: id, layer: layer, kvHead: h).positions) }
            #expect(restored.attend(id, layer: layer, queries: queries, queryCount: 1).output == store.attend(id, layer: layer, queries: queries, queryCount: 1).output)
        }
        // The restored store still evicts: 12 more tokens leave at most W − 1 + 12 + a page in layer 0.
        try restored.append(id, layer: 0, keys: randomRows(2 * 12 * d, using: &g), values: randomRows(2 * 12 * d, using: &g))
        #expect(restored.tokenCounts(of: id, layer: 0, kvHead: 0).values.reduce(0, +) <= w - 1 + 12 + 3)
        func mismatch(_ windows: [Int?]?, _ snapshot: [UInt8]) throws -> String? {
            var c = config
            c.layerSlidingWindows = windows
            let other = try KVStore(c)
            let before = other.snapshotBytes()
            do { try other.loadSnapshot(bytes: snapshot); return nil } catch {
                #expect(other.snapshotBytes() == before && other.sequences.isEmpty)
                guard case .configurationMismatch(let field, _, _) = error else { return "\(error)" }
                return field
            }
        }
        #expect(try mismatch([w, nil], bytes) == nil)
        #expect(try mismatch([w + 1, nil], bytes) == "layerSlidingWindows[0]")
        #expect(try mismatch(nil, bytes) == "layerSlidingWindows[0]")
        #expect(try mismatch([w, 3], bytes) == "layerSlidingWindows[1]")
        var plain = config
        plain.layerSlidingWindows = nil
        let unwindowed = try KVStore(plain)
        let other = unwindowed.addSequence()
        try unwindowed.append(other, layer: 0, keys: randomRows(2 * d, using: &g), values: randomRows(2 * d, using: &g))
        #expect(try mismatch([w, nil], unwindowed.snapshotBytes()) == "layerSlidingWindows[0]")
    }
}
