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
/// them (`MatrixProducts`), split over `threadCount` threads: multi-token chunks in FP32 on the
/// dequantised weights, one-token steps with 16-bit activations unless `quantizesDecodeActivations`
/// is off.
public final class LlamaModel: Sendable {
    /// The model's shape.
    public let hyperparameters: LlamaHyperparameters
    /// Threads for matrix products and attention.
    public let threadCount: Int
    /// Whether one-token forward passes (decode steps) quantise the activations entering each block-
    /// quantised matrix to 16 bits per 32 values for integer dot products (llama.cpp uses 8 bits):
    /// about twice as fast as FP32 on the blocks, with an error per product of about 2⁻¹⁶ of each
    /// block's largest activation (bound: `WeightKernels.quantizedDotReference`). Off, a one-token
    /// pass computes exactly what the same token computes inside a batch.
    public let quantizesDecodeActivations: Bool
    let weights: LlamaWeights
    let products: MatrixProducts
    /// cos/sin of position·θ^(−2j/D) are computed per call in Double, then rounded to Float.
    let inverseFrequencies: [Double]

    /// Loads the model in `file` (its weights stay in the file's blocks).
    ///
    /// - Throws: `LlamaModelError` for an unsupported architecture, missing or misshapen tensors,
    ///   bad hyperparameters or non-finite weights.
    public init(file: GGUFFile, threadCount: Int? = nil, quantizesDecodeActivations: Bool = true) throws(LlamaModelError) {
        let h = try LlamaHyperparameters(file: file)
        hyperparameters = h
        self.threadCount = max(1, threadCount ?? ProcessInfo.processInfo.activeProcessorCount)
        self.quantizesDecodeActivations = quantizesDecodeActivations
        weights = try LlamaWeights(file: file, hyperparameters: h)
        products = MatrixProducts(file: file, threadCount: self.threadCount, quantizesDecodeActivations: quantizesDecodeActivations,
                                  path: .current)
        let d = h.headDim
        inverseFrequencies = (0..<(d / 2)).map { j in pow(Double(h.ropeTheta), -2 * Double(j) / Double(d)) }
    }

    /// Loads the model in the GGUF file at `url`.
    public convenience init(contentsOf url: URL, threadCount: Int? = nil, quantizesDecodeActivations: Bool = true) throws(LlamaModelError) {
        let file: GGUFFile
        do { file = try GGUFFile(contentsOf: url) } catch { throw .file(error) }
        try self.init(file: file, threadCount: threadCount, quantizesDecodeActivations: quantizesDecodeActivations)
    }

    /// A store configuration with this model's shape (layers, heads, head size).
    public func storeConfiguration(pageCapacity: Int = 32, tierFormats: TierFormats = .standard,
                                   byteLimit: Int? = nil) -> KVStoreConfiguration {
        let h = hyperparameters
        return KVStoreConfiguration(layerCount: h.layerCount, queryHeadCount: h.headCount, kvHeadCount: h.kvHeadCount,
                                    headDim: h.headDim, pageCapacity: pageCapacity, tierFormats: tierFormats,
                                    byteLimit: byteLimit)
    }

    /// Which logits `forward` returns.
    public enum Logits: Sendable, Hashable {
        /// None (prefill whose predictions are not needed).
        case none
        /// The last token's.
        case last
        /// Every token's.
        case all
    }

    /// What one layer computed for a chunk, for observers (all after RoPE).
    public struct LayerActivations: Sendable {
        /// The layer (0-based).
        public var layer: Int
        /// Position of the chunk's first token.
        public var firstPosition: Int
        /// Tokens in the chunk.
        public var tokenCount: Int
        /// `[head][token][headDim]`.
        public var queries: [Float]
        /// `[kvHead][token][headDim]`, as appended to the store (before FP16 rounding).
        public var keys: [Float]
        /// `[kvHead][token][headDim]`.
        public var values: [Float]
    }

