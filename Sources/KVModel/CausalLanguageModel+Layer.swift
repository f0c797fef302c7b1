import KVStore

// The steps every model family takes the same way around its own block.
extension CausalLanguageModel {
    /// One layer's attention through the store: the chunk's `queries`, `keys` and `values` (after
    /// RoPE, `[token][head][headDim]` as the projections produce them) go to `observer` (head-major),
    /// the keys and values are appended to layer `layer`, the queries attend over what the layer
    /// holds (weights to `attentionObserver` when given), and a windowed layer then releases what no
    /// later query sees (a no-op elsewhere).
    ///
    /// - Returns: the attention output, `[token][head][headDim]`.
    /// - Throws: `KVStoreError` if the store cannot take the keys and values, or `.invalidQuery` if
    ///   a query row is not finite or too large (weights that are finite can still overflow):
    ///   checked before anything is appended, so the store is unchanged.
    func attendThroughStore(_ store: KVStore, _ id: SequenceID, layer l: Int, firstPosition first: Int, count n: Int,
                            queries q: [Float], keys k: [Float], values v: [Float], observer: ((LayerActivations) -> Void)?,
                            attentionObserver: ((Int, [KVHeadWeights]) -> Void)?) throws(KVStoreError) -> [Float] {
        let s = cacheShape, d = s.headDim
        if let observer {
            observer(LayerActivations(layer: l, firstPosition: first, tokenCount: n,
                                      queries: MatrixKernels.transpose(q, outer: n, inner: s.headCount, d: d),
                                      keys: MatrixKernels.transpose(k, outer: n, inner: s.kvHeadCount, d: d),
                                      values: MatrixKernels.transpose(v, outer: n, inner: s.kvHeadCount, d: d)))
        }
        try store.validateQueries(q.span, layer: l, layout: .tokenMajor)
        try store.append(id, layer: l, keys: k.span, values: v.span, layout: .tokenMajor)
        var a = [Float](repeating: 0, count: q.count)
        var attended = a.mutableSpan
        let weights = store.attend(id, layer: l, queries: q.span, layout: .tokenMajor, into: &attended,
                                   returnWeights: attentionObserver != nil, threadCount: threadCount)
        if let weights { attentionObserver?(l, weights) }
        store.releaseOutsideWindow(id, layer: l)
        return a
    }

    /// The logits `logits` selects from the last hidden states `x` (`[token][embedding]`, `n`
    /// tokens): the final RMS norm, then the output head.
    func outputLogits(_ x: [Float], count n: Int, embedding e: Int, norm: [Float], epsilon: Float, head: WeightMatrix,
                      products: MatrixProducts, _ logits: ForwardLogits) -> [Float] {
        switch logits {
        case .none: return []
        case .last:
            let normed = MatrixKernels.rmsNorm(Array(x[((n - 1) * e)...]), count: 1, weight: norm, epsilon: epsilon)
            return products.apply([head], to: normed, count: 1)[0]
        case .all:
            let normed = MatrixKernels.rmsNorm(x, count: n, weight: norm, epsilon: epsilon)
            return products.apply([head], to: normed, count: n)[0]
        }
    }
}
