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
    /// - Parameters:
    ///   - queries: `[queryHead][query][headDim]`, `queryCount` queries per head.
    ///   - queryPositions: the position of each query (causal limit); `nil` means the last
    ///     `queryCount` positions appended to this layer (a decode step or a prefill chunk just
    ///     appended).
    ///   - returnWeights: also return each stored token's attention weight per query.
    ///   - threadCount: threads to spread KV heads over (`nil`: all cores), each taking the next
    ///     stream when done with one. Results are identical for every thread count and assignment:
    ///     each stream is computed by one thread in a fixed order.
    /// - Returns: outputs `[queryHead][query][headDim]`; a query that sees no token gets zeros.
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
    public func attend(_ id: SequenceID, layer: Int, queries: [Float], queryCount: Int = 1,
                       queryPositions: [Int32]? = nil, returnWeights: Bool = false, threadCount: Int? = nil) -> AttentionResult {
        attend(batch: [AttendRequest(sequence: id, queries: queries, queryCount: queryCount, queryPositions: queryPositions)],
               layer: layer, returnWeights: returnWeights, threadCount: threadCount)[0]
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
        let c = configuration
        precondition(0 <= layer && layer < c.layerCount, "KVStore.attend: layer \(layer) outside 0..<\(c.layerCount)")
        // Snapshot the streams (page references) under the lock; compute outside it.
        var snapshotList = [(LayerState, [Int32])]()
        for r in batch {
            precondition(r.queryCount >= 1, "KVStore.attend: queryCount must be at least 1")
            precondition(r.queries.count == c.queryHeadCount * r.queryCount * c.headDim,
                         "KVStore.attend: expected \(c.queryHeadCount * r.queryCount * c.headDim) query values ([queryHead][query][headDim]), got \(r.queries.count)")
            let layerState = withSequence(r.sequence, "attend") { $0.layers[layer] }
            let positions = r.queryPositions ?? (0..<r.queryCount).map { layerState.nextPosition - Int32(r.queryCount) + Int32($0) }
            precondition(positions.count == r.queryCount, "KVStore.attend: \(positions.count) query positions for \(r.queryCount) queries")
            snapshotList.append((layerState, positions))
        }
        var outputs = batch.map { [Float](repeating: 0, count: c.queryHeadCount * $0.queryCount * c.headDim) }
        var weights = [[KVHeadWeights?]](repeating: [KVHeadWeights?](repeating: nil, count: c.kvHeadCount), count: batch.count)
        let units = batch.count * c.kvHeadCount
        let threads = max(1, min(threadCount ?? ProcessInfo.processInfo.activeProcessorCount, units))
        let codecs = codecs[layer], rotations = LayerRotations(layer: layer, configuration: c), snapshots = snapshotList
        // Escaping these pointers from `withUnsafe…` is wrong; allocate the results as raw buffers.
        let outBuffers = outputs.indices.map { i in SharedBuffer(base: UnsafeMutablePointer<Float>.allocate(capacity: outputs[i].count)) }
        let weightBuffer = batch.indices.map { _ in SharedBuffer(base: UnsafeMutablePointer<KVHeadWeights?>.allocate(capacity: c.kvHeadCount)) }
        for b in batch.indices { weightBuffer[b].base.initialize(repeating: nil, count: c.kvHeadCount) }
        defer {
            for b in batch.indices {
                outBuffers[b].base.deallocate()
                weightBuffer[b].base.deinitialize(count: c.kvHeadCount)
                weightBuffer[b].base.deallocate()
            }
        }
        let work: @Sendable (Int) -> Void = { unit in
                let b = unit / c.kvHeadCount, h = unit % c.kvHeadCount
                let (layerState, positions) = snapshots[b]
                let w = batch[b].queries.withUnsafeBufferPointer { qp in
                    StreamAttention(configuration: c, codecs: codecs, rotations: rotations, stream: layerState.streams[h], kvHead: h,
                                    queries: qp.baseAddress!, queryCount: batch[b].queryCount, queryPositions: positions,
                                    returnWeights: returnWeights, layer: layer)
                        .run(into: outBuffers[b].base)
                }
                weightBuffer[b].base[h] = w
            }
        if threads == 1 {
            for u in 0..<units { work(u) }
        } else {
            // Threads take the next stream as they finish one (a core slowed by other work takes
            // fewer); each stream is still computed by one thread in its fixed order, so the result
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
        for b in batch.indices {
            outputs[b] = Array(UnsafeBufferPointer(start: outBuffers[b].base, count: outputs[b].count))
            weights[b] = Array(UnsafeBufferPointer(start: weightBuffer[b].base, count: c.kvHeadCount))
        }
        return batch.indices.map { b in
            AttentionResult(output: outputs[b], weights: returnWeights ? weights[b].map { $0! } : nil)
        }
    }
}
