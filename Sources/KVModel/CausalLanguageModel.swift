import Foundation
import KVQuantization
import KVStore

/// A decoder-only language model on the CPU whose KV cache is a `KVStore`: `LlamaModel` or
/// `GemmaModel`, chosen by the file (`loadLanguageModel`).
///
/// `forward` runs one chunk of tokens (a prefill chunk or one decode token) as the next positions
/// of a sequence, appending every layer's keys and values to the store and reading attention back
/// through `KVStore.attend`; `prefill` and `generate` are built on it.
public protocol CausalLanguageModel: AnyObject, Sendable {
    /// The shape the model's cache has.
    var cacheShape: ModelCacheShape { get }
    /// Threads for matrix products and attention.
    var threadCount: Int { get }

    /// Runs `tokens` through the model as the next positions of sequence `id` in `store`, appending
    /// their keys and values to every layer.
    ///
    /// - Parameters:
    ///   - observer: called once per layer with the chunk's queries, keys and values (after RoPE).
    ///   - attentionObserver: if given, attention is asked for its weights and each layer's are
    ///     passed here (per KV head, `KVStore.attend(…, returnWeights: true)`; e.g. to a decode-time
    ///     policy's score accumulator).
    /// - Returns: logits `[token][vocabulary]` for the tokens `logits` selects.
    /// - Throws: `KVStoreError` if the store cannot take the keys and values; layers before the
    ///   failing one have then appended the chunk.
    /// - Precondition: the store has this model's shape (`cacheShape`); token ids are in the vocabulary.
    func forward(_ tokens: [Int32], sequence id: SequenceID, in store: KVStore, logits: ForwardLogits,
                 observer: ((LayerActivations) -> Void)?,
                 attentionObserver: ((Int, [KVHeadWeights]) -> Void)?) throws(KVStoreError) -> [Float]
}

/// What a model's cache looks like: the fields of a `KVStoreConfiguration` the model fixes.
public struct ModelCacheShape: Sendable, Hashable {
    public var layerCount: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var vocabularySize: Int
    /// Per layer, its sliding attention window (`nil`: full causal attention), or `nil` if no layer has one.
    public var layerSlidingWindows: [Int?]?

    public init(layerCount: Int, headCount: Int, kvHeadCount: Int, headDim: Int, vocabularySize: Int, layerSlidingWindows: [Int?]? = nil) {
        self.layerCount = layerCount
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim
        self.vocabularySize = vocabularySize
        self.layerSlidingWindows = layerSlidingWindows
    }
}

/// Which logits `forward` returns.
public enum ForwardLogits: Sendable, Hashable {
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

extension CausalLanguageModel {
    /// A store configuration with this model's shape (layers, heads, head size, sliding windows).
    public func storeConfiguration(pageCapacity: Int = 32, tierFormats: TierFormats = .standard,
                                   byteLimit: Int? = nil) -> KVStoreConfiguration {
        let s = cacheShape
        return KVStoreConfiguration(layerCount: s.layerCount, queryHeadCount: s.headCount, kvHeadCount: s.kvHeadCount,
                                    headDim: s.headDim, pageCapacity: pageCapacity, tierFormats: tierFormats,
                                    byteLimit: byteLimit, layerSlidingWindows: s.layerSlidingWindows)
    }

    /// Traps unless `store` has this model's shape and `tokens` are a non-empty chunk of vocabulary ids.
    func checkForward(_ tokens: [Int32], _ store: KVStore, _ caller: String) {
        let s = cacheShape, c = store.configuration
        precondition(c.layerCount == s.layerCount && c.queryHeadCount == s.headCount && c.kvHeadCount == s.kvHeadCount
                     && c.headDim == s.headDim, "\(caller): the store's shape does not match the model")
        precondition((0..<s.layerCount).allSatisfy { c.slidingWindow(layer: $0) == s.layerSlidingWindows?[$0] },
                     "\(caller): the store's sliding windows are not the model's")
        precondition(!tokens.isEmpty, "\(caller): no tokens")
        for t in tokens {
            precondition(t >= 0 && Int(t) < s.vocabularySize, "\(caller): token \(t) outside the vocabulary of \(s.vocabularySize)")
        }
    }
}

/// The model in `file`, by its `general.architecture`: `llama` (`LlamaModel`) or `gemma3` (`GemmaModel`).
///
/// - Throws: `LlamaModelError` (`.unsupportedArchitecture` for any other).
public func loadLanguageModel(file: GGUFFile, threadCount: Int? = nil) throws(LlamaModelError) -> any CausalLanguageModel {
    switch file["general.architecture"]?.string {
    case "gemma3": try GemmaModel(file: file, threadCount: threadCount)
    default: try LlamaModel(file: file, threadCount: threadCount)
    }
}
