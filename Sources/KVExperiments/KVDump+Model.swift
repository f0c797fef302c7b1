import Foundation
import KVModel
import KVStore

extension KVDump {
    /// The dump of `model` run over `tokens` (a prefill in chunks of `chunkTokenCount`, the cache
    /// an uncompressed store): every token's keys and values of `layers` (all when `nil`) as
    /// attention reads them (after RoPE and, for Gemma, the QK norm; before FP16 rounding), the
    /// queries of the last `queryCount` positions, the token ids, and each layer's sliding window.
    ///
    /// `metadata` adds provenance (`text`, `source`, …); `model` names the model (`__metadata__.model`).
    ///
    /// - Throws: `KVStoreError` if the store cannot take the prompt.
    /// - Precondition: `1 <= queryCount <= tokens.count`, the layers exist, `chunkTokenCount > 0`.
    /// - Complexity: one prefill; memory O(layers · tokens · kvHeads · headDim).
    public init(running model: any CausalLanguageModel, tokens: [Int32], layers: [Int]? = nil, queryCount: Int,
                model name: String, metadata: [String: String] = [:], chunkTokenCount: Int = 512) throws(KVStoreError) {
        let c = model.cacheShape
        let chosen = layers ?? Array(0..<c.layerCount)
        precondition(queryCount >= 1 && queryCount <= tokens.count, "KVDump(running:): queryCount \(queryCount) outside 1...\(tokens.count)")
        precondition(chosen.allSatisfy { (0..<c.layerCount).contains($0) }, "KVDump(running:): layers \(chosen) outside 0..<\(c.layerCount)")
        precondition(chunkTokenCount > 0, "KVDump(running:): chunkTokenCount must be positive")
        let shape: KVDumpShape
        do {
            shape = try KVDumpShape(headCount: c.headCount, kvHeadCount: c.kvHeadCount, headDim: c.headDim,
                                    tokenCount: tokens.count, queryStart: tokens.count - queryCount)
        } catch { preconditionFailure("KVDump(running:): the model's shape is not a dump shape: \(error)") }
        let n = tokens.count, d = c.headDim, q0 = shape.queryStart
        let slot = Dictionary(uniqueKeysWithValues: chosen.enumerated().map { ($1, $0) })
        var keys = [[Float]](repeating: [Float](repeating: 0, count: shape.kvElementCount), count: chosen.count)
        var values = keys
        var queries = [[Float]](repeating: [Float](repeating: 0, count: shape.queryElementCount), count: chosen.count)
        // Chunks' activations are [head][token][d]; the dump's rows are [head][position][d].
        func take(_ a: LayerActivations) {
            guard let i = slot[a.layer] else { return }
            let t = a.tokenCount
            for h in 0..<c.kvHeadCount {
                for k in 0..<t {
                    let src = (h * t + k) * d, dst = (h * n + a.firstPosition + k) * d
                    keys[i].replaceSubrange(dst..<(dst + d), with: a.keys[src..<(src + d)])
                    values[i].replaceSubrange(dst..<(dst + d), with: a.values[src..<(src + d)])
                }
            }
            for h in 0..<c.headCount {
                for k in 0..<t where a.firstPosition + k >= q0 {
                    let src = (h * t + k) * d, dst = (h * queryCount + a.firstPosition + k - q0) * d
                    queries[i].replaceSubrange(dst..<(dst + d), with: a.queries[src..<(src + d)])
                }
            }
        }
        let store: KVStore
        do { store = try KVStore(model.storeConfiguration()) } catch {
            preconditionFailure("KVDump(running:): the model's store configuration is invalid: \(error)")
        }
        let id = store.addSequence()
        var start = 0
        while start < n {
            let end = min(n, start + chunkTokenCount)
            _ = try model.forward(Array(tokens[start..<end]), sequence: id, in: store, logits: .none, observer: take, attentionObserver: nil)
            start = end
        }
        store.removeSequence(id)
        let dumpLayers = chosen.indices.map { i in
            KVDumpLayer(index: chosen[i], shape: shape, keys: keys[i], values: values[i], queries: queries[i],
                        slidingWindow: c.layerSlidingWindows?[chosen[i]] ?? nil)
        }
        self.init(model: name, shape: shape, layers: dumpLayers, tokens: tokens, metadata: metadata)
    }
}