    /// Runs `tokens` through the model as the next positions of sequence `id` in `store`, appending
    /// their keys and values to every layer.
    ///
    /// - Parameters:
    ///   - observer: called once per layer with the chunk's queries, keys and values (e.g. to keep
    ///     observation-window queries for a compression policy, or to compare with a dump).
    ///   - attentionObserver: if given, attention is asked for its weights and each layer's
    ///     `AttentionResult` is passed here (e.g. to a decode-time policy's score accumulator).
    /// - Returns: logits `[token][vocabulary]` for the tokens `logits` selects.
    /// - Throws: `KVStoreError` if the store cannot take the keys and values (byte limit, or a
    ///   non-finite activation); layers before the failing one have then appended the chunk.
    /// - Precondition: the store has this model's shape; token ids are in the vocabulary.
    public func forward(_ tokens: [Int32], sequence id: SequenceID, in store: KVStore, logits: Logits = .last,
                        observer: ((LayerActivations) -> Void)? = nil,
                        attentionObserver: ((Int, AttentionResult) -> Void)? = nil) throws(KVStoreError) -> [Float] {
        let h = hyperparameters, e = h.embeddingLength, d = h.headDim, n = tokens.count
        let sc = store.configuration
        precondition(sc.layerCount == h.layerCount && sc.queryHeadCount == h.headCount && sc.kvHeadCount == h.kvHeadCount
                     && sc.headDim == d, "LlamaModel.forward: the store's shape does not match the model")
        precondition(n > 0, "LlamaModel.forward: no tokens")
        for t in tokens {
            precondition(t >= 0 && Int(t) < h.vocabularySize, "LlamaModel.forward: token \(t) outside the vocabulary of \(h.vocabularySize)")
        }
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
            // [token][head][d] → [head][token][d] for the store.
            let qh = Self.transpose(q, outer: n, inner: h.headCount, d: d)
            let kh = Self.transpose(k, outer: n, inner: h.kvHeadCount, d: d)
            let vh = Self.transpose(v, outer: n, inner: h.kvHeadCount, d: d)
            observer?(LayerActivations(layer: l, firstPosition: first, tokenCount: n, queries: qh, keys: kh, values: vh))
            try store.append(id, layer: l, keys: kh, values: vh)
            let result = store.attend(id, layer: l, queries: qh, queryCount: n, returnWeights: attentionObserver != nil, threadCount: threadCount)
            attentionObserver?(l, result)
            let attended = result.output
            let a = Self.transpose(attended, outer: h.headCount, inner: n, d: d)
            let o = products.apply([block.output], to: a, count: n)[0]
            for i in 0..<x.count { x[i] += o[i] }
            let normed2 = MatrixKernels.rmsNorm(x, count: n, weight: block.feedForwardNorm, epsilon: h.rmsEpsilon)
            let gateUp = products.apply([block.gate, block.up], to: normed2, count: n)
            var gate = gateUp[0]
            let up = gateUp[1]
            for i in 0..<gate.count { gate[i] = MatrixKernels.silu(gate[i]) * up[i] }
            let down = products.apply([block.down], to: gate, count: n)[0]
            for i in 0..<x.count { x[i] += down[i] }
        }
        switch logits {
        case .none: return []
        case .last:
            let last = Array(x[((n - 1) * e)...])
            let normed = MatrixKernels.rmsNorm(last, count: 1, weight: weights.outputNorm, epsilon: h.rmsEpsilon)
            return products.apply([weights.outputHead], to: normed, count: 1)[0]
        case .all:
            let normed = MatrixKernels.rmsNorm(x, count: n, weight: weights.outputNorm, epsilon: h.rmsEpsilon)
            return products.apply([weights.outputHead], to: normed, count: n)[0]
        }
    }

    /// The index of the largest logit (the first if tied): the greedy choice.
    public static func mostLikelyToken(_ logits: ArraySlice<Float>) -> Int32 {
        var best = logits.startIndex
        for i in logits.indices where logits[i] > logits[best] { best = i }
        return Int32(best - logits.startIndex)
    }

    /// cos and sin of (first + t)·θ^(−2j/D), `[t][j]`, computed in Double.
    func ropeTables(first: Int, count: Int) -> ([Float], [Float]) {
        let half = inverseFrequencies.count
        var c = [Float](repeating: 0, count: count * half), s = c
        for t in 0..<count {
            for j in 0..<half {
                let angle = Double(first + t) * inverseFrequencies[j]
                c[t * half + j] = Float(cos(angle))
                s[t * half + j] = Float(sin(angle))
            }
        }
        return (c, s)
    }

    /// Rotate-half RoPE on `[token][head][D]`: (x_j, x_{j+D/2}) ↦ (x_j·cos − x_{j+D/2}·sin, x_{j+D/2}·cos + x_j·sin).
    func applyRoPE(_ x: inout [Float], heads: Int, count: Int, cosines: [Float], sines: [Float]) {
        let d = hyperparameters.headDim, half = d / 2
        for t in 0..<count {
            for h in 0..<heads {
                let base = (t * heads + h) * d
                for j in 0..<half {
                    let a = x[base + j], b = x[base + j + half]
                    let c = cosines[t * half + j], s = sines[t * half + j]
                    x[base + j] = a * c - b * s
                    x[base + j + half] = b * c + a * s
                }
            }
        }
    }

    /// `[outer][inner][d]` → `[inner][outer][d]`.
    static func transpose(_ x: [Float], outer: Int, inner: Int, d: Int) -> [Float] {
        var y = [Float](repeating: 0, count: x.count)
        for o in 0..<outer {
            for i in 0..<inner {
                let src = (o * inner + i) * d, dst = (i * outer + o) * d
                for k in 0..<d { y[dst + k] = x[src + k] }
            }
        }
        return y
    }
}
