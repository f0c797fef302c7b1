import KVCompression
import KVModel
import KVStore

extension KeyChannelStatistics {
    /// The statistics of `model` run over `tokens` (one prefill in chunks of `chunkTokenCount`, the
    /// cache an uncompressed store): every layer's query energy per KV head and channel over all
    /// positions, and the RMS of the keys' per-page ranges over the full pages of `pageCapacity`
    /// tokens after the first `skippedTokenCount`.
    ///
    /// - Throws: `KVStoreError` if the store cannot take the text.
    /// - Precondition: `tokens` holds at least `skippedTokenCount + pageCapacity` tokens;
    ///   `pageCapacity`, `chunkTokenCount` > 0.
    /// - Complexity: one prefill plus O(layers · tokens · heads · headDim).
    public init(running model: any CausalLanguageModel, tokens: [Int32], pageCapacity: Int, skippedTokenCount: Int = 4,
                chunkTokenCount: Int = 512) throws(KVStoreError) {
        precondition(pageCapacity > 0 && chunkTokenCount > 0 && skippedTokenCount >= 0, "KeyChannelStatistics(running:): positive sizes")
        precondition(tokens.count >= skippedTokenCount + pageCapacity,
                     "KeyChannelStatistics(running:): \(tokens.count) tokens hold no full page of \(pageCapacity) after \(skippedTokenCount)")
        let c = model.cacheShape, d = c.headDim, L = c.layerCount, H = c.kvHeadCount, group = c.headCount / c.kvHeadCount
        let zeros = [[[Double]]](repeating: [[Double]](repeating: [Double](repeating: 0, count: d), count: H), count: L)
        var energy = zeros, rangeSquares = zeros
        var pages = 0
        // Per (layer, KV head): the running page's minima and maxima.
        var lo = [[Float]](repeating: [Float](repeating: .infinity, count: d), count: L * H)
        var hi = [[Float]](repeating: [Float](repeating: -.infinity, count: d), count: L * H)
        func take(_ a: LayerActivations) {
            let t = a.tokenCount, l = a.layer
            for qh in 0..<c.headCount {
                let h = qh / group
                for k in 0..<t {
                    let row = (qh * t + k) * d
                    for ch in 0..<d { let q = Double(a.queries[row + ch]); energy[l][h][ch] += q * q }
                }
            }
            for k in 0..<t {
                let p = a.firstPosition + k
                guard p >= skippedTokenCount else { continue }
                let offset = (p - skippedTokenCount) % pageCapacity
                for h in 0..<H {
                    let row = (h * t + k) * d, s = l * H + h
                    for ch in 0..<d {
                        let x = a.keys[row + ch]
                        lo[s][ch] = min(lo[s][ch], x)
                        hi[s][ch] = max(hi[s][ch], x)
                    }
                    if offset == pageCapacity - 1 {
                        for ch in 0..<d {
                            let r = Double(hi[s][ch]) - Double(lo[s][ch])
                            rangeSquares[l][h][ch] += r * r
                        }
                        lo[s] = [Float](repeating: .infinity, count: d)
                        hi[s] = [Float](repeating: -.infinity, count: d)
                    }
                }
                if offset == pageCapacity - 1, l == 0 { pages += 1 }
            }
        }
        let store: KVStore
        do { store = try KVStore(model.storeConfiguration()) } catch {
            preconditionFailure("KeyChannelStatistics(running:): the model's store configuration is invalid: \(error)")
        }
        let id = store.addSequence()
        var start = 0
        while start < tokens.count {
            let end = min(tokens.count, start + chunkTokenCount)
            _ = try model.forward(Array(tokens[start..<end]), sequence: id, in: store, logits: .none, observer: take, attentionObserver: nil)
            start = end
        }
        store.removeSequence(id)
        let n = Double(tokens.count * group), P = Double(pages)
        self.init(pageCapacity: pageCapacity, skippedTokenCount: skippedTokenCount, tokenCount: tokens.count,
                  queryEnergy: energy.map { $0.map { $0.map { $0 / n } } },
                  rangeRMS: rangeSquares.map { $0.map { $0.map { ($0 / P).squareRoot() } } })
    }
}
