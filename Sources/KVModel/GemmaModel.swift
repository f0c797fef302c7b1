import Foundation
import KVQuantization
import KVStore

/// A Gemma 3 language model on the CPU whose KV cache is a `KVStore` (llama.cpp's `gemma3` graph).
///
/// Per chunk: the token embedding times √d (d = `embeddingLength`); then every block
///
///     h = RMSNorm(x)·w_attn;  q, k, v = W_q h, W_k h, W_v h
///     q, k = RMSNorm per head (w_qnorm, w_knorm); rotate-half RoPE, θ = local or global base
///     a = attention through the store (causal; on local layers a sliding window of W keys)
///     x += RMSNorm(W_o a)·w_post_attn
///     h = RMSNorm(x)·w_ffn;  x += RMSNorm(W_down (GELU_tanh(W_gate h) ⊙ W_up h))·w_post_ffw
///
/// and the output RMSNorm and the (tied) output head. Scores are scaled by 1/√headDim (the store's
/// default; Gemma 3 270M's `query_pre_attn_scalar` is its head dim). The store's configuration
/// carries the local layers' windows (`storeConfiguration()`), and after each chunk's attention
/// a local layer releases what the next query cannot see (`KVStore.releaseOutsideWindow`), so
/// between forward passes those layers hold their window (plus under a page per tier) whatever the
/// sequence's length (`KVStoreConfiguration.layerSlidingWindows`).
///
/// Matrix products are `LlamaModel`'s (`MatrixProducts`, on the file's blocks, `threadCount`
/// threads, 16-bit activations unless `quantizesActivations` is off).
public final class GemmaModel: CausalLanguageModel {
    /// The model's shape.
    public let hyperparameters: GemmaHyperparameters
    public let threadCount: Int
    /// As `LlamaModel.quantizesActivations`.
    public let quantizesActivations: Bool
    let weights: GemmaWeights
    let products: MatrixProducts
    let globalFrequencies: [Double]
    let localFrequencies: [Double]

    /// Loads the model in `file` (its weights stay in the file's blocks).
    ///
    /// - Throws: `LlamaModelError` for another architecture, missing or misshapen tensors, bad
    ///   hyperparameters or non-finite weights.
    public init(file: GGUFFile, threadCount: Int? = nil, quantizesActivations: Bool = true) throws(LlamaModelError) {
        let h = try GemmaHyperparameters(file: file)
        hyperparameters = h
        self.threadCount = max(1, threadCount ?? ProcessInfo.processInfo.activeProcessorCount)
        self.quantizesActivations = quantizesActivations
        weights = try GemmaWeights(file: file, hyperparameters: h)
        products = MatrixProducts(file: file, threadCount: self.threadCount, quantizesActivations: quantizesActivations,
                                  path: .current)
        globalFrequencies = MatrixKernels.inverseFrequencies(theta: h.ropeTheta, headDim: h.headDim)
        localFrequencies = MatrixKernels.inverseFrequencies(theta: h.localRopeTheta, headDim: h.headDim)
    }

    /// Loads the model in the GGUF file at `url`.
    public convenience init(contentsOf url: URL, threadCount: Int? = nil, quantizesActivations: Bool = true) throws(LlamaModelError) {
        let file: GGUFFile
        do { file = try GGUFFile(contentsOf: url) } catch { throw .file(error) }
        try self.init(file: file, threadCount: threadCount, quantizesActivations: quantizesActivations)
    }

    public var cacheShape: ModelCacheShape {
        let h = hyperparameters
        return ModelCacheShape(layerCount: h.layerCount, headCount: h.headCount, kvHeadCount: h.kvHeadCount, headDim: h.headDim,
                               vocabularySize: h.vocabularySize, layerSlidingWindows: h.layerSlidingWindows)
    }

    /// `CausalLanguageModel.forward` (the block is described on the type).
    public func forward(_ tokens: [Int32], sequence id: SequenceID, in store: KVStore, logits: ForwardLogits = .last,
                        observer: ((LayerActivations) -> Void)? = nil,
                        attentionObserver: ((Int, [KVHeadWeights]) -> Void)? = nil) throws(KVStoreError) -> [Float] {
        let h = hyperparameters, e = h.embeddingLength, d = h.headDim, n = tokens.count
        checkForward(tokens, store, "GemmaModel.forward")
        let first = store.nextPosition(of: id, layer: 0)
        var x = products.rows(of: weights.tokenEmbedding, tokens.map(Int.init))
        let scale = Float(e).squareRoot()
        for i in 0..<x.count { x[i] *= scale }
        let global = MatrixKernels.ropeTables(first: first, count: n, inverseFrequencies: globalFrequencies)
        let local = MatrixKernels.ropeTables(first: first, count: n, inverseFrequencies: localFrequencies)
        for (l, block) in weights.blocks.enumerated() {
            let (cosines, sines) = h.isLocal(layer: l) ? local : global
            let normed = MatrixKernels.rmsNorm(x, count: n, weight: block.attentionNorm, epsilon: h.rmsEpsilon)
            let qkv = products.apply([block.query, block.key, block.value], to: normed, count: n)
            var q = MatrixKernels.rmsNorm(qkv[0], count: n * h.headCount, weight: block.queryNorm, epsilon: h.rmsEpsilon)
            var k = MatrixKernels.rmsNorm(qkv[1], count: n * h.kvHeadCount, weight: block.keyNorm, epsilon: h.rmsEpsilon)
            let v = qkv[2]
            MatrixKernels.applyRoPE(&q, heads: h.headCount, headDim: d, count: n, cosines: cosines, sines: sines)
            MatrixKernels.applyRoPE(&k, heads: h.kvHeadCount, headDim: d, count: n, cosines: cosines, sines: sines)
            // The store reads q, k, v and writes the output in the projections' [token][head][d] order.
            let a = try attendThroughStore(store, id, layer: l, firstPosition: first, count: n, queries: q, keys: k, values: v,
                                           observer: observer, attentionObserver: attentionObserver)
            let o = products.apply([block.output], to: a, count: n)[0]
            let postAttention = MatrixKernels.rmsNorm(o, count: n, weight: block.postAttentionNorm, epsilon: h.rmsEpsilon)
            for i in 0..<x.count { x[i] += postAttention[i] }
            let normed2 = MatrixKernels.rmsNorm(x, count: n, weight: block.feedForwardNorm, epsilon: h.rmsEpsilon)
            let gateUp = products.apply([block.gate, block.up], to: normed2, count: n)
            var gate = gateUp[0]
            let up = gateUp[1]
            MatrixKernels.applyGated(&gate, up, .geluTanh)
            let down = products.apply([block.down], to: gate, count: n)[0]
            let postFeedForward = MatrixKernels.rmsNorm(down, count: n, weight: block.postFeedForwardNorm, epsilon: h.rmsEpsilon)
            for i in 0..<x.count { x[i] += postFeedForward[i] }
        }
        return outputLogits(x, count: n, embedding: e, norm: weights.outputNorm, epsilon: h.rmsEpsilon, head: weights.outputHead,
                            products: products, logits)
    }
}
