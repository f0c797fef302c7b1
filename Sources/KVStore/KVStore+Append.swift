import KVQuantization

extension KVStore {
    // MARK: Appending

    /// Appends tokens to every KV head of `layer` at FP16, at the next positions, reading the
    /// caller's buffers in place (no copy, no heap allocation).
    ///
    /// `keys` and `values` each hold `kvHeadCount · tokenCount · headDim` values in `layout`
    /// (`[kvHead][token][headDim]` or `[token][kvHead][headDim]`); the token count is inferred. One
    /// prefill chunk, or one decode token. FP32 values are rounded to FP16 (round to nearest even,
    /// `EncodeKernels.floatToHalf`); FP16 values are stored as they are, so an FP16 buffer stores
    /// exactly what the FP32 buffer of its widened values does.
    ///
    /// ```swift
    /// // A model's projections, [token][kvHead][headDim], appended without a transpose:
    /// try store.append(id, layer: l, keys: k.span, values: v.span, layout: .tokenMajor)
    /// ```
    ///
    /// In a layer with a sliding window W (`KVStoreConfiguration.layerSlidingWindows`), the append
    /// first releases every page whose tokens all lie at or before `first − W`, `first` being the
    /// first appended position: no query from `first` on can see them. Then each stream of the
    /// layer holds at most W − 1 + `tokenCount` tokens inside the window plus, per stored tier,
    /// fewer than one page capacity of older tokens (the page straddling the window's start), which
    /// attention masks.
    ///
    /// - Throws: `KVStoreError.invalidValue` for a non-finite or (FP32) out-of-range value: the first
    ///   in buffer order, keys checked before values, named by (KV head, token, element) whatever the
    ///   layout; `.byteLimitExceeded` if the new pages do not fit. On error nothing changes, except
    ///   that a windowed layer's invisible pages may have been released.
    /// - Precondition: `keys.count == values.count`, a whole number of tokens (caller bugs trap).
    /// - Complexity: O(kvHeads · tokenCount · headDim).
    public func append(_ id: SequenceID, layer: Int, keys: Span<Float>, values: Span<Float>,
                       layout: KVBufferLayout = .headMajor) throws(KVStoreError) {
        let tokens = appendedTokenCount(keys.count, values.count)
        try keys.withUnsafeBufferPointer { (k) throws(KVStoreError) in
            try values.withUnsafeBufferPointer { (v) throws(KVStoreError) in
                try append(id, layer: layer, keys: rows(k, layout, tokens), values: rows(v, layout, tokens))
            }
        }
    }

    /// `append` of FP16 keys and values (stored as they are: no rounding). See the FP32 form.
    public func append(_ id: SequenceID, layer: Int, keys: Span<Float16>, values: Span<Float16>,
                       layout: KVBufferLayout = .headMajor) throws(KVStoreError) {
        let tokens = appendedTokenCount(keys.count, values.count)
        try keys.withUnsafeBufferPointer { (k) throws(KVStoreError) in
            try values.withUnsafeBufferPointer { (v) throws(KVStoreError) in
                try append(id, layer: layer, keys: rows(k, layout, tokens), values: rows(v, layout, tokens))
            }
        }
    }

    /// Array form of `append`: `keys` and `values` are `[kvHead][token][headDim]`; the token count
    /// is inferred.
    public func append(_ id: SequenceID, layer: Int, keys: [Float], values: [Float]) throws(KVStoreError) {
        try append(id, layer: layer, keys: keys.span, values: values.span)
    }

    private func appendedTokenCount(_ keyCount: Int, _ valueCount: Int) -> Int {
        let per = configuration.kvHeadCount * configuration.headDim
        precondition(keyCount == valueCount && keyCount % per == 0,
                     "KVStore.append: keys and values must hold the same whole number of tokens × kvHeadCount × headDim = \(per) values, got \(keyCount) keys and \(valueCount) values")
        return keyCount / per
    }

    private func rows(_ b: UnsafeBufferPointer<Float>, _ layout: KVBufferLayout, _ tokens: Int) -> UnsafeCallerRows {
        UnsafeCallerRows(b, layout: layout, heads: configuration.kvHeadCount, tokens: tokens, headDim: configuration.headDim)
    }

