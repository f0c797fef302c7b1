import Testing
import TestSupport
import KVQuantization
import KVSelection
@testable import KVStore

/// The zero-copy forms of `append` and `attend` (caller buffers, both layouts, FP32 and FP16) give
/// exactly what the array forms give, refuse what the array forms refuse with the store unchanged,
/// and trap on wrong sizes. Run on every kernel path (`KVCRUSH_KERNELS=portable` too).
@Suite struct ZeroCopyTests {
    /// `[h][t][d]` ⇄ `[t][h][d]`.
    static func tokenMajor(_ x: [Float], heads: Int, tokens: Int, d: Int) -> [Float] {
        var out = x
        for h in 0..<heads { for t in 0..<tokens { for e in 0..<d { out[(t * heads + h) * d + e] = x[(h * tokens + t) * d + e] } } }
        return out
    }

    static func headMajor(_ x: [Float], heads: Int, tokens: Int, d: Int) -> [Float] {
        var out = x
        for h in 0..<heads { for t in 0..<tokens { for e in 0..<d { out[(h * tokens + t) * d + e] = x[(t * heads + h) * d + e] } } }
        return out
    }

    /// Appends `x` (head-major FP32 values, FP16-representable when `half`) through the zero-copy form.
    static func append(_ store: KVStore, _ id: SequenceID, layer: Int, keys: [Float], values: [Float], tokens: Int,
                       layout: KVBufferLayout, half: Bool) throws(KVStoreError) {
        let c = store.configuration
        var k = keys, v = values
        if layout == .tokenMajor {
            k = tokenMajor(keys, heads: c.kvHeadCount, tokens: tokens, d: c.headDim)
            v = tokenMajor(values, heads: c.kvHeadCount, tokens: tokens, d: c.headDim)
        }
        if half {
            let kh = k.map(Float16.init), vh = v.map(Float16.init)
            try store.append(id, layer: layer, keys: kh.span, values: vh.span, layout: layout)
        } else {
            try store.append(id, layer: layer, keys: k.span, values: v.span, layout: layout)
        }
    }

    /// Zero-copy attention of head-major FP32 `queries` (FP16-representable when `half`) in
    /// `layout`; returns the output head-major, the per-head weights and the dense weights.
    static func attend(_ store: KVStore, _ id: SequenceID, layer: Int, queries: [Float], queryCount n: Int, positions: [Int32]?,
                       layout: KVBufferLayout, half: Bool) -> (output: [Float], weights: [KVHeadWeights], dense: [Float]) {
        let c = store.configuration, hq = c.queryHeadCount, d = c.headDim
        let q = layout == .tokenMajor ? tokenMajor(queries, heads: hq, tokens: n, d: d) : queries
        let qh = q.map(Float16.init)
        var out = [Float](repeating: .nan, count: q.count), dense = [Float](repeating: .nan, count: hq * n * store.nextPosition(of: id, layer: layer))
        var outSpan = out.mutableSpan
        let w = half ? store.attend(id, layer: layer, queries: qh.span, layout: layout, queryPositions: positions, into: &outSpan, returnWeights: true)!
            : store.attend(id, layer: layer, queries: q.span, layout: layout, queryPositions: positions, into: &outSpan, returnWeights: true)!
        var out2 = [Float](repeating: .nan, count: q.count)
        var out2Span = out2.mutableSpan, denseSpan = dense.mutableSpan
        if half {
            store.attend(id, layer: layer, queries: qh.span, layout: layout, queryPositions: positions, into: &out2Span, weights: &denseSpan)
        } else {
            store.attend(id, layer: layer, queries: q.span, layout: layout, queryPositions: positions, into: &out2Span, weights: &denseSpan)
        }
        #expect(out2.map(\.bitPattern) == out.map(\.bitPattern), "the dense-weights form computes the same output")
        let o = layout == .tokenMajor ? headMajor(out, heads: hq, tokens: n, d: d) : out
        return (o, w, dense)
    }

    static func expectSameRows(_ a: KVStore, _ b: KVStore, _ ia: SequenceID, _ ib: SequenceID, _ context: String) {
        for l in 0..<a.configuration.layerCount {
            for h in 0..<a.configuration.kvHeadCount {
                let ra = a.rows(ia, layer: l, kvHead: h), rb = b.rows(ib, layer: l, kvHead: h)
                #expect(ra.positions == rb.positions && ra.tiers == rb.tiers, "\(context) layer \(l) head \(h)")
                #expect(ra.keys.map(\.bitPattern) == rb.keys.map(\.bitPattern), "\(context) keys layer \(l) head \(h)")
                #expect(ra.values.map(\.bitPattern) == rb.values.map(\.bitPattern), "\(context) values layer \(l) head \(h)")
            }
        }
    }

