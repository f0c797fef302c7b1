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

    var storeLayout: KVBufferLayout { layout == KVCRUSH_LAYOUT_HEAD_MAJOR ? .headMajor : .tokenMajor }
    var floats: UnsafeBufferPointer<Float> { UnsafeBufferPointer(start: base.assumingMemoryBound(to: Float.self), count: count) }
    var halves: UnsafeBufferPointer<Float16> { UnsafeBufferPointer(start: base.assumingMemoryBound(to: Float16.self), count: count) }

    /// Value `e` of row (`h`, `t`), widened to FP32.
    func value(head h: Int, token t: Int, element e: Int) -> Float {
        let i = (layout == KVCRUSH_LAYOUT_HEAD_MAJOR ? h * tokens + t : t * heads + h) * headDim + e
        return dtype == KVCRUSH_F32 ? base.assumingMemoryBound(to: Float.self)[i] : Float(base.assumingMemoryBound(to: Float16.self)[i])
    }

    /// The values as a `[head][token][headDim]` array (a copy).
    func headMajorArray() -> [Float] {
        var out = [Float]()
        out.reserveCapacity(count)
        for h in 0..<heads { for t in 0..<tokens { for e in 0..<headDim { out.append(value(head: h, token: t, element: e)) } } }
        return out
    }

    /// Refuses query rows with a non-finite value (the first in `[head][token][element]` order), or
    /// whose scores could overflow FP32 against stored keys: an L1 norm above
    /// `KVStoreConfiguration.maximumQueryL1Norm` (where `KVStore.attend` would trap). Reads in place.
    func checkQueries(_ argument: String, _ c: KVStoreConfiguration) throws(CFailure) {
        let d = headDim, limit = c.maximumQueryL1Norm
        for h in 0..<heads {
            for t in 0..<tokens {
                var norm = 0.0
                for e in 0..<d {
                    let x = value(head: h, token: t, element: e)
                    guard x.isFinite else { throw .value("\(argument)[head \(h)][token \(t)][element \(e)] is \(x); values must be finite") }
                    norm += Double(abs(x))
                }
                guard norm <= limit else {
                    throw .value("\(argument): query \(t) of head \(h) is so large (L1 norm \(norm)) that q.k can overflow FP32")
                }
            }
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
            let failure: KVStoreError?
            do throws(KVStoreError) {
                if dtype == KVCRUSH_F32 {
                    try h.store.append(id, layer: l, keys: k.floats.span, values: v.floats.span, layout: k.storeLayout)
                } else {
                    try h.store.append(id, layer: l, keys: k.halves.span, values: v.halves.span, layout: k.storeLayout)
                }
                failure = nil
            } catch { failure = error }
            switch failure {
            case nil: break
            case .byteLimitExceeded?: throw CFailure(status: KVCRUSH_ERROR_BYTE_LIMIT, message: failure!.description)
            case .invalidValue?, .invalidQuery?: throw .value(failure!.description)
            }
        }
    }
}

/// Checked arguments of an attention call: the caller's queries and output, used in place.
struct AttendCall {
    let queries: InputBuffer
    let output: UnsafeMutableBufferPointer<Float>

    init(_ c: KVStoreConfiguration, queries: UnsafeRawPointer?, queryElementCount: Int, queryCount: Int, dtype: kvcrush_dtype,
         layout: kvcrush_layout, output: UnsafeMutablePointer<Float>?, outputElementCount: Int) throws(CFailure) {
        guard queryCount >= 1 && queryCount <= Int(Int32.max) else { throw .argument("query_count must be in 1...\(Int32.max), got \(queryCount)") }
        let q = try InputBuffer(queries, "queries", elementCount: queryElementCount, heads: c.queryHeadCount, tokens: queryCount,
                                headDim: c.headDim, dtype: dtype, layout: layout)
        let out = try required(output, "output")
        guard outputElementCount == q.count else {
            throw .argument("output has \(outputElementCount) elements, expected \(q.count) (the queries' count)")
        }
        try q.checkQueries("queries", c)
        (self.queries, self.output) = (q, UnsafeMutableBufferPointer(start: out, count: q.count))
    }

    /// `KVStore.attend` from the caller's queries into the caller's output (and dense weights).
    func attend(_ store: KVStore, _ id: SequenceID, layer: Int, positions: [Int32], weights: UnsafeMutableBufferPointer<Float>?,
                returnWeights: Bool, threadCount: Int?) -> [KVHeadWeights]? {
        var out = output.mutableSpan
        let q = queries, layout = q.storeLayout
        if let weights {
            var w = weights.mutableSpan
            if q.dtype == KVCRUSH_F32 {
                store.attend(id, layer: layer, queries: q.floats.span, layout: layout, queryPositions: positions, into: &out, weights: &w,
                             threadCount: threadCount)
            } else {
                store.attend(id, layer: layer, queries: q.halves.span, layout: layout, queryPositions: positions, into: &out, weights: &w,
                             threadCount: threadCount)
            }
            return nil
        }
        if q.dtype == KVCRUSH_F32 {
            return store.attend(id, layer: layer, queries: q.floats.span, layout: layout, queryPositions: positions, into: &out,
                                returnWeights: returnWeights, threadCount: threadCount)
        }
        return store.attend(id, layer: layer, queries: q.halves.span, layout: layout, queryPositions: positions, into: &out,
                            returnWeights: returnWeights, threadCount: threadCount)
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
            _ = call.attend(h.store, id, layer: l, positions: positions ?? Array(repeating: Int32(length) - 1, count: queryCount),
                            weights: weights.map { UnsafeMutableBufferPointer(start: $0, count: weightCount) }, returnWeights: false,
                            threadCount: h.attendThreads)
        }
    }
}
