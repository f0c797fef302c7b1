import KVQuantization

/// The weights of one transformer block, dequantised to FP32, Q and K rows in Hugging Face
/// (rotate-half) order.
struct LlamaBlockWeights: Sendable {
    let attentionNorm: [Float]
    let query: DenseMatrix
    let key: DenseMatrix
    let value: DenseMatrix
    let output: DenseMatrix
    let feedForwardNorm: [Float]
    let gate: DenseMatrix
    let up: DenseMatrix
    let down: DenseMatrix
}

/// Every weight of a Llama model, dequantised to FP32 at load.
///
/// Why FP32 rather than the file's Q4_1/Q8_0: batched prefill is compute-bound, and an FP32 tile
/// kernel beats dequantising blocks inside the inner loop; decode is memory-bound and reads 4 B
/// per weight instead of 0.625 B, which for SmolLM2-135M (≈ 540 MB) still runs tens of tokens per
/// second on two cores. The values equal the file's dequantised weights exactly.
struct LlamaWeights: Sendable {
    let tokenEmbedding: DenseMatrix
    /// The output head (`output.weight`, or the token embedding when tied).
    let outputHead: DenseMatrix
    let outputNorm: [Float]
    let blocks: [LlamaBlockWeights]

    init(file: GGUFFile, hyperparameters h: LlamaHyperparameters) throws(LlamaModelError) {
        func tensor(_ name: String, _ shape: [Int]) throws(LlamaModelError) -> [Float] {
            guard let info = file.tensor(name) else { throw .missingTensor(name) }
            guard info.shape == shape else { throw .shapeMismatch(tensor: name, expected: shape, found: info.shape) }
            let v = file.floats(info)
            if let bad = v.firstIndex(where: { !$0.isFinite }) { throw .nonFiniteWeight(tensor: name, index: bad) }
            return v
        }
        func matrix(_ name: String, rows: Int, columns: Int) throws(LlamaModelError) -> DenseMatrix {
            DenseMatrix(rows: rows, columns: columns, values: try tensor(name, [columns, rows]))
        }
        let e = h.embeddingLength, d = h.headDim
        tokenEmbedding = try matrix("token_embd.weight", rows: h.vocabularySize, columns: e)
        outputHead = file.tensor("output.weight") == nil ? tokenEmbedding : try matrix("output.weight", rows: h.vocabularySize, columns: e)
        outputNorm = try tensor("output_norm.weight", [e])
        var blocks = [LlamaBlockWeights]()
        for l in 0..<h.layerCount {
            let p = "blk.\(l)."
            let q = try matrix(p + "attn_q.weight", rows: h.headCount * d, columns: e)
            let k = try matrix(p + "attn_k.weight", rows: h.kvHeadCount * d, columns: e)
            blocks.append(LlamaBlockWeights(
                attentionNorm: try tensor(p + "attn_norm.weight", [e]),
                query: Self.unpermuteRoPERows(q, headCount: h.headCount, headDim: d),
                key: Self.unpermuteRoPERows(k, headCount: h.kvHeadCount, headDim: d),
                value: try matrix(p + "attn_v.weight", rows: h.kvHeadCount * d, columns: e),
                output: try matrix(p + "attn_output.weight", rows: e, columns: h.headCount * d),
                feedForwardNorm: try tensor(p + "ffn_norm.weight", [e]),
                gate: try matrix(p + "ffn_gate.weight", rows: h.feedForwardLength, columns: e),
                up: try matrix(p + "ffn_up.weight", rows: h.feedForwardLength, columns: e),
                down: try matrix(p + "ffn_down.weight", rows: e, columns: h.feedForwardLength)))
        }
        self.blocks = blocks
    }

    /// Undoes the row permutation llama.cpp's converter applies to Q and K weights.
    ///
    /// The converter reorders each head's rows so that llama.cpp's RoPE, which rotates adjacent
    /// pairs (2j, 2j+1), computes what Hugging Face's rotate-half RoPE computes on pairs
    /// (j, j + D/2): GGUF row `2j + s` of a head is Hugging Face row `s·D/2 + j`. Restoring Hugging
    /// Face order lets the forward pass use rotate-half and produce keys and queries in the order
    /// Hugging Face (and the KV dumps) use.
    static func unpermuteRoPERows(_ m: DenseMatrix, headCount: Int, headDim d: Int) -> DenseMatrix {
        var out = [Float](repeating: 0, count: m.values.count)
        let c = m.columns, half = d / 2
        for h in 0..<headCount {
            for j in 0..<half {
                for s in 0..<2 {
                    let src = (h * d + 2 * j + s) * c, dst = (h * d + s * half + j) * c
                    for i in 0..<c { out[dst + i] = m.values[src + i] }
                }
            }
        }
        return DenseMatrix(rows: m.rows, columns: c, values: out)
    }
}
