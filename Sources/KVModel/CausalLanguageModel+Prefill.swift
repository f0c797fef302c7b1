import KVQuantization
import KVCompression
import KVStore

extension CausalLanguageModel {
    /// Runs a prompt through the model in chunks of at most `chunkTokenCount` tokens, keeping the
    /// queries of its last `observationTokenCount` tokens.
    ///
    /// - Returns: the last token's logits and the observation window.
    /// - Throws: `KVStoreError` from the store (see `forward`).
    public func prefill(_ tokens: [Int32], sequence id: SequenceID, in store: KVStore, chunkTokenCount: Int = 512,
                        observationTokenCount: Int = 32) throws(KVStoreError) -> (logits: [Float], observation: ObservationWindow) {
        precondition(!tokens.isEmpty, "CausalLanguageModel.prefill: empty prompt")
        precondition(chunkTokenCount > 0 && observationTokenCount >= 0, "CausalLanguageModel.prefill: bad chunk or window size")
        let h = cacheShape, d = h.headDim
        let first = store.nextPosition(of: id, layer: 0)
        let w = min(observationTokenCount, tokens.count)
        let windowStart = first + tokens.count - w
        var queries = [[Float]](repeating: [Float](repeating: 0, count: h.headCount * w * d), count: h.layerCount)
        var logits = [Float]()
        var c = 0
        while c < tokens.count {
            let end = min(tokens.count, c + chunkTokenCount)
            let keep: (LayerActivations) -> Void = { a in
                for t in 0..<a.tokenCount where a.firstPosition + t >= windowStart {
                    let k = a.firstPosition + t - windowStart
                    for head in 0..<h.headCount {
                        for i in 0..<d { queries[a.layer][(head * w + k) * d + i] = a.queries[(head * a.tokenCount + t) * d + i] }
                    }
                }
            }
            logits = try forward(Array(tokens[c..<end]), sequence: id, in: store, logits: end == tokens.count ? .last : .none,
                                 observer: keep, attentionObserver: nil)
            c = end
        }
        let positions = (0..<w).map { Int32(windowStart + $0) }
        return (logits, ObservationWindow(positions: positions, queries: queries))
    }

    /// Greedy generation: prefills `prompt`, then appends the most likely token until
    /// `maxTokenCount` tokens or a token in `stopTokens`.
    ///
    /// - Parameters:
    ///   - afterPrefill: called once the prompt is in the cache (e.g. to compress it); the hook it
    ///     returns, if any, sees every decode step's attention and runs after each step.
    ///   - onToken: called with each generated token as it is chosen.
    /// - Returns: the generated tokens (a stop token included).
    public func generate(prompt: [Int32], maxTokenCount: Int, sequence id: SequenceID, in store: KVStore,
                         stopTokens: Set<Int32> = [], afterPrefill: ((ObservationWindow) throws -> DecodeHook?)? = nil,
                         onToken: ((Int32) -> Void)? = nil) throws -> [Int32] {
        guard maxTokenCount > 0 else { return [] }
        let (first, observation) = try prefill(prompt, sequence: id, in: store)
        let hook = try afterPrefill?(observation) ?? nil
        var logits = first
        var out = [Int32]()
        while true {
            let next = LlamaModel.mostLikelyToken(logits[...])
            out.append(next)
            onToken?(next)
            if out.count == maxTokenCount || stopTokens.contains(next) { break }
            logits = try forward([next], sequence: id, in: store, logits: .last, observer: nil, attentionObserver: hook?.recordAttention)
            try hook?.afterStep()
        }
        return out
    }
}
