import KVQuantization

/// One layer of a KV dump: keys, values and queries as flat row-major `Float` arrays.
///
/// Layout (shape `s`, `d = s.headDim`):
///
///     keys, values   [kvHead][token][d]     element (g, t, i) at (g·s.tokenCount + t)·d + i
///     queries        [head][query][d]       query q is position s.queryStart + q;
///                                           element (h, q, i) at (h·s.queryCount + q)·d + i
///
/// Keys and queries are after RoPE, as attention reads them.
public struct KVDumpLayer: Sendable {
    /// The model's index of this layer (e.g. 15), not its position in the dump.
    public let index: Int
    /// The dimensions shared by the dump's layers.
    public let shape: KVDumpShape
    /// `[kvHeadCount, tokenCount, headDim]`, row-major.
    public let keys: [Float]
    /// `[kvHeadCount, tokenCount, headDim]`, row-major.
    public let values: [Float]
    /// `[headCount, queryCount, headDim]`, row-major.
    public let queries: [Float]
    /// The layer's sliding attention window W (a query at position q sees positions q − W + 1 … q),
    /// or `nil` for full causal attention (metadata `sliding_windows`).
    public let slidingWindow: Int?

    /// A layer from flat arrays.
    ///
    /// - Precondition: the arrays have `shape.kvElementCount`, `shape.kvElementCount` and
    ///   `shape.queryElementCount` elements; a window is positive.
    public init(index: Int, shape: KVDumpShape, keys: [Float], values: [Float], queries: [Float], slidingWindow: Int? = nil) {
        precondition(slidingWindow.map { $0 > 0 } ?? true, "KVDumpLayer: sliding window \(slidingWindow!) must be positive")
        precondition(keys.count == shape.kvElementCount,
                     "KVDumpLayer: \(keys.count) keys, expected \(shape.kvShape)")
        precondition(values.count == shape.kvElementCount,
                     "KVDumpLayer: \(values.count) values, expected \(shape.kvShape)")
        precondition(queries.count == shape.queryElementCount,
                     "KVDumpLayer: \(queries.count) queries, expected \(shape.queryShape)")
        self.index = index
        self.shape = shape
        self.keys = keys
        self.values = values
        self.queries = queries
        self.slidingWindow = slidingWindow
    }

    /// The positions a query at `position` attends to: the last `slidingWindow` up to it, or all.
    @inlinable public func visibleRange(queryPosition position: Int) -> Range<Int> {
        (slidingWindow.map { max(0, position + 1 - $0) } ?? 0)..<(position + 1)
    }

    /// Offset in `keys` / `values` of the first element of KV head `kvHead` at `token`.
    ///
    /// - Precondition: `0 <= kvHead < kvHeadCount` and `0 <= token < tokenCount`.
    @inlinable public func kvOffset(kvHead: Int, token: Int) -> Int {
        precondition((0..<shape.kvHeadCount).contains(kvHead), "KVDumpLayer: KV head \(kvHead) out of range")
        precondition((0..<shape.tokenCount).contains(token), "KVDumpLayer: token \(token) out of range")
        return (kvHead * shape.tokenCount + token) * shape.headDim
    }

    /// Offset in `queries` of the first element of query head `head` at `position`.
    ///
    /// - Precondition: `0 <= head < headCount` and `queryStart <= position < tokenCount`.
    @inlinable public func queryOffset(head: Int, position: Int) -> Int {
        precondition((0..<shape.headCount).contains(head), "KVDumpLayer: query head \(head) out of range")
        precondition((shape.queryStart..<shape.tokenCount).contains(position),
                     "KVDumpLayer: no query at position \(position) (queries cover \(shape.queryStart)..<\(shape.tokenCount))")
        return (head * shape.queryCount + position - shape.queryStart) * shape.headDim
    }

    /// The key vector (`headDim` elements) of KV head `kvHead` at `token`.
    @inlinable public func key(kvHead: Int, token: Int) -> ArraySlice<Float> {
        let o = kvOffset(kvHead: kvHead, token: token)
        return keys[o ..< o + shape.headDim]
    }

    /// The value vector (`headDim` elements) of KV head `kvHead` at `token`.
    @inlinable public func value(kvHead: Int, token: Int) -> ArraySlice<Float> {
        let o = kvOffset(kvHead: kvHead, token: token)
        return values[o ..< o + shape.headDim]
    }

    /// The query vector (`headDim` elements) of query head `head` at absolute `position`
    /// (`queryStart <= position < tokenCount`).
    @inlinable public func query(head: Int, position: Int) -> ArraySlice<Float> {
        let o = queryOffset(head: head, position: position)
        return queries[o ..< o + shape.headDim]
    }

    /// All keys of KV head `kvHead`: `tokenCount × headDim` elements, token-major.
    public func keys(kvHead: Int) -> ArraySlice<Float> {
        let o = kvOffset(kvHead: kvHead, token: 0)
        return keys[o ..< o + shape.tokenCount * shape.headDim]
    }

    /// All values of KV head `kvHead`: `tokenCount × headDim` elements, token-major.
    public func values(kvHead: Int) -> ArraySlice<Float> {
        let o = kvOffset(kvHead: kvHead, token: 0)
        return values[o ..< o + shape.tokenCount * shape.headDim]
    }
}
