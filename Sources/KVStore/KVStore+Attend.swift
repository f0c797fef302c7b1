import Dispatch
import Foundation
import KVQuantization
import Synchronization

/// What `attend` returns.
public struct AttentionResult: Sendable {
    /// Attention outputs, `[queryHead][query][headDim]`.
    public var output: [Float]
    /// Per KV head, each stored token's attention weight (when asked for).
    public var weights: [KVHeadWeights]?
}

/// The attention weights one KV head's tokens received from its query group.
public struct KVHeadWeights: Sendable {
    public var kvHead: Int
    /// The stream's stored tokens, ascending.
    public var positions: [Int32]
    /// The tier of each token.
    public var tiers: [Tier]
    /// `[g][query][token]`: the weight query `query` of query head `kvHead·G + g` put on `token`
    /// (0 for tokens after the query's position). Each (g, query) row sums to 1 unless the query
    /// saw no token.
    public var weights: [Float]
    public var queryCount: Int

    /// Row of weights of group head `g`, query `i` (one per token in `positions`).
    public func row(groupHead g: Int, query i: Int) -> ArraySlice<Float> {
        let n = positions.count, start = (g * queryCount + i) * n
        return weights[start..<(start + n)]
    }
}

/// A pointer that threads may share because they write disjoint parts of it.
struct SharedBuffer<T>: @unchecked Sendable {
    let base: UnsafeMutablePointer<T>
}

extension KVStore {
    /// Fused decode attention of one sequence's layer: each query row attends over every stored
    /// token of its KV head's stream whose position is ≤ the query's (and, in a layer with a sliding
    /// window W, > the query's − W), whatever tier the token sits in, scaled by
    /// `configuration.effectiveAttentionScale`, softmax in FP32.
    ///
    /// Keys are scored in code space (FP16 rows converted on the fly, grouped rows as
    /// scale·Σq·c + zero·Σq, per-channel pages with the query folded into the channel scales once
    /// per page, Lloyd–Max rows as norm·Σq·L[c]) and values accumulated in place
    /// (`TierCodecs.accumulateValues`): nothing of the cache is materialised. Tiers kept rotated
    /// (`configuration.rotation`) are scored against R·q and their values accumulated apart and
    /// un-rotated once per query row (`StreamAttention`), so the result is that of the un-rotated
    /// rows the row reader returns. Softmax is online (streaming) per page. Under GQA, each K/V row is read once
    /// for all query rows of its group.
    ///
    /// This form reads the caller's queries and writes the caller's output in place: nothing is
    /// copied when both are `[queryHead][query][headDim]` FP32 (or one query row per head);
    /// otherwise each KV head's query group is gathered (FP16 widened) into, and its output
    /// scattered from, a scratch of `2 · groupSize · queryCount · headDim` floats per stream. The
    /// output is the same for every layout and, for FP16 queries, that of their widened FP32 values.
    ///
    /// ```swift
    /// // A model's queries and attention output, [token][queryHead][headDim], no transposes:
    /// var out = [Float](repeating: 0, count: q.count)
    /// var outSpan = out.mutableSpan
    /// store.attend(id, layer: l, queries: q.span, layout: .tokenMajor, into: &outSpan)
    /// ```
    ///
    /// - Parameters:
    ///   - queries: `queryHeadCount · queryCount · headDim` values in `layout` (`[queryHead][query][headDim]`
    ///     or `[query][queryHead][headDim]`); `queryCount` is inferred.
    ///   - queryPositions: the position of each query (causal limit); `nil` means the last
    ///     `queryCount` positions appended to this layer (a decode step or a prefill chunk just
    ///     appended).
    ///   - output: as many values as `queries`, written in the same `layout`.
    ///   - returnWeights: also return each stored token's attention weight per query (the one heap
    ///     allocation this form makes besides the kernels' per-stream scratch).
    ///   - threadCount: threads to spread KV heads over (`nil`: all cores), each taking the next
    ///     stream when done with one; with fewer streams than threads and no weights asked (a
    ///     prefill chunk of a multi-query layer), each stream's query rows are also cut into runs
    ///     (`attendUnits`). Results are identical for every thread count and assignment: each
    ///     stream, or run of its rows, is computed by one thread in a fixed order, and runs start on
    ///     multiples of `PageKernels.rowTile`, so each row gets the bits it gets in the whole stream.
    /// - Returns: the weights if asked. A query that sees no token gets zeros in `output`.
    /// - Precondition: the buffer sizes above, and every query row finite with an L1 norm of at most
    ///   `KVStoreConfiguration.maximumQueryL1Norm` (so no score overflows; caller bugs trap with a message).
    /// - Error: relative to exact attention over the *decoded* rows, the output differs only by
    ///   FP32 rounding (dot products within `RowCodec.dotErrorBound`, exp and sums in FP32) and, where
    ///   the kernel set runs them (`KeyScoring.channelwiseVNNI`, `ValueAccumulation.integer`), the
    ///   integer splits of `PageKernels.scoresChannelwiseVNNI` (scores within
    ///   `channelwiseVNNIErrorBound`) and `PageKernels.accumulateInteger` (its split bound). Tiers
    ///   the configuration rotates add the FP32 rotation of each query row and un-rotation of each
    ///   output row (`HadamardRotation`: ≤ γ_{L+3}·‖x‖₁/√d per element, L = log₂ headDim), and their
    ///   dots and sums are bounded in rotated coordinates (‖·‖₂ in place of Σ|·|, see
    ///   `ReferenceAttention` in the tests for the whole bound).
    /// - Complexity: O(queryHeads · queries · tokens · headDim) arithmetic, O(tokens · rowBytes)
    ///   memory traffic per KV head.
    @discardableResult
    public func attend(_ id: SequenceID, layer: Int, queries: Span<Float>, layout: KVBufferLayout = .headMajor,
                       queryPositions: [Int32]? = nil, into output: inout MutableSpan<Float>,
                       returnWeights: Bool = false, threadCount: Int? = nil) -> [KVHeadWeights]? {
        let n = attendedQueryCount(queries.count, output.count)
        return queries.withUnsafeBufferPointer { q in
            output.withUnsafeMutableBufferPointer { o in
                attend([block(id, queryRows(q, layout, n), o, queryPositions)], layer: layer, returnWeights: returnWeights,
                       threadCount: threadCount)?[0]
            }
        }
    }

