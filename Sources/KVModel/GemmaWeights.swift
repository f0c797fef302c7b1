import KVQuantization

/// The weights of one Gemma 3 block: matrices read in place from the file, norms in FP32.
///
/// The file's norm weights already include Gemma's "+1" (llama.cpp's converter adds it), so every
/// norm here is a plain RMSNorm times its weight.
struct GemmaBlockWeights: Sendable {
    let attentionNorm: [Float]
    /// Rows in Hugging Face order (the converter does not permute Gemma's Q and K).
    let query: WeightMatrix
    let key: WeightMatrix
    let value: WeightMatrix
    /// RMSNorm weight of each query head (`headDim`, shared by the heads).
    let queryNorm: [Float]
    /// RMSNorm weight of each key head.
    let keyNorm: [Float]
    let output: WeightMatrix
    let postAttentionNorm: [Float]
    let feedForwardNorm: [Float]
    let gate: WeightMatrix
    let up: WeightMatrix
    let down: WeightMatrix
    let postFeedForwardNorm: [Float]
}

/// Every weight of a Gemma 3 model (as `LlamaWeights`: matrices in their blocks, memory-mapped; the
/// output head is the token embedding).
struct GemmaWeights: Sendable {
    let file: GGUFFile
    let tokenEmbedding: WeightMatrix
    /// `output.weight` if the file has one, else the token embedding (Gemma ties them).
    let outputHead: WeightMatrix
    let outputNorm: [Float]
    let blocks: [GemmaBlockWeights]

    init(file: GGUFFile, hyperparameters h: GemmaHyperparameters) throws(LlamaModelError) {
        self.file = file
        let load = WeightLoader(file: file)
        let e = h.embeddingLength, d = h.headDim
        tokenEmbedding = try load.matrix("token_embd.weight", rows: h.vocabularySize, columns: e)
        outputHead = file.tensor("output.weight") == nil ? tokenEmbedding : try load.matrix("output.weight", rows: h.vocabularySize, columns: e)
        outputNorm = try load.vector("output_norm.weight", e)
        var blocks = [GemmaBlockWeights]()
        for l in 0..<h.layerCount {
            let p = "blk.\(l)."
            blocks.append(GemmaBlockWeights(
                attentionNorm: try load.vector(p + "attn_norm.weight", e),
                query: try load.matrix(p + "attn_q.weight", rows: h.headCount * d, columns: e),
                key: try load.matrix(p + "attn_k.weight", rows: h.kvHeadCount * d, columns: e),
                value: try load.matrix(p + "attn_v.weight", rows: h.kvHeadCount * d, columns: e),
                queryNorm: try load.vector(p + "attn_q_norm.weight", d),
                keyNorm: try load.vector(p + "attn_k_norm.weight", d),
                output: try load.matrix(p + "attn_output.weight", rows: e, columns: h.headCount * d),
                postAttentionNorm: try load.vector(p + "post_attention_norm.weight", e),
                feedForwardNorm: try load.vector(p + "ffn_norm.weight", e),
                gate: try load.matrix(p + "ffn_gate.weight", rows: h.feedForwardLength, columns: e),
                up: try load.matrix(p + "ffn_up.weight", rows: h.feedForwardLength, columns: e),
                down: try load.matrix(p + "ffn_down.weight", rows: e, columns: h.feedForwardLength),
                postFeedForwardNorm: try load.vector(p + "post_ffw_norm.weight", e)))
        }
        self.blocks = blocks
    }
}

/// Looks tensors up with their expected shapes and checks their values are finite.
struct WeightLoader {
    let file: GGUFFile

    func info(_ name: String, _ shape: [Int]) throws(LlamaModelError) -> GGUFTensorInfo {
        guard let info = file.tensor(name) else { throw .missingTensor(name) }
        guard info.shape == shape else { throw .shapeMismatch(tensor: name, expected: shape, found: info.shape) }
        return info
    }

    /// A one-dimensional tensor of `length`, in FP32.
    func vector(_ name: String, _ length: Int) throws(LlamaModelError) -> [Float] {
        let v = file.floats(try info(name, [length]))
        if let bad = v.firstIndex(where: { !$0.isFinite }) { throw .nonFiniteWeight(tensor: name, index: bad) }
        return v
    }

    /// A matrix of `rows` rows of `columns` (file shape [columns, rows]), left in its blocks.
    func matrix(_ name: String, rows: Int, columns: Int) throws(LlamaModelError) -> WeightMatrix {
        let m = WeightMatrix(try info(name, [columns, rows]), in: file)
        if let bad = LlamaWeights.firstNonFiniteWeight(m, in: file) { throw .nonFiniteWeight(tensor: name, index: bad) }
        return m
    }
}