    private func rows(_ b: UnsafeBufferPointer<Float16>, _ layout: KVBufferLayout, _ tokens: Int) -> UnsafeCallerRows {
        UnsafeCallerRows(b, layout: layout, heads: configuration.kvHeadCount, tokens: tokens, headDim: configuration.headDim)
    }

    /// The one append path: checks every value, then encodes the caller's rows straight into the
    /// streams' FP16 pages under the lock.
    func append(_ id: SequenceID, layer: Int, keys: UnsafeCallerRows, values: UnsafeCallerRows) throws(KVStoreError) {
        let c = configuration, tokenCount = keys.tokens
        precondition(0 <= layer && layer < c.layerCount, "KVStore.append: layer \(layer) outside 0..<\(c.layerCount)")
        guard tokenCount > 0 else { return }
        // Check first: nothing changes unless every value is storable.
        for source in [keys, values] {
            if let e = source.firstUnstorable() {
                throw .invalidValue(layer: layer, kvHead: e.head, token: e.token, element: e.element, e.error)
            }
        }
        let layout = codecs[layer][0][0].layout, limit = c.byteLimit, pool = pool
        let result: KVStoreError? = state.withLock { s in
            guard var sequence = s.sequences[id] else { preconditionFailure("KVStore.append: unknown sequence \(id)") }
            s.sequences[id] = nil  // hold the only reference while mutating (copy-on-write stays exact)
            defer { s.sequences[id] = sequence }
            let first = sequence.layers[layer].nextPosition
            precondition(Int(first) + tokenCount <= Int(Int32.max), "KVStore.append: positions exhausted")
            if let w = c.slidingWindow(layer: layer), Int(first) - w >= 0 {
                // No query at or after `first` sees positions ≤ first − W: release their pages now
                // (before the byte-limit check, so the freed bytes count).
                for h in 0..<c.kvHeadCount { sequence.layers[layer].streams[h].evictPages(through: first - Int32(w)) }
            }
            var cost = 0
            for h in 0..<c.kvHeadCount {
                cost += sequence.layers[layer].streams[h].appendCost(tokenCount, firstPosition: first, layout: layout)
            }
            if let limit, pool.bytesInUse + cost > limit {
                return .byteLimitExceeded(requestedBytes: cost, availableBytes: max(0, limit - pool.bytesInUse))
            }
            for h in 0..<c.kvHeadCount {
                sequence.layers[layer].streams[h].appendFP16(count: tokenCount, firstPosition: first, layout: layout, pool: pool) {
                    tokens, keyRows, valueRows in
                    keys.encodeFP16(head: h, tokens: tokens, into: keyRows)
                    values.encodeFP16(head: h, tokens: tokens, into: valueRows)
                }
            }
            sequence.layers[layer].nextPosition = first + Int32(tokenCount)
            return nil
        }
        if let result { throw result }
    }

    /// Releases the pages of a windowed layer that no later query can see: those whose tokens all
    /// lie at or before `nextPosition − W` (the next query, at `nextPosition`, sees from
    /// `nextPosition − W + 1`). A model calls it after a chunk's attention, so that between forward
    /// passes each stream of the layer holds at most W tokens plus, per stored tier, fewer than one
    /// page capacity of older ones. No-op for a layer without a window. O(pages).
    public func releaseOutsideWindow(_ id: SequenceID, layer: Int) {
        let c = configuration
        precondition(0 <= layer && layer < c.layerCount, "KVStore.releaseOutsideWindow: layer \(layer) outside 0..<\(c.layerCount)")
        guard let w = c.slidingWindow(layer: layer) else { return }
        state.withLock { s in
            guard var sequence = s.sequences[id] else { preconditionFailure("KVStore.releaseOutsideWindow: unknown sequence \(id)") }
            let cutoff = Int(sequence.layers[layer].nextPosition) - w
            guard cutoff >= 0 else { return }
            s.sequences[id] = nil  // hold the only reference while mutating
            for h in 0..<c.kvHeadCount { sequence.layers[layer].streams[h].evictPages(through: Int32(cutoff)) }
            s.sequences[id] = sequence
        }
    }
}
