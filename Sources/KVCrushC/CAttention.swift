import CKVCrush
import KVCrush

// Appending and attention of kvcrush.h, and the buffer conversions they share.

/// A caller's `[head][token][headDim]` or `[token][head][headDim]` buffer of FP32 or FP16 values.
struct InputBuffer {
    let base: UnsafeRawPointer
    let dtype: kvcrush_dtype
    let layout: kvcrush_layout
    let heads: Int, tokens: Int, headDim: Int

    init(_ base: UnsafeRawPointer?, _ argument: String, elementCount: Int, heads: Int, tokens: Int, headDim: Int,
         dtype: kvcrush_dtype, layout: kvcrush_layout) throws(CFailure) {
        self.base = try required(base, argument)
        guard dtype == KVCRUSH_F32 || dtype == KVCRUSH_F16 else { throw .argument("unknown dtype \(dtype.rawValue)") }
        guard layout == KVCRUSH_LAYOUT_HEAD_MAJOR || layout == KVCRUSH_LAYOUT_TOKEN_MAJOR else {
            throw .argument("unknown layout \(layout.rawValue)")
        }
        let expected = try product(heads, tokens, headDim, what: "\(argument) element count")
        guard elementCount == expected else {
            throw .argument("\(argument) has \(elementCount) elements, expected \(expected) (\(heads) heads x \(tokens) tokens x \(headDim))")
        }
        (self.dtype, self.layout, self.heads, self.tokens, self.headDim) = (dtype, layout, heads, tokens, headDim)
    }

    var count: Int { heads * tokens * headDim }

    /// Whether the values can be read in place as `[head][token][headDim]` floats.
    var isHeadMajorFloat: Bool { dtype == KVCRUSH_F32 && (layout == KVCRUSH_LAYOUT_HEAD_MAJOR || heads == 1 || tokens == 1) }

    /// The values as `[head][token][headDim]` floats: the caller's memory when it already is that,
    /// else a converted copy.
    func withHeadMajorFloats<R, E: Error>(_ body: (UnsafeBufferPointer<Float>) throws(E) -> R) throws(E) -> R {
        if isHeadMajorFloat {
            return try body(UnsafeBufferPointer(start: base.assumingMemoryBound(to: Float.self), count: count))
        }
        let converted = [Float](unsafeUninitializedCapacity: count) { out, initialized in
            let d = headDim
            for h in 0..<heads {
                for t in 0..<tokens {
                    let src = (layout == KVCRUSH_LAYOUT_HEAD_MAJOR ? h * tokens + t : t * heads + h) * d, dst = (h * tokens + t) * d
                    if dtype == KVCRUSH_F32 {
                        let p = base.assumingMemoryBound(to: Float.self)
                        for e in 0..<d { out[dst + e] = p[src + e] }
                    } else {
                        let p = base.assumingMemoryBound(to: UInt16.self)
                        for e in 0..<d { out[dst + e] = Float(Float16(bitPattern: p[src + e])) }
                    }
                }
            }
            initialized = count
        }
        return try converted.withUnsafeBufferPointer { (b) throws(E) -> R in try body(b) }
    }

    /// The values as a `[head][token][headDim]` array, each checked to be finite.
    func headMajorFiniteArray(_ argument: String) throws(CFailure) -> [Float] {
        let values = withHeadMajorFloats { Array($0) }
        if let i = values.firstIndex(where: { !$0.isFinite }) {
            let d = headDim, row = i / d
            throw .value("\(argument)[head \(row / tokens)][token \(row % tokens)][element \(i % d)] is \(values[i]); values must be finite")
        }
        return values
    }
}

/// Writes `[head][token][headDim]` floats to a caller's buffer in `layout`.
func write(_ values: [Float], to out: UnsafeMutablePointer<Float>, heads: Int, tokens: Int, headDim d: Int, layout: kvcrush_layout) {
    values.withUnsafeBufferPointer { v in
        if layout == KVCRUSH_LAYOUT_HEAD_MAJOR || heads == 1 || tokens == 1 {
            out.update(from: v.baseAddress!, count: v.count)
            return
        }
        for h in 0..<heads {
            for t in 0..<tokens { (out + (t * heads + h) * d).update(from: v.baseAddress! + (h * tokens + t) * d, count: d) }
        }
    }
}

@_cdecl("kvcrush_append")
public func kvcrushAppend(_ store: OpaquePointer?, _ sequence: UInt64, _ layer: Int32, _ keys: UnsafeRawPointer?,
                          _ values: UnsafeRawPointer?, _ elementCount: Int, _ tokenCount: Int,
                          _ dtype: kvcrush_dtype, _ layout: kvcrush_layout) -> kvcrush_status {
    cCall("kvcrush_append") { () throws(CFailure) in
        let h = try StoreHandle.from(store), c = h.store.configuration
        let k = try InputBuffer(keys, "keys", elementCount: elementCount, heads: c.kvHeadCount, tokens: tokenCount, headDim: c.headDim,
                                dtype: dtype, layout: layout)
        let v = try InputBuffer(values, "values", elementCount: elementCount, heads: c.kvHeadCount, tokens: tokenCount, headDim: c.headDim,
                                dtype: dtype, layout: layout)
        try h.writing { () throws(CFailure) in
            let id = try h.sequence(sequence), l = try h.layer(layer)
            let next = h.store.nextPosition(of: id, layer: l)
            guard tokenCount <= Int(Int32.max) - next else {
                throw .argument("\(tokenCount) tokens after \(next) exceed the \(Int32.max) positions of a layer")
            }
            let failure: KVStoreError? = k.withHeadMajorFloats { kf in
                v.withHeadMajorFloats { vf in
                    do throws(KVStoreError) { try h.store.append(id, layer: l, keys: kf, values: vf, tokenCount: tokenCount) } catch { return error }
                    return nil
                }
            }
            switch failure {
            case nil: break
            case .byteLimitExceeded?: throw CFailure(status: KVCRUSH_ERROR_BYTE_LIMIT, message: failure!.description)
            case .invalidValue?: throw .value(failure!.description)
            }
        }
    }
}

