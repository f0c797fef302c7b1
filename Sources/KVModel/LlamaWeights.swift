import KVQuantization

/// The weights of one transformer block: matrices read in place from the file, norms in FP32.
struct LlamaBlockWeights: Sendable {
    let attentionNorm: [Float]
    /// Rows in the file's order (llama.cpp's interleaved RoPE pairs): see `LlamaWeights.huggingFaceOrder`.
    let query: WeightMatrix
    /// Rows in the file's order, as `query`.
    let key: WeightMatrix
    let value: WeightMatrix
    let output: WeightMatrix
    let feedForwardNorm: [Float]
    let gate: WeightMatrix
    let up: WeightMatrix
    let down: WeightMatrix
}

/// Every weight of a Llama model: matrices as the file stores them (memory-mapped, in their block
/// types: nothing is dequantised at load), norm vectors in FP32.
///
/// Decode reads each weight once per token, so its cost is the file's bytes (≈ 97 MB for
/// SmolLM2-135M's Q4_1/Q8_0) rather than FP32 copies (540 MB). Loading checks every weight is
/// finite (dequantising each matrix once, without keeping it).
struct LlamaWeights: Sendable {
    /// The file the matrices lie in.
    let file: GGUFFile
    let tokenEmbedding: WeightMatrix
    /// The output head (`output.weight`, or the token embedding when tied).
    let outputHead: WeightMatrix
    let outputNorm: [Float]
    let blocks: [LlamaBlockWeights]

    init(file: GGUFFile, hyperparameters h: LlamaHyperparameters) throws(LlamaModelError) {
        self.file = file
        let load = WeightLoader(file: file)
        func vector(_ name: String, _ length: Int) throws(LlamaModelError) -> [Float] { try load.vector(name, length) }
        func matrix(_ name: String, rows: Int, columns: Int) throws(LlamaModelError) -> WeightMatrix {
            try load.matrix(name, rows: rows, columns: columns)
        }
        let e = h.embeddingLength, d = h.headDim
        tokenEmbedding = try matrix("token_embd.weight", rows: h.vocabularySize, columns: e)
        outputHead = file.tensor("output.weight") == nil ? tokenEmbedding : try matrix("output.weight", rows: h.vocabularySize, columns: e)
        outputNorm = try vector("output_norm.weight", e)
        var blocks = [LlamaBlockWeights]()
        for l in 0..<h.layerCount {
            let p = "blk.\(l)."
            blocks.append(LlamaBlockWeights(
                attentionNorm: try vector(p + "attn_norm.weight", e),
                query: try matrix(p + "attn_q.weight", rows: h.headCount * d, columns: e),
                key: try matrix(p + "attn_k.weight", rows: h.kvHeadCount * d, columns: e),
                value: try matrix(p + "attn_v.weight", rows: h.kvHeadCount * d, columns: e),
                output: try matrix(p + "attn_output.weight", rows: e, columns: h.headCount * d),
                feedForwardNorm: try vector(p + "ffn_norm.weight", e),
                gate: try matrix(p + "ffn_gate.weight", rows: h.feedForwardLength, columns: e),
                up: try matrix(p + "ffn_up.weight", rows: h.feedForwardLength, columns: e),
                down: try matrix(p + "ffn_down.weight", rows: e, columns: h.feedForwardLength)))
        }
        self.blocks = blocks
    }

    /// The index (in file order) of the first weight of `m` that is NaN or infinite, if any.
    static func firstNonFiniteWeight(_ m: WeightMatrix, in file: GGUFFile) -> Int? {
        let chunk = 256
        var scratch = [Float](repeating: 0, count: chunk * m.columns)
        return file.storage.withUnsafeBytes { bytes -> Int? in
            let rows = m.rows(in: bytes)
            for first in stride(from: 0, to: m.rows, by: chunk) {
                let n = min(chunk, m.rows - first)
                let bad = scratch.withUnsafeMutableBufferPointer { out -> Int? in
                    WeightKernels.dequantize(rows, first: first, count: n, into: out.baseAddress!, stride: m.columns)
                    return out[0..<(n * m.columns)].firstIndex { !$0.isFinite }
                }
                if let bad { return first * m.columns + bad }
            }
            return nil
        }
    }

    /// Reorders Q or K outputs (`[token][head][headDim]`, `count` tokens) from the file's row order
    /// to Hugging Face's.
    ///
    /// llama.cpp's converter reorders each head's rows so that its RoPE, which rotates adjacent
    /// pairs (2j, 2j+1), computes what Hugging Face's rotate-half RoPE computes on pairs
    /// (j, j + D/2): GGUF row `2j + s` of a head is Hugging Face row `s·D/2 + j`. Restoring Hugging
    /// Face order lets the forward pass use rotate-half and produce keys and queries in the order
    /// Hugging Face (and the KV dumps) use. (Permuting the outputs, not the weights, keeps the
    /// weights in place.)
    static func huggingFaceOrder(_ y: [Float], count: Int, headCount: Int, headDim d: Int) -> [Float] {
        precondition(y.count == count * headCount * d, "LlamaWeights.huggingFaceOrder: \(y.count) values for \(count)×\(headCount)×\(d)")
        var out = [Float](repeating: 0, count: y.count)
        let half = d / 2
        for base in stride(from: 0, to: y.count, by: d) {
            for j in 0..<half {
                out[base + j] = y[base + 2 * j]
                out[base + half + j] = y[base + 2 * j + 1]
            }
        }
        return out
    }
}