    /// `attend` of FP16 queries (widened exactly to FP32 as they are read). See the FP32 form.
    @discardableResult
    public func attend(_ id: SequenceID, layer: Int, queries: Span<Float16>, layout: KVBufferLayout = .headMajor,
                       queryPositions: [Int32]? = nil, into output: inout MutableSpan<Float>,
                       returnWeights: Bool = false, threadCount: Int? = nil) -> [KVHeadWeights]? {
        let n = attendedQueryCount(queries.count, output.count)
        return queries.withUnsafeBufferPointer { q in
            output.withUnsafeMutableBufferPointer { o in
                attend([block(id, queryRows(q, layout, n), o, queryPositions)], layer: layer, returnWeights: returnWeights,
                       threadCount: threadCount)?[0]
            }
        }
    }

    /// `attend` writing the attention weights too, densely into a caller buffer: `weights` holds
    /// `queryHeadCount · queryCount · nextPosition(of: id, layer: layer)` values,
    /// `[queryHead][query][position]`, the weight each query put on each position (0 for a position
    /// the stream no longer holds, one after the query, or outside its window). Each row sums to 1
    /// unless the query saw no token. The weights are computed per stored token as with
    /// `returnWeights` and then scattered (one allocation per stream).
    public func attend(_ id: SequenceID, layer: Int, queries: Span<Float>, layout: KVBufferLayout = .headMajor,
                       queryPositions: [Int32]? = nil, into output: inout MutableSpan<Float>, weights: inout MutableSpan<Float>,
                       threadCount: Int? = nil) {
        let heads = attend(id, layer: layer, queries: queries, layout: layout, queryPositions: queryPositions, into: &output,
                           returnWeights: true, threadCount: threadCount)!
        scatter(heads, id, layer: layer, queryCount: queries.count / (configuration.queryHeadCount * configuration.headDim), into: &weights)
    }

