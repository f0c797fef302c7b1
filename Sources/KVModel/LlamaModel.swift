import Foundation
import KVQuantization
import KVStore

/// A Llama-architecture language model on the CPU whose KV cache is a `KVStore`.
///
/// Each `forward` call runs one chunk of tokens (a prefill chunk or one decode token) through
/// every block: RMSNorm, Q/K/V projections, RoPE (rotate-half, θ from the file), then the chunk's
/// keys and values are *appended to the store* and attention is *the store's read path*
/// (`KVStore.attend`, causal, GQA), whatever tiers the cached tokens sit in; then the output
/// projection, RMSNorm and a SwiGLU MLP, and finally the (tied) output head. Positions continue
/// from the store (`nextPosition`), so a compressed cache keeps the original positions.
///
/// Weights stay in the file's blocks (memory-mapped, see `LlamaWeights`); matrix products run on
/// them (`MatrixProducts`), split over `threadCount` threads, with 16-bit activations (integer
/// products on the blocks' codes) unless `quantizesActivations` is off (then FP32 on the
/// dequantised weights).
public final class LlamaModel: CausalLanguageModel {
    /// The model's shape.
    public let hyperparameters: LlamaHyperparameters
    /// Threads for matrix products and attention.
    public let threadCount: Int
    /// Whether forward passes quantise the activations entering each block-quantised matrix to 16
    /// bits per 32 values for integer dot products (llama.cpp uses 8 bits): one-token steps
    /// (`WeightKernels.quantizedDotReference`) and multi-token chunks (`quantizedPanelDotReference`,
    /// the same quantisation, one integer sum per 32 values) run about twice as fast as FP32 on the
    /// blocks, with an error per product of about 2⁻¹⁶ of each block's largest activation (the two
    /// differ from each other only by FP32 summation order). Off, every pass is FP32 on the
    /// dequantised weights and a one-token pass computes exactly what the same token computes
    /// inside a batch.
    public let quantizesActivations: Bool
    let weights: LlamaWeights
    let products: MatrixProducts
    /// cos/sin of position·θ^(−2j/D) are computed per call in Double, then rounded to Float.
    let inverseFrequencies: [Double]

    /// Loads the model in `file` (its weights stay in the file's blocks).
    ///
    /// - Throws: `LlamaModelError` for an unsupported architecture, missing or misshapen tensors,
    ///   bad hyperparameters or non-finite weights.
    public init(file: GGUFFile, threadCount: Int? = nil, quantizesActivations: Bool = true) throws(LlamaModelError) {
        let h = try LlamaHyperparameters(file: file)
        hyperparameters = h
        self.threadCount = max(1, threadCount ?? ProcessInfo.processInfo.activeProcessorCount)
        self.quantizesActivations = quantizesActivations
        weights = try LlamaWeights(file: file, hyperparameters: h)
        products = MatrixProducts(file: file, threadCount: self.threadCount, quantizesActivations: quantizesActivations,
                                  path: .current)
        let d = h.headDim
        inverseFrequencies = (0..<(d / 2)).map { j in pow(Double(h.ropeTheta), -2 * Double(j) / Double(d)) }
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
                               vocabularySize: h.vocabularySize)
    }

    /// Which logits `forward` returns.
    public typealias Logits = ForwardLogits

    /// `CausalLanguageModel.forward` (the block is described on the type).
    public func forward(_ tokens: [Int32], sequence id: SequenceID, in store: KVStore, logits: Logits = .last,
                        observer: ((LayerActivations) -> Void)? = nil,
                        attentionObserver: ((Int, [KVHeadWeights]) -> Void)? = nil) throws(KVStoreError) -> [Float] {
        let h = hyperparameters, e = h.embeddingLength, d = h.headDim, n = tokens.count
        checkForward(tokens, store, "LlamaModel.forward")
        let first = store.nextPosition(of: id, layer: 0)
        var x = products.rows(of: weights.tokenEmbedding, tokens.map(Int.init))
        let (cosines, sines) = ropeTables(first: first, count: n)
        for (l, block) in weights.blocks.enumerated() {
            let normed = MatrixKernels.rmsNorm(x, count: n, weight: block.attentionNorm, epsilon: h.rmsEpsilon)
            let qkv = products.apply([block.query, block.key, block.value], to: normed, count: n)
            var q = LlamaWeights.huggingFaceOrder(qkv[0], count: n, headCount: h.headCount, headDim: d)
            var k = LlamaWeights.huggingFaceOrder(qkv[1], count: n, headCount: h.kvHeadCount, headDim: d)
            let v = qkv[2]
            applyRoPE(&q, heads: h.headCount, count: n, cosines: cosines, sines: sines)
            applyRoPE(&k, heads: h.kvHeadCount, count: n, cosines: cosines, sines: sines)
            // The store reads q, k, v and writes the output in the projections' [token][head][d] order.
            let a = try attendThroughStore(store, id, layer: l, firstPosition: first, count: n, queries: q, keys: k, values: v,
                                           observer: observer, attentionObserver: attentionObserver)
            let o = products.apply([block.output], to: a, count: n)[0]
            for i in 0..<x.count { x[i] += o[i] }
            let normed2 = MatrixKernels.rmsNorm(x, count: n, weight: block.feedForwardNorm, epsilon: h.rmsEpsilon)
            let gateUp = products.apply([block.gate, block.up], to: normed2, count: n)
            var gate = gateUp[0]
            let up = gateUp[1]
            MatrixKernels.applyGated(&gate, up, .silu)
            let down = products.apply([block.down], to: gate, count: n)[0]
            for i in 0..<x.count { x[i] += down[i] }
        }
        return outputLogits(x, count: n, embedding: e, norm: weights.outputNorm, epsilon: h.rmsEpsilon, head: weights.outputHead,
                            products: products, logits)
    }

    /// The index of the largest logit (the first if tied): the greedy choice.
    public static func mostLikelyToken(_ logits: ArraySlice<Float>) -> Int32 {
        var best = logits.startIndex
        for i in logits.indices where logits[i] > logits[best] { best = i }
        return Int32(best - logits.startIndex)
    }

    /// cos and sin of (first + t)·θ^(−2j/D), `[t][j]`, computed in Double.
    func ropeTables(first: Int, count: Int) -> ([Float], [Float]) {
        MatrixKernels.ropeTables(first: first, count: count, inverseFrequencies: inverseFrequencies)
    }

    /// Rotate-half RoPE on `[token][head][D]` (`MatrixKernels.applyRoPE`).
    func applyRoPE(_ x: inout [Float], heads: Int, count: Int, cosines: [Float], sines: [Float]) {
        MatrixKernels.applyRoPE(&x, heads: heads, headDim: hyperparameters.headDim, count: count, cosines: cosines, sines: sines)
    }
}