    /// Nasty shapes: one token, head dims 1, 7, 9, 63 (not multiples of 8), GQA groups 1–3, MHA; tokens
    /// moved down tiers between appends so attention reads every tier.
    @Test func zeroCopyFormsMatchArrayForms() throws {
        let shapes = [(kv: 1, group: 1, d: 1), (kv: 2, group: 3, d: 7), (kv: 3, group: 2, d: 9), (kv: 1, group: 3, d: 63),
                      (kv: 2, group: 1, d: 64), (kv: 2, group: 2, d: 16)]
        for (s, shape) in shapes.enumerated() {
            for layout in [KVBufferLayout.headMajor, .tokenMajor] {
                for half in [false, true] {
                    var g = SeededGenerator(seed: 14_000 + UInt64(s) * 4 + (layout == .tokenMajor ? 2 : 0) + (half ? 1 : 0))
                    let context = "seed \(g.seed) shape \(shape) \(layout) \(half ? "FP16" : "FP32")"
                    let c = KVStoreConfiguration(layerCount: 2, queryHeadCount: shape.kv * shape.group, kvHeadCount: shape.kv,
                                                 headDim: shape.d, pageCapacity: 8)
                    let a = try KVStore(c), b = try KVStore(c)
                    let ia = a.addSequence(), ib = b.addSequence()
                    var appended = 0
                    for chunk in [1, 13, 1, 5] {
                        for l in 0..<c.layerCount {
                            var k = randomRows(shape.kv * chunk * shape.d, using: &g), v = randomRows(shape.kv * chunk * shape.d, using: &g)
                            if half { k = k.map { Float(Float16($0)) }; v = v.map { Float(Float16($0)) } }
                            try a.append(ia, layer: l, keys: k, values: v)
                            try Self.append(b, ib, layer: l, keys: k, values: v, tokens: chunk, layout: layout, half: half)
                        }
                        appended += chunk
                        // Move a few older tokens down, identically in both.
                        let plan = RetentionPlan(streams: (0..<shape.kv).map { h in
                            StreamPlan(layer: 1, kvHead: h, moves: (0..<Int32(appended / 2)).compactMap { p in
                                g.next() % 3 == 0 ? StreamPlan.Move(position: p, tier: .int4) : nil
                            })
                        })
                        try a.apply(plan, to: ia)
                        try b.apply(plan, to: ib)
                        Self.expectSameRows(a, b, ia, ib, context)
                        for l in 0..<c.layerCount {
                            for (n, positions) in [(1, nil), (3, [Int32(0), Int32(appended / 2), Int32(appended - 1)] as [Int32]?)] {
                                var q = randomRows(c.queryHeadCount * n * shape.d, using: &g)
                                if half { q = q.map { Float(Float16($0)) } }
                                let expected = a.attend(ia, layer: l, queries: q, queryCount: n, queryPositions: positions, returnWeights: true)
                                let got = Self.attend(b, ib, layer: l, queries: q, queryCount: n, positions: positions, layout: layout, half: half)
                                #expect(got.output.map(\.bitPattern) == expected.output.map(\.bitPattern), "\(context) layer \(l) queries \(n)")
                                let ew = expected.weights!
                                #expect(got.weights.map(\.positions) == ew.map(\.positions) && got.weights.map(\.weights) == ew.map(\.weights),
                                        "\(context) weights layer \(l) queries \(n)")
                                // Dense weights: each stored token's weight at its position, 0 elsewhere.
                                var dense = [Float](repeating: 0, count: c.queryHeadCount * n * appended)
                                for w in ew {
                                    for gh in 0..<c.groupSize {
                                        for i in 0..<n {
                                            let row = w.row(groupHead: gh, query: i)
                                            for (k, p) in w.positions.enumerated() {
                                                dense[((w.kvHead * c.groupSize + gh) * n + i) * appended + Int(p)] = row[row.startIndex + k]
                                            }
                                        }
                                    }
                                }
                                #expect(got.dense == dense, "\(context) dense weights layer \(l) queries \(n)")
                            }
                        }
                    }
                }
            }
        }
    }

    /// A value no format stores is refused in either layout and precision, named by (head, token,
    /// element), and the store is unchanged.
    @Test func unstorableValuesLeaveTheStoreUnchanged() throws {
        let c = KVStoreConfiguration(layerCount: 1, queryHeadCount: 4, kvHeadCount: 2, headDim: 9, pageCapacity: 4)
        var g = SeededGenerator(seed: 14_100)
        for layout in [KVBufferLayout.headMajor, .tokenMajor] {
            for half in [false, true] {
                for bad in [Float.infinity, -.infinity, .nan] + (half ? [] : [70_000]) {
                    let store = try KVStore(c), id = store.addSequence()
                    try store.append(id, layer: 0, keys: randomRows(2 * 3 * 9, using: &g), values: randomRows(2 * 3 * 9, using: &g))
                    let before = (0..<2).map { store.rows(id, layer: 0, kvHead: $0) }, bytes = store.byteCount
                    let tokens = 5, head = Int(g.next() % 2), token = Int(g.next() % 5), element = Int(g.next() % 9)
                    let k = randomRows(2 * tokens * 9, using: &g).map { Float(Float16($0)) }
                    let v = randomRows(2 * tokens * 9, using: &g).map { Float(Float16($0)) }
                    let valuesBad = g.next() % 2 == 0
                    var target = valuesBad ? v : k
                    target[(head * tokens + token) * 9 + element] = bad
                    let context = "seed \(g.seed) \(layout) \(half ? "FP16" : "FP32") \(bad) in \(valuesBad ? "values" : "keys")"
                    do {
                        try Self.append(store, id, layer: 0, keys: valuesBad ? k : target, values: valuesBad ? target : v, tokens: tokens,
                                        layout: layout, half: half)
                        Issue.record("\(context): accepted")
                    } catch {
                        guard case .invalidValue(0, head, token, element, let q) = error else { Issue.record("\(context): \(error)"); continue }
                        #expect(q.index == element, "\(context)")
                        switch q {
                        case .nonFinite(_, let x): #expect(!bad.isFinite && (x.isNaN ? bad.isNaN : x == bad), "\(context): \(q)")
                        case .outOfRange(_, let x): #expect(x == bad, "\(context): \(q)")
                        }
                    }
                    #expect(store.byteCount == bytes && store.nextPosition(of: id, layer: 0) == 3, "\(context)")
                    for h in 0..<2 {
                        let r = store.rows(id, layer: 0, kvHead: h)
                        #expect(r.positions == before[h].positions && r.keys == before[h].keys && r.values == before[h].values, "\(context)")
                    }
                }
            }
        }
    }

    /// An empty append is a no-op in every form.
    @Test func emptyAppend() throws {
        let store = try KVStore(KVStoreConfiguration(layerCount: 1, queryHeadCount: 2, kvHeadCount: 1, headDim: 8))
        let id = store.addSequence()
        let none = [Float](), noneHalf = [Float16]()
        try store.append(id, layer: 0, keys: none.span, values: none.span, layout: .tokenMajor)
        try store.append(id, layer: 0, keys: noneHalf.span, values: noneHalf.span)
        #expect(store.nextPosition(of: id, layer: 0) == 0 && store.byteCount == 0)
    }

    static func store() -> (KVStore, SequenceID) {
        let s = try! KVStore(KVStoreConfiguration(layerCount: 1, queryHeadCount: 2, kvHeadCount: 1, headDim: 8, pageCapacity: 4))
        let id = s.addSequence()
        try! s.append(id, layer: 0, keys: [Float](repeating: 1, count: 16), values: [Float](repeating: 1, count: 16))
        return (s, id)
    }

    /// A non-finite query, or one whose scores could overflow FP32, is a caller bug: attention would
    /// silently give zeros, so `attend` traps (FP32 and FP16 queries, every form); a query just under
    /// `maximumQueryL1Norm` attends to a finite output.
    @Test func nonFiniteOrOverflowingQueriesTrap() async {
        let (s, id) = ZeroCopyTests.store()
        let limit = s.configuration.maximumQueryL1Norm
        var q = [Float](repeating: 0, count: 16)
        q[0] = Float(limit * 0.99)
        let output = s.attend(id, layer: 0, queries: q).output
        #expect(output.allSatisfy { $0.isFinite })
        await #expect(processExitsWith: .failure) {
            let (s, id) = ZeroCopyTests.store()
            var q = [Float](repeating: 0, count: 16)
            q[3] = .nan
            _ = s.attend(id, layer: 0, queries: q)
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = ZeroCopyTests.store()
            var q = [Float](repeating: 1, count: 16)
            q[9] = Float(s.configuration.maximumQueryL1Norm)  // the row's norm exceeds the limit by 7
            var out = [Float](repeating: 0, count: 16)
            var o = out.mutableSpan
            s.attend(id, layer: 0, queries: q.span, into: &o)
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = ZeroCopyTests.store()
            var q = [Float16](repeating: 0, count: 16)
            q[15] = .infinity
            var out = [Float](repeating: 0, count: 16)
            var o = out.mutableSpan
            s.attend(id, layer: 0, queries: q.span, layout: .tokenMajor, into: &o)
        }
    }

    /// `validateQueries` applies `attend`'s rule as a typed error, naming the first bad row in
    /// `[head][query]` order in either layout, and passes rows `attend` accepts.
    @Test func validateQueriesNamesTheFirstBadRow() throws {
        let (s, id) = ZeroCopyTests.store()
        let limit = s.configuration.maximumQueryL1Norm
        // 2 query heads × 3 queries × 8, token-major: row (head h, query t) starts at (t·2 + h)·8.
        var q = [Float](repeating: 0.5, count: 48)
        q[(1 * 2 + 0) * 8 + 2] = Float(limit * 2)  // head 0, query 1: norm over the limit
        q[(0 * 2 + 1) * 8 + 5] = .nan  // head 1, query 0
        q[(2 * 2 + 0) * 8] = -.infinity  // head 0, query 2
        #expect {
            try s.validateQueries(q.span, layer: 0, layout: .tokenMajor)
        } throws: { error in
            guard case .invalidQuery(layer: 0, head: 0, token: 1, let norm)? = error as? KVStoreError else { return false }
            return norm > limit && norm.isFinite
        }
        q[(1 * 2 + 0) * 8 + 2] = Float(limit * 0.99)
        #expect {
            try s.validateQueries(q.span, layer: 0, layout: .tokenMajor)
        } throws: { error in
            guard case .invalidQuery(layer: 0, head: 0, token: 2, let norm)? = error as? KVStoreError else { return false }
            return norm.isInfinite
        }
        q[(2 * 2 + 0) * 8] = 0
        #expect {
            try s.validateQueries(q.span, layer: 0, layout: .tokenMajor)
        } throws: { error in
            guard case .invalidQuery(layer: 0, head: 1, token: 0, let norm)? = error as? KVStoreError else { return false }
            return norm.isNaN
        }
        q[(0 * 2 + 1) * 8 + 5] = 0
        try s.validateQueries(q.span, layer: 0, layout: .tokenMajor)
        var out = [Float](repeating: 0, count: 48)
        var o = out.mutableSpan
        s.attend(id, layer: 0, queries: q.span, layout: .tokenMajor, queryPositions: [0, 1, 1], into: &o)
        #expect(out.allSatisfy { $0.isFinite })
        // Head-major order: head 1's first row is values 24..<32.
        var h = [Float](repeating: 0, count: 48)
        h[24] = .infinity
        #expect(throws: KVStoreError.invalidQuery(layer: 0, head: 1, token: 0, l1Norm: .infinity)) {
            try s.validateQueries(h.span, layer: 0)
        }
    }

    /// Wrong buffer sizes are caller bugs: they trap with a message.
    @Test func sizeMisuseTraps() async {
        await #expect(processExitsWith: .failure) {
            let (s, id) = ZeroCopyTests.store(), k = [Float](repeating: 0, count: 16), v = [Float](repeating: 0, count: 8)
            try? s.append(id, layer: 0, keys: k.span, values: v.span)  // keys and values differ
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = ZeroCopyTests.store(), k = [Float16](repeating: 0, count: 12)
            try? s.append(id, layer: 0, keys: k.span, values: k.span, layout: .tokenMajor)  // not a whole token
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = ZeroCopyTests.store(), q = [Float](repeating: 0, count: 16)
            var out = [Float](repeating: 0, count: 8)
            var o = out.mutableSpan
            s.attend(id, layer: 0, queries: q.span, into: &o)  // output too short
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = ZeroCopyTests.store(), q = [Float16](repeating: 0, count: 0)
            var out = [Float](repeating: 0, count: 0)
            var o = out.mutableSpan
            s.attend(id, layer: 0, queries: q.span, into: &o)  // no query
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = ZeroCopyTests.store(), q = [Float](repeating: 0, count: 16)
            var out = [Float](repeating: 0, count: 16), w = [Float](repeating: 0, count: 3)
            var o = out.mutableSpan, ws = w.mutableSpan
            s.attend(id, layer: 0, queries: q.span, into: &o, weights: &ws)  // weights not 2 heads × 1 query × 2 positions
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = ZeroCopyTests.store(), q = [Float](repeating: 0, count: 32)
            var out = [Float](repeating: 0, count: 32)
            var o = out.mutableSpan
            s.attend(id, layer: 0, queries: q.span, layout: .tokenMajor, queryPositions: [1], into: &o)  // 2 queries, 1 position
        }
    }
}