    /// `attend` of FP16 queries writing dense weights. See the FP32 form.
    public func attend(_ id: SequenceID, layer: Int, queries: Span<Float16>, layout: KVBufferLayout = .headMajor,
                       queryPositions: [Int32]? = nil, into output: inout MutableSpan<Float>, weights: inout MutableSpan<Float>,
                       threadCount: Int? = nil) {
        let heads = attend(id, layer: layer, queries: queries, layout: layout, queryPositions: queryPositions, into: &output,
                           returnWeights: true, threadCount: threadCount)!
        scatter(heads, id, layer: layer, queryCount: queries.count / (configuration.queryHeadCount * configuration.headDim), into: &weights)
    }

    /// Array form of `attend`: `queries` are `[queryHead][query][headDim]`, `queryCount` per head;
    /// returns the outputs in that order (written in place into the returned array) and the weights
    /// if asked.
    public func attend(_ id: SequenceID, layer: Int, queries: [Float], queryCount: Int = 1,
                       queryPositions: [Int32]? = nil, returnWeights: Bool = false, threadCount: Int? = nil) -> AttentionResult {
        checkArrayQueries(queries.count, queryCount)
        var weights: [KVHeadWeights]?
        let output = queries.withUnsafeBufferPointer { q in
            [Float](unsafeUninitializedCapacity: q.count) { o, initialized in
                // `StreamAttention` writes every output row.
                weights = attend([block(id, queryRows(q, .headMajor, queryCount), o, queryPositions)], layer: layer,
                                 returnWeights: returnWeights, threadCount: threadCount)?[0]
                initialized = q.count
            }
        }
        return AttentionResult(output: output, weights: weights)
    }

    private func checkArrayQueries(_ count: Int, _ queryCount: Int) {
        let c = configuration
        precondition(queryCount >= 1, "KVStore.attend: queryCount must be at least 1")
        precondition(count == c.queryHeadCount * queryCount * c.headDim,
                     "KVStore.attend: expected \(c.queryHeadCount * queryCount * c.headDim) query values ([queryHead][query][headDim]), got \(count)")
    }

    /// One sequence's queries in a batched `attend`.
    public struct AttendRequest: Sendable {
        public var sequence: SequenceID
        public var queries: [Float]
        public var queryCount: Int
        public var queryPositions: [Int32]?
        public init(sequence: SequenceID, queries: [Float], queryCount: Int = 1, queryPositions: [Int32]? = nil) {
            self.sequence = sequence
            self.queries = queries
            self.queryCount = queryCount
            self.queryPositions = queryPositions
        }
    }

