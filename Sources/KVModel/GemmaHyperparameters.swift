import KVQuantization

/// The shape of a Gemma 3 model, read from GGUF metadata (`gemma3.*`).
///
/// Layers alternate between *local* ones (sliding-window attention, RoPE base `localRopeTheta`) and
/// *global* ones (full causal attention, RoPE base `ropeTheta`): layer l is global when
/// (l + 1) is a multiple of `slidingWindowPattern` (6 in Gemma 3: five local layers per global one).
public struct GemmaHyperparameters: Sendable, Hashable {
    /// Transformer blocks (`gemma3.block_count`).
    public var layerCount: Int
    /// Width of the residual stream (`gemma3.embedding_length`).
    public var embeddingLength: Int
    /// Hidden width of the MLP (`gemma3.feed_forward_length`).
    public var feedForwardLength: Int
    /// Query heads (`gemma3.attention.head_count`).
    public var headCount: Int
    /// KV heads (`gemma3.attention.head_count_kv`).
    public var kvHeadCount: Int
    /// Elements of one head (`gemma3.attention.key_length`; need not be embedding ÷ heads).
    public var headDim: Int
    /// Vocabulary size (rows of `token_embd.weight`).
    public var vocabularySize: Int
    /// RoPE base θ of the global layers (`gemma3.rope.freq_base`, default 1,000,000).
    public var ropeTheta: Float
    /// RoPE base θ of the local layers (`gemma3.rope.freq_base_swa`, else 10,000 as llama.cpp assumes).
    public var localRopeTheta: Float
    /// Keys a local layer's query sees, itself included (`gemma3.attention.sliding_window`).
    public var slidingWindow: Int
    /// One global layer per this many (`gemma3.attention.sliding_window_pattern` if an integer, else 6).
    public var slidingWindowPattern: Int
    /// RMSNorm ε (`gemma3.attention.layer_norm_rms_epsilon`, default 1e-6).
    public var rmsEpsilon: Float

    public init(layerCount: Int, embeddingLength: Int, feedForwardLength: Int, headCount: Int, kvHeadCount: Int, headDim: Int,
                vocabularySize: Int, ropeTheta: Float = 1_000_000, localRopeTheta: Float = 10_000, slidingWindow: Int = 512,
                slidingWindowPattern: Int = 6, rmsEpsilon: Float = 1e-6) {
        self.layerCount = layerCount
        self.embeddingLength = embeddingLength
        self.feedForwardLength = feedForwardLength
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim
        self.vocabularySize = vocabularySize
        self.ropeTheta = ropeTheta
        self.localRopeTheta = localRopeTheta
        self.slidingWindow = slidingWindow
        self.slidingWindowPattern = slidingWindowPattern
        self.rmsEpsilon = rmsEpsilon
    }

    /// Whether `layer` is local (sliding window, local RoPE base).
    public func isLocal(layer: Int) -> Bool { (layer + 1) % slidingWindowPattern != 0 }

    /// Per layer, its sliding window (`nil` for the global layers).
    public var layerSlidingWindows: [Int?] { (0..<layerCount).map { isLocal(layer: $0) ? slidingWindow : nil } }

    /// Reads and checks the hyperparameters of `file`.
    ///
    /// - Throws: `.unsupportedArchitecture` unless `general.architecture` is `gemma3`,
    ///   `.invalidHyperparameter` for a missing or out-of-range value or RoPE scaling (not supported).
    public init(file: GGUFFile) throws(LlamaModelError) {
        let arch = file["general.architecture"]?.string ?? "(missing)"
        guard arch == "gemma3" else { throw .unsupportedArchitecture(arch) }
        func int(_ key: String, default d: Int? = nil) throws(LlamaModelError) -> Int {
            guard let v = file[key]?.integer ?? d else { throw .invalidHyperparameter(key: key, reason: "missing or not an integer") }
            guard v > 0, v <= 1 << 20 else { throw .invalidHyperparameter(key: key, reason: "must be in 1...2^20, got \(v)") }
            return v
        }
        func real(_ key: String, default d: Double, above minimum: Double) throws(LlamaModelError) -> Float {
            let v = file[key]?.double ?? d
            guard v.isFinite, v > minimum else { throw .invalidHyperparameter(key: key, reason: "must be finite and > \(minimum), got \(v)") }
            return Float(v)
        }
        layerCount = try int("gemma3.block_count")
        embeddingLength = try int("gemma3.embedding_length")
        feedForwardLength = try int("gemma3.feed_forward_length")
        headCount = try int("gemma3.attention.head_count")
        kvHeadCount = try int("gemma3.attention.head_count_kv", default: headCount)
        headDim = try int("gemma3.attention.key_length", default: embeddingLength / headCount)
        guard headDim % 2 == 0 else { throw .invalidHyperparameter(key: "gemma3.attention.key_length", reason: "must be even, got \(headDim)") }
        if let v = file["gemma3.attention.value_length"]?.integer, v != headDim {
            throw .invalidHyperparameter(key: "gemma3.attention.value_length", reason: "must equal key_length \(headDim), got \(v)")
        }
        guard headCount % kvHeadCount == 0 else {
            throw .invalidHyperparameter(key: "gemma3.attention.head_count_kv", reason: "must divide head_count \(headCount)")
        }
        if let r = file["gemma3.rope.dimension_count"]?.integer, r != headDim {
            throw .invalidHyperparameter(key: "gemma3.rope.dimension_count", reason: "partial RoPE (\(r) of \(headDim)) is not supported")
        }
        if let t = file["gemma3.rope.scaling.type"]?.string, t != "none" {
            throw .invalidHyperparameter(key: "gemma3.rope.scaling.type", reason: "RoPE scaling \(t) is not supported")
        }
        ropeTheta = try real("gemma3.rope.freq_base", default: 1_000_000, above: 1)
        localRopeTheta = try real("gemma3.rope.freq_base_swa", default: 10_000, above: 1)
        slidingWindow = try int("gemma3.attention.sliding_window", default: 512)
        slidingWindowPattern = file["gemma3.attention.sliding_window_pattern"]?.integer ?? 6
        guard slidingWindowPattern > 0 else {
            throw .invalidHyperparameter(key: "gemma3.attention.sliding_window_pattern", reason: "must be positive, got \(slidingWindowPattern)")
        }
        rmsEpsilon = try real("gemma3.attention.layer_norm_rms_epsilon", default: 1e-6, above: 0)
        guard let embd = file.tensor("token_embd.weight") else { throw .missingTensor("token_embd.weight") }
        guard embd.shape.count == 2, embd.shape[0] == embeddingLength else {
            throw .shapeMismatch(tensor: "token_embd.weight", expected: [embeddingLength, -1], found: embd.shape)
        }
        vocabularySize = embd.shape[1]
    }
}
