import KVQuantization

/// One stream's stored tokens, decoded: the uniform view for runtimes that bring their own kernel.
public struct StreamRows: Sendable {
    /// Positions, ascending.
    public var positions: [Int32]
    /// The tier each token sits in.
    public var tiers: [Tier]
    /// Decoded keys, `[token][headDim]`.
    public var keys: [Float]
    /// Decoded values, `[token][headDim]`.
    public var values: [Float]
    public var count: Int { positions.count }
}

/// A stored token as the row reader visits it.
public struct StoredToken: Sendable, Hashable {
    public var position: Int32
    public var tier: Tier
}

extension KVStore {
    /// Visits every stored token of one stream in position order, with its key and value decoded
    /// into buffers lent to `body` (valid only during the call; `headDim` values each).
    ///
    /// Decoding is exactly what `attend` reads (`RowCodec.decode` / `ChannelwiseKeyCodec.decode`),
    /// un-rotated (Rᵀ, `HadamardRotation.unrotate`) for tiers the configuration keeps rotated.
    /// - Complexity: O(tokens · headDim) plus O(tokens · log tokens) to order them.
    public func forEachToken<E: Error>(_ id: SequenceID, layer: Int, kvHead: Int,
                                       _ body: (StoredToken, UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>) throws(E) -> Void) throws(E) {
        let stream = withStream(id, layer, kvHead, "forEachToken") { $0 }
        let d = configuration.headDim, rotations = LayerRotations(layer: layer, configuration: configuration)
        let entries = stream.entriesByPosition()
        let key = UnsafeMutableBufferPointer<Float>.allocate(capacity: d)
        let value = UnsafeMutableBufferPointer<Float>.allocate(capacity: d)
        defer { key.deallocate(); value.deallocate() }
        for e in entries {
            codecs[layer][kvHead][e.tier].decodeKey(e.page, e.slot, into: key.baseAddress!)
            codecs[layer][kvHead][e.tier].decodeValue(e.page, e.slot, into: value.baseAddress!)
            rotations.convert(key.baseAddress!, values: false, from: e.tier, to: 0)
            rotations.convert(value.baseAddress!, values: true, from: e.tier, to: 0)
            try body(StoredToken(position: e.position, tier: Tier(rawValue: e.tier)!), UnsafeBufferPointer(key), UnsafeBufferPointer(value))
        }
    }

    /// Every stored token of one stream, decoded, in position order.
    public func rows(_ id: SequenceID, layer: Int, kvHead: Int) -> StreamRows {
        var r = StreamRows(positions: [], tiers: [], keys: [], values: [])
        forEachToken(id, layer: layer, kvHead: kvHead) { (t: StoredToken, k: UnsafeBufferPointer<Float>, v: UnsafeBufferPointer<Float>) in
            r.positions.append(t.position)
            r.tiers.append(t.tier)
            r.keys.append(contentsOf: k)
            r.values.append(contentsOf: v)
        }
        return r
    }
}