    /// `attend` for several sequences at once: all their (sequence, KV head) streams are spread
    /// over the threads together.
    public func attend(batch: [AttendRequest], layer: Int, returnWeights: Bool = false, threadCount: Int? = nil) -> [AttentionResult] {
        for r in batch { checkArrayQueries(r.queries.count, r.queryCount) }
        // The requests' own buffers cannot all be lent at once; outputs go to raw buffers, copied out.
        let outputs = batch.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0.queries.count) }
        defer { for o in outputs { o.deallocate() } }
        func run(_ i: Int, _ blocks: [AttendBlock]) -> [[KVHeadWeights]]? {
            guard i < batch.count else { return attend(blocks, layer: layer, returnWeights: returnWeights, threadCount: threadCount) }
            let r = batch[i]
            return r.queries.withUnsafeBufferPointer { q in
                run(i + 1, blocks + [block(r.sequence, queryRows(q, .headMajor, r.queryCount), outputs[i], r.queryPositions)])
            }
        }
        let weights = run(0, [])
        return batch.indices.map { b in AttentionResult(output: Array(outputs[b]), weights: weights?[b]) }
    }

    // MARK: The one path

    /// One sequence's query block: the caller's buffers, read and written in place.
    struct AttendBlock: @unchecked Sendable {
        let sequence: SequenceID
        /// `queryHeadCount × queryCount` rows.
        let queries: UnsafeCallerRows
        let output: UnsafeCallerOutput
        let queryPositions: [Int32]?
    }

    private func attendedQueryCount(_ queryValueCount: Int, _ outputCount: Int) -> Int {
        let c = configuration, per = c.queryHeadCount * c.headDim
        precondition(queryValueCount > 0 && queryValueCount % per == 0,
                     "KVStore.attend: queries must hold a positive whole number of rows × queryHeadCount × headDim = \(per) values, got \(queryValueCount)")
        precondition(outputCount == queryValueCount, "KVStore.attend: output holds \(outputCount) values, expected \(queryValueCount) (as many as the queries)")
        return queryValueCount / per
    }

    private func queryRows(_ q: UnsafeBufferPointer<Float>, _ layout: KVBufferLayout, _ n: Int) -> UnsafeCallerRows {
        UnsafeCallerRows(q, layout: layout, heads: configuration.queryHeadCount, tokens: n, headDim: configuration.headDim)
    }

    private func queryRows(_ q: UnsafeBufferPointer<Float16>, _ layout: KVBufferLayout, _ n: Int) -> UnsafeCallerRows {
        UnsafeCallerRows(q, layout: layout, heads: configuration.queryHeadCount, tokens: n, headDim: configuration.headDim)
    }

    private func block(_ id: SequenceID, _ q: UnsafeCallerRows, _ o: UnsafeMutableBufferPointer<Float>, _ positions: [Int32]?) -> AttendBlock {
        AttendBlock(sequence: id, queries: q,
                    output: UnsafeCallerOutput(base: o.baseAddress!, layout: q.layout, heads: q.heads, tokens: q.tokens, headDim: q.headDim),
                    queryPositions: positions)
    }

    /// Writes per-KV-head weights as dense `[queryHead][query][position]` rows over
    /// `0 ..< nextPosition(of: id, layer: layer)`.
    private func scatter(_ heads: [KVHeadWeights], _ id: SequenceID, layer: Int, queryCount: Int, into out: inout MutableSpan<Float>) {
        let c = configuration, length = nextPosition(of: id, layer: layer)
        precondition(out.count == c.queryHeadCount * queryCount * length,
                     "KVStore.attend: weights holds \(out.count) values, expected \(c.queryHeadCount * queryCount * length) (\(c.queryHeadCount) query heads × \(queryCount) queries × \(length) positions)")
        out.withUnsafeMutableBufferPointer { o in
            o.update(repeating: 0)
            for w in heads {
                for g in 0..<c.groupSize {
                    let qh = w.kvHead * c.groupSize + g
                    for i in 0..<queryCount {
                        let row = w.row(groupHead: g, query: i), base = (qh * queryCount + i) * length
                        for (k, p) in w.positions.enumerated() { o[base + Int(p)] = row[row.startIndex + k] }
                    }
                }
            }
        }
    }

    /// Checks queries as `attend` would, throwing instead of trapping: for callers whose queries
    /// come from data they do not control (a model file's weights, a foreign runtime), so a bad row
    /// is a typed error before anything is appended or attended. `queries` as for `attend`
    /// (`queryHeadCount · queryCount · headDim` values in `layout`).
    ///
    /// - Throws: `KVStoreError.invalidQuery` naming the first row (in `[head][query]` order) that
    ///   is not finite or whose L1 norm exceeds `KVStoreConfiguration.maximumQueryL1Norm`.
    /// - Precondition: `queries.count` is a multiple of `queryHeadCount · headDim`; `layer` exists.
    /// - Complexity: O(queries · headDim), read in place.
    public func validateQueries(_ queries: Span<Float>, layer: Int, layout: KVBufferLayout = .headMajor) throws(KVStoreError) {
        let c = configuration, rowSize = c.queryHeadCount * c.headDim
        precondition(0 <= layer && layer < c.layerCount, "KVStore.validateQueries: layer \(layer) outside 0..<\(c.layerCount)")
        precondition(queries.count % rowSize == 0, "KVStore.validateQueries: \(queries.count) values is not a whole number of \(c.queryHeadCount) × \(c.headDim) query rows")
        let bad = queries.withUnsafeBufferPointer { q in
            firstInvalidQuery(UnsafeCallerRows(q, layout: layout, heads: c.queryHeadCount, tokens: queries.count / rowSize, headDim: c.headDim))
        }
        if let bad { throw .invalidQuery(layer: layer, head: bad.head, token: bad.token, l1Norm: bad.norm) }
    }

    /// The first row (in `[head][token]` order) of `queries` that is not finite or whose L1 norm
    /// exceeds `maximumQueryL1Norm`: the one rule behind `attend`'s precondition and `validateQueries`.
    func firstInvalidQuery(_ queries: UnsafeCallerRows) -> (head: Int, token: Int, norm: Double)? {
        let limit = configuration.maximumQueryL1Norm
        for h in 0..<queries.heads {
            for t in 0..<queries.tokens {
                let norm = queries.l1Norm(head: h, token: t)
                if !(norm <= limit) { return (h, t, norm) }
            }
        }
        return nil
    }

    /// The one attend path: every (block, KV head) stream spread over the threads, each reading
    /// its query group from and writing its output group to the caller's buffers (through a
    /// per-stream scratch where the layout or precision needs one).
    func attend(_ blocks: [AttendBlock], layer: Int, returnWeights: Bool, threadCount: Int?) -> [[KVHeadWeights]]? {
        let c = configuration, d = c.headDim, g = c.groupSize
        precondition(0 <= layer && layer < c.layerCount, "KVStore.attend: layer \(layer) outside 0..<\(c.layerCount)")
        // A non-finite query, or one so large that a score could overflow, would silently give zero
        // weights and outputs: a caller bug (O(queries · headDim), against attention's O(queries · tokens · headDim)).
        for r in blocks {
            if let bad = firstInvalidQuery(r.queries) {
                preconditionFailure("KVStore.attend: query \(bad.token) of head \(bad.head) has L1 norm \(bad.norm): not finite, or so large that q·k can overflow FP32 (at most \(c.maximumQueryL1Norm))")
            }
        }
        // Snapshot the streams (page references) under the lock; compute outside it.
        let snapshots = blocks.map { r in
            let layerState = withSequence(r.sequence, "attend") { $0.layers[layer] }
            let n = r.queries.tokens
            let positions = r.queryPositions ?? (0..<n).map { layerState.nextPosition - Int32(n) + Int32($0) }
            precondition(positions.count == n, "KVStore.attend: \(positions.count) query positions for \(n) queries")
            return (layerState, positions)
        }
        let streams = blocks.count * c.kvHeadCount
        let wanted = max(1, threadCount ?? ProcessInfo.processInfo.activeProcessorCount)
        let parts = Self.attendParts(streams: streams, threads: wanted, returnWeights: returnWeights)
        let plan = Self.attendUnits(queryCounts: blocks.map(\.queries.tokens), kvHeadCount: c.kvHeadCount, groupSize: g, parts: parts)
        let units = plan.count
        let threads = min(wanted, units)
        let codecs = codecs[layer], rotations = LayerRotations(layer: layer, configuration: c)
        // Threads write disjoint slots of one raw buffer (only when weights are asked).
        let weightSlots = returnWeights ? SharedBuffer(base: UnsafeMutablePointer<KVHeadWeights?>.allocate(capacity: units)) : nil
        weightSlots?.base.initialize(repeating: nil, count: units)
        defer {
            weightSlots?.base.deinitialize(count: units)
            weightSlots?.base.deallocate()
        }
        let work: @Sendable (Int) -> Void = { unit in
            let (b, h, rows) = (plan[unit].block, plan[unit].kvHead, plan[unit].rows)
            let block = blocks[b], (layerState, positions) = snapshots[b]
            let queryScratch = block.queries.needsScratch ? rows.count * d : 0, outputScratch = block.output.needsScratch ? rows.count * d : 0
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, queryScratch + outputScratch)) { scratch in
                let q = block.queries.headMajorFloats(firstHead: h * g, rows: rows, scratch: scratch.baseAddress!)
                let o = block.output.headMajorRows(firstHead: h * g, rows: rows, scratch: scratch.baseAddress! + queryScratch)
                let w = StreamAttention(configuration: c, codecs: codecs[h], rotations: rotations, stream: layerState.streams[h], kvHead: h,
                                        queries: q, queryCount: block.queries.tokens, queryPositions: positions, rows: rows,
                                        returnWeights: returnWeights, layer: layer)
                    .run(into: o)
                block.output.finish(firstHead: h * g, rows: rows, scratch: o)
                weightSlots?.base[unit] = w
            }
        }
        if threads == 1 {
            for u in 0..<units { work(u) }
        } else {
            // Threads take the next unit as they finish one (a core slowed by other work takes
            // fewer); each unit is still computed by one thread in its fixed order, so the result
            // does not depend on the assignment.
            let next = Atomic<Int>(0)
            DispatchQueue.concurrentPerform(iterations: threads) { _ in
                while true {
                    let u = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    guard u < units else { break }
                    work(u)
                }
            }
        }
        guard let weightSlots else { return nil }
        return blocks.indices.map { b in (0..<c.kvHeadCount).map { weightSlots.base[b * c.kvHeadCount + $0]! } }
    }

    /// One thread's share of an `attend` call: rows `rows` of the `[groupHead][query]` rows of
    /// block `block`'s stream of KV head `kvHead`.
    struct AttendUnit: Equatable, Sendable {
        let block: Int, kvHead: Int, rows: Range<Int>
    }

    /// The units of an `attend` call over blocks of `queryCounts` queries: per block and KV head, in
    /// that order, the stream's `groupSize · queryCount` rows, cut into at most `parts` runs of
    /// whole tiles (each starting on a multiple of `PageKernels.rowTile`, as even as whole tiles
    /// allow) when the stream has more than one query and more than one tile of rows; a decode
    /// step's rows (one query) are never cut, since the stream's page reads dominate there.
    ///
    /// - Complexity: O(units).
    static func attendUnits(queryCounts: [Int], kvHeadCount: Int, groupSize: Int, parts: Int) -> [AttendUnit] {
        precondition(parts >= 1, "KVStore.attendUnits: \(parts) parts")
        let tile = PageKernels.rowTile
        var units = [AttendUnit]()
        for (b, n) in queryCounts.enumerated() {
            let rows = groupSize * n, tiles = (rows + tile - 1) / tile
            let k = n > 1 ? min(parts, tiles) : 1
            for h in 0..<kvHeadCount {
                if k <= 1 {
                    units.append(AttendUnit(block: b, kvHead: h, rows: 0 ..< rows))
                    continue
                }
                for i in 0..<k {
                    let start = i * tiles / k * tile, end = min(rows, (i + 1) * tiles / k * tile)
                    units.append(AttendUnit(block: b, kvHead: h, rows: start ..< end))
                }
            }
        }
        return units
    }

    /// Runs per stream for `attendUnits`: 1 when the streams keep every thread busy or weights are
    /// asked (a stream's weights are one `KVHeadWeights`), else threads ÷ gcd(threads, streams), so
    /// that the units divide evenly over the threads.
    static func attendParts(streams: Int, threads: Int, returnWeights: Bool) -> Int {
        func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
        return returnWeights || streams >= threads ? 1 : threads / gcd(threads, streams)
    }
}
