import KVQuantization

/// The shape of a Llama-architecture model, read from GGUF metadata (`llama.*`).
public struct LlamaHyperparameters: Sendable, Hashable {
    /// Transformer blocks (`llama.block_count`).
    public var layerCount: Int
    /// Width of the residual stream (`llama.embedding_length`).
    public var embeddingLength: Int
    /// Hidden width of the MLP (`llama.feed_forward_length`).
    public var feedForwardLength: Int
    /// Query heads (`llama.attention.head_count`).
    public var headCount: Int
    /// KV heads (`llama.attention.head_count_kv`, default `headCount`).
    public var kvHeadCount: Int
    /// Vocabulary size (rows of `token_embd.weight`).
    public var vocabularySize: Int
    /// RoPE base θ (`llama.rope.freq_base`, default 10000).
    public var ropeTheta: Float
    /// RMSNorm ε (`llama.attention.layer_norm_rms_epsilon`).
    public var rmsEpsilon: Float

    /// Elements of one head.
    public var headDim: Int { embeddingLength / headCount }

    public init(layerCount: Int, embeddingLength: Int, feedForwardLength: Int, headCount: Int, kvHeadCount: Int,
                vocabularySize: Int, ropeTheta: Float, rmsEpsilon: Float) {
        self.layerCount = layerCount
        self.embeddingLength = embeddingLength
        self.feedForwardLength = feedForwardLength
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.vocabularySize = vocabularySize
        self.ropeTheta = ropeTheta
        self.rmsEpsilon = rmsEpsilon
    }

    /// Reads and checks the hyperparameters of `file`.
    public init(file: GGUFFile) throws(LlamaModelError) {
        let arch = file["general.architecture"]?.string ?? "(missing)"
        guard arch == "llama" else { throw .unsupportedArchitecture(arch) }
        func int(_ key: String, default d: Int? = nil) throws(LlamaModelError) -> Int {
            guard let v = file[key]?.integer ?? d else { throw .invalidHyperparameter(key: key, reason: "missing or not an integer") }
            guard v > 0, v <= 1 << 20 else { throw .invalidHyperparameter(key: key, reason: "must be in 1...2^20, got \(v)") }
            return v
        }
        layerCount = try int("llama.block_count")
        embeddingLength = try int("llama.embedding_length")
        feedForwardLength = try int("llama.feed_forward_length")
        headCount = try int("llama.attention.head_count")
        kvHeadCount = try int("llama.attention.head_count_kv", default: headCount)
        guard embeddingLength % headCount == 0, (embeddingLength / headCount) % 2 == 0 else {
            throw .invalidHyperparameter(key: "llama.attention.head_count", reason: "must divide the embedding length \(embeddingLength) into even head sizes")
        }
        guard headCount % kvHeadCount == 0 else {
            throw .invalidHyperparameter(key: "llama.attention.head_count_kv", reason: "must divide head_count \(headCount)")
        }
        if let r = file["llama.rope.dimension_count"]?.integer, r != embeddingLength / headCount {
            throw .invalidHyperparameter(key: "llama.rope.dimension_count", reason: "partial RoPE (\(r) of \(embeddingLength / headCount)) is not supported")
        }
        let theta = file["llama.rope.freq_base"]?.double ?? 10000
        guard theta.isFinite, theta > 1 else { throw .invalidHyperparameter(key: "llama.rope.freq_base", reason: "must be finite and > 1, got \(theta)") }
        ropeTheta = Float(theta)
        let eps = file["llama.attention.layer_norm_rms_epsilon"]?.double ?? 1e-5
        guard eps.isFinite, eps > 0 else { throw .invalidHyperparameter(key: "llama.attention.layer_norm_rms_epsilon", reason: "must be positive, got \(eps)") }
        rmsEpsilon = Float(eps)
        guard let embd = file.tensor("token_embd.weight") else { throw .missingTensor("token_embd.weight") }
        guard embd.shape.count == 2, embd.shape[0] == embeddingLength else {
            throw .shapeMismatch(tensor: "token_embd.weight", expected: [embeddingLength, -1], found: embd.shape)
        }
        vocabularySize = embd.shape[1]
    }
}
