import KVQuantization
import KVCompression
import KVStore

/// What runs beside a model's decode steps: it sees each layer's attention result (asked with
/// weights) and acts after each step, e.g. a `KVCompressor.DecodeSession` keeping the cache within
/// its budget (`init(session:)`).
public struct DecodeHook {
    /// Called with every layer's attention weights of a step (per KV head).
    public var recordAttention: (Int, [KVHeadWeights]) -> Void
    /// Called after each decode step, once its token is in every layer.
    public var afterStep: () throws -> Void

    public init(recordAttention: @escaping (Int, [KVHeadWeights]) -> Void, afterStep: @escaping () throws -> Void) {
        self.recordAttention = recordAttention
        self.afterStep = afterStep
    }

    /// A hook that feeds `session` every step's attention and re-plans after each one-token step.
    public init(session: KVCompressor.DecodeSession) {
        let box = SessionBox(session)
        let layers = session.compressor.store.configuration.layerCount
        self.init(recordAttention: { layer, weights in box.value.record(layer: layer, weights: weights) },
                  afterStep: { for l in 0..<layers { try box.value.appended(layer: l, count: 1) } })
    }
}

/// The mutable session the closures of one hook share (used on one thread).
private final class SessionBox {
    var value: KVCompressor.DecodeSession
    init(_ value: KVCompressor.DecodeSession) { self.value = value }
}