/// Checked arguments of an attention call.
struct AttendCall {
    let queries: [Float]
    let queryCount: Int
    let layout: kvcrush_layout
    let output: UnsafeMutablePointer<Float>

    init(_ c: KVStoreConfiguration, queries: UnsafeRawPointer?, queryElementCount: Int, queryCount: Int, dtype: kvcrush_dtype,
         layout: kvcrush_layout, output: UnsafeMutablePointer<Float>?, outputElementCount: Int) throws(CFailure) {
        guard queryCount >= 1 && queryCount <= Int(Int32.max) else { throw .argument("query_count must be in 1...\(Int32.max), got \(queryCount)") }
        let q = try InputBuffer(queries, "queries", elementCount: queryElementCount, heads: c.queryHeadCount, tokens: queryCount,
                                headDim: c.headDim, dtype: dtype, layout: layout)
        self.output = try required(output, "output")
        guard outputElementCount == q.count else {
            throw .argument("output has \(outputElementCount) elements, expected \(q.count) (the queries' count)")
        }
        self.queries = try q.headMajorFiniteArray("queries")
        try checkScoreRange(self.queries, "queries", c, queryCount: queryCount)
        (self.queryCount, self.layout) = (queryCount, layout)
    }

    func write(_ result: AttentionResult, _ c: KVStoreConfiguration) {
        KVCrushC.write(result.output, to: output, heads: c.queryHeadCount, tokens: queryCount, headDim: c.headDim, layout: layout)
    }
}

@_cdecl("kvcrush_attend")
public func kvcrushAttend(_ store: OpaquePointer?, _ sequence: UInt64, _ layer: Int32, _ queries: UnsafeRawPointer?,
                          _ queryElementCount: Int, _ queryCount: Int, _ dtype: kvcrush_dtype, _ layout: kvcrush_layout,
                          _ queryPositions: UnsafePointer<Int32>?, _ output: UnsafeMutablePointer<Float>?, _ outputElementCount: Int,
                          _ weights: UnsafeMutablePointer<Float>?, _ weightCount: Int) -> kvcrush_status {
    cCall("kvcrush_attend") { () throws(CFailure) in
        let h = try StoreHandle.from(store), c = h.store.configuration
        let call = try AttendCall(c, queries: queries, queryElementCount: queryElementCount, queryCount: queryCount, dtype: dtype,
                                  layout: layout, output: output, outputElementCount: outputElementCount)
        let positions = queryPositions.map { Array(UnsafeBufferPointer(start: $0, count: queryCount)) }
        try h.reading { () throws(CFailure) in
            let id = try h.sequence(sequence), l = try h.layer(layer)
            let length = h.store.nextPosition(of: id, layer: l)
            if weights != nil {
                let expected = try product(c.queryHeadCount, queryCount, length, what: "weight count")
                guard weightCount == expected else {
                    throw .argument("weights has \(weightCount) elements, expected \(expected) (\(c.queryHeadCount) query heads x \(queryCount) queries x \(length) positions)")
                }
            }
            let result = h.store.attend(id, layer: l, queries: call.queries, queryCount: queryCount,
                                        queryPositions: positions ?? Array(repeating: Int32(length) - 1, count: queryCount),
                                        returnWeights: weights != nil, threadCount: h.attendThreads)
            call.write(result, c)
            if let weights { scatter(result.weights!, into: weights, c, queryCount: queryCount, length: length) }
        }
    }
}

/// Writes per-KV-head weights as dense `[queryHead][query][position]` rows over `0 ..< length`.
func scatter(_ heads: [KVHeadWeights], into out: UnsafeMutablePointer<Float>, _ c: KVStoreConfiguration, queryCount: Int, length: Int) {
    out.initialize(repeating: 0, count: c.queryHeadCount * queryCount * length)
    for w in heads {
        for g in 0..<c.groupSize {
            let qh = w.kvHead * c.groupSize + g
            for i in 0..<queryCount {
                let row = w.row(groupHead: g, query: i), base = out + (qh * queryCount + i) * length
                for (k, p) in w.positions.enumerated() { base[Int(p)] = row[row.startIndex + k] }
            }
        }
    }
}

/// Refuses query rows whose scores could overflow FP32 against stored keys (|k| <= 65504): the
/// store's softmax would then return zero weights and outputs, not an error. |scale · q·k| <=
/// scale · ‖q‖₁ · √d · 65504 for every tier (a rotation keeps ‖q‖₂, and ‖Rq‖₁ <= √d‖q‖₂ <= √d‖q‖₁),
/// required below a quarter of `Float.greatestFiniteMagnitude` (room for the reordered sums).
func checkScoreRange(_ queries: [Float], _ argument: String, _ c: KVStoreConfiguration, queryCount: Int) throws(CFailure) {
    let d = c.headDim, limit = Double(Float.greatestFiniteMagnitude) / 4
    let factor = Double(c.effectiveAttentionScale) * Double(d).squareRoot() * 65504
    for row in 0..<(queries.count / d) {
        var norm = 0.0
        for e in 0..<d { norm += Double(abs(queries[row * d + e])) }
        guard norm * factor <= limit else {
            throw .value("\(argument): query \(row % queryCount) of head \(row / queryCount) is so large (L1 norm \(norm)) that q.k can overflow FP32")
        }
    }
}
