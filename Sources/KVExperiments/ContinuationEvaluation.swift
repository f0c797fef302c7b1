import KVQuantization
import Foundation
import KVCompression
import KVModel
import KVStore

/// The end-to-end protocol: prefill a prompt, treat (compress) its cache, then teacher-force a
/// continuation through one-token decode steps and compare each step's next-token distribution
/// with the uncompressed run's.
///
/// With tokens `x₀ … x_{P+C−1}` (prompt P, continuation C): the prompt `x₀ ..< x_P` is prefilled
/// once into an FP16 sequence; each configuration works on a fork of it (copy-on-write, so the prompt
/// is computed once); then `x_P … x_{P+C−1}` are decoded one token at a time, and the logits of the
/// step at `x_t` are scored against `x_{t+1}` — `C − 1` scored predictions, each made after the
/// policy is applied (the prediction of `x_P` comes from the prefill and is the same for all policies).
///
/// Figures per configuration: mean KL(uncompressed ‖ treated) of the scored predictions, perplexity
/// exp(mean −log p(x_{t+1})) and its change relative to the uncompressed run, top-1 agreement (the
/// share of steps whose argmax equals the uncompressed run's), the sequence's cache bytes right
/// after the policy is applied and their ratio to the uncompressed prompt cache, the bytes after the last
/// and the largest after any decode step, and decode tokens/s (including the policy's work during
/// decode: score accumulation and re-planning); and wall-clock seconds of the prefill, of applying
/// the policy, and of the decode steps (and of the decode session's part of them).
///
/// Each configuration's `CachePolicy` is applied to its fork right after the prompt (`apply`), and,
/// when `keepsBudgetDuringDecode`, the decode session of a compressing policy keeps the budget at
/// every step (re-planning a layer whenever a page of new tokens has arrived).
public struct ContinuationEvaluation {
    /// One configuration's figures.
    public struct Result: Sendable {
        /// The configuration measured.
        public var configuration: EvaluationConfiguration
        /// exp(mean −log p) of the scored predictions.
        public var perplexity: Double
        /// (perplexity − reference) / reference; 0 for the reference.
        public var perplexityDelta: Double
        /// Mean KL(uncompressed ‖ treated) over the scored predictions (nats).
        public var meanKLDivergence: Double
        /// Share of scored predictions whose argmax equals the uncompressed run's.
        public var top1Agreement: Double
        /// exp(mean −log p) over the scored predictions and the prefill's prediction of x_P (C
        /// predictions: llama.cpp's count, "first prediction included").
        public var perplexityWithFirst: Double = 0
        /// Bytes of the sequence's pages right after the policy is applied (prompt tokens only).
        public var byteCount: Int
        /// `byteCount` / the uncompressed prompt cache's bytes.
        public var ratio: Double
        /// Bytes of the sequence after the last decode step (prompt and continuation).
        public var finalByteCount: Int
        /// The most bytes the sequence held after any decode step.
        public var peakByteCount: Int
        /// Continuation tokens decoded per second (including the policy's decode-step work).
        public var tokensPerSecond: Double
        /// Wall-clock seconds of applying the policy to the prompt's cache (scoring, planning and
        /// `KVStore.apply`; 0 for policies that keep the cache as it is).
        public var compressSeconds: Double = 0
        /// Wall-clock seconds of the continuation's decode steps (the model's forward passes and the
        /// decode session's work), not the scoring against the reference (log-softmax, KL divergence,
        /// argmax), which every configuration but the reference would otherwise pay alone.
        public var decodeSeconds: Double = 0
        /// Of `decodeSeconds`, the seconds spent in the decode session after each step (re-planning
        /// and applying plans); 0 without a session.
        public var decodeSessionSeconds: Double = 0
    }

    /// The model run.
    public let model: any CausalLanguageModel
    /// The store every configuration's sequence lives in (one store, forks of one prompt).
    public let storeConfiguration: KVStoreConfiguration
    /// Prefill chunk size.
    public var chunkTokenCount = 512
    /// Prompt queries kept per layer for policies (the observation window).
    public var observationTokenCount = 32
    /// Whether compressing policies keep their budget while decoding (default true).
    public var keepsBudgetDuringDecode = true

    /// The uncompressed reference every run starts with.
    public static let reference = EvaluationConfiguration(policy: try! PolicyName(parsing: "uncompressed"), budget: nil, kvCrush: nil)

    public init(model: any CausalLanguageModel, storeConfiguration: KVStoreConfiguration) {
        self.model = model
        self.storeConfiguration = storeConfiguration
    }

    /// What the prefill took.
    public struct Prefill: Sendable {
        /// Prompt tokens.
        public var tokenCount: Int
        /// Wall-clock seconds.
        public var seconds: Double
        /// Bytes of the uncompressed prompt cache.
        public var byteCount: Int
    }

    /// Runs the protocol for `configurations` (the uncompressed reference is always run first and
    /// reported first, whether or not it is in the list).
    ///
    /// - Parameter progress: called with a line of progress text per configuration.
    /// - Precondition: `promptTokenCount ≥ 1`, `continuationTokenCount ≥ 2` and the two fit in `tokens`.
    public func run(tokens: [Int32], promptTokenCount: Int, continuationTokenCount: Int, configurations: [EvaluationConfiguration],
                    progress: ((String) -> Void)? = nil) throws -> (prefill: Prefill, results: [Result]) {
        precondition(promptTokenCount >= 1 && continuationTokenCount >= 2 && promptTokenCount + continuationTokenCount <= tokens.count,
                     "ContinuationEvaluation.run: \(promptTokenCount) + \(continuationTokenCount) tokens do not fit in \(tokens.count)")
        let store = try KVStore(storeConfiguration)
        let prompt = store.addSequence()
        let start = Date()
        let (prefillLogits, observation) = try model.prefill(Array(tokens[0..<promptTokenCount]), sequence: prompt, in: store,
                                                 chunkTokenCount: chunkTokenCount, observationTokenCount: observationTokenCount)
        let prefill = Prefill(tokenCount: promptTokenCount, seconds: Date().timeIntervalSince(start), byteCount: store.byteCount(of: prompt))
        progress?(String(format: "prefill: %d tokens in %.1f s (%.1f tokens/s), %d bytes", promptTokenCount, prefill.seconds,
                         Double(promptTokenCount) / prefill.seconds, prefill.byteCount))
        let continuation = Array(tokens[promptTokenCount..<(promptTokenCount + continuationTokenCount)])
        let steps = continuationTokenCount - 1

        // The prefill's prediction of x_P: the same for every configuration (made before any policy).
        let firstNLL = -NextTokenStatistics.logSoftmax(prefillLogits[...])[Int(continuation[0])]
        var reference: Reference?
        var results = [Result]()
        let ordered = [Self.reference] + configurations.filter { $0.cachePolicy.action != .keep }
        for configuration in ordered {
            let sequence = store.fork(prompt)
            defer { store.removeSequence(sequence) }
            let compressStart = Date()
            // Planning on the model's threads (`--threads`), as its forward pass runs.
            var policy = configuration.cachePolicy
            if case .compress(var settings) = policy.action {
                settings.planningThreadCount = model.threadCount
                policy.action = .compress(settings)
            }
            let session = try policy.apply(to: sequence, in: store, observation: observation,
                                           keepingBudgetDuringDecode: keepsBudgetDuringDecode)
            let compressSeconds = Date().timeIntervalSince(compressStart)
            let bytes = store.byteCount(of: sequence)
            let d = try decode(continuation, sequence: sequence, in: store, hook: session.map { DecodeHook(session: $0) }, reference: reference)
            let isReference = reference == nil
            if isReference { reference = d.reference }
            let referencePerplexity = reference!.perplexity
            let (perplexity, seconds, sessionSeconds, peakBytes) = (d.perplexity, d.seconds, d.sessionSeconds, max(bytes, d.peakByteCount))
            let (kl, agree) = (d.klSum, d.agreeCount)
            let perplexityWithFirst = exp((d.negativeLogLikelihood + firstNLL) / Double(steps + 1))
            var r = Result(configuration: configuration, perplexity: perplexity,
                           perplexityDelta: isReference ? 0 : (perplexity - referencePerplexity) / referencePerplexity,
                           meanKLDivergence: isReference ? 0 : kl / Double(steps), top1Agreement: isReference ? 1 : Double(agree) / Double(steps),
                           byteCount: bytes, ratio: Double(bytes) / Double(prefill.byteCount),
                           finalByteCount: store.byteCount(of: sequence), peakByteCount: peakBytes,
                           tokensPerSecond: Double(continuationTokenCount) / seconds, compressSeconds: compressSeconds,
                           decodeSeconds: seconds, decodeSessionSeconds: sessionSeconds)
            r.perplexityWithFirst = perplexityWithFirst
            results.append(r)
            progress?(String(format: "%@: perplexity %.4f, KLD %.5f, top-1 %.3f, %d bytes (%.3f), %.1f tokens/s", configuration.label,
                             r.perplexity, r.meanKLDivergence, r.top1Agreement, r.byteCount, r.ratio, r.tokensPerSecond))
        }
        return (prefill, results)
    }

    /// The uncompressed run's next-token log-probabilities (`[step][vocabulary]`) and argmaxes over a
    /// continuation, and its perplexity.
    struct Reference {
        var logProbabilities: [Float]
        var top1: [Int32]
        var perplexity: Double
    }

    /// What teacher-forcing a continuation through one sequence gave.
    struct DecodeFigures {
        var perplexity: Double
        /// Σ −log p(x_{t+1}) over the scored steps.
        var negativeLogLikelihood: Double
        /// Σ KL(reference ‖ this) and the argmax agreements over the scored steps (0 without a reference).
        var klSum: Double, agreeCount: Int
        var peakByteCount: Int
        var seconds: Double, sessionSeconds: Double
        /// This run as a reference (its log-probabilities kept only when no reference was given).
        var reference: Reference
    }

    /// Decodes `continuation` one token at a time through `sequence` (its cache as it is), scoring
    /// the step at `x_t` against `x_{t+1}` (`continuation.count − 1` predictions); against
    /// `reference` when given, else keeping this run's distributions as the reference.
    func decode(_ continuation: [Int32], sequence: SequenceID, in store: KVStore, hook: DecodeHook?,
                reference: Reference?) throws -> DecodeFigures {
        let vocabulary = model.cacheShape.vocabularySize
        let steps = continuation.count - 1
        var logProbabilities = [Float](), top1 = [Int32]()
        var nll = 0.0, kl = 0.0, agree = 0, peak = 0, sessionSeconds = 0.0, seconds = 0.0
        for step in 0..<continuation.count {
            let t0 = Date()
            let logits = try model.forward([continuation[step]], sequence: sequence, in: store, logits: step < steps ? .last : .none,
                                           observer: nil, attentionObserver: hook?.recordAttention)
            if let hook {
                let t = Date()
                try hook.afterStep()
                sessionSeconds += Date().timeIntervalSince(t)
            }
            seconds += Date().timeIntervalSince(t0)  // the step's model and session work, not its scoring
            peak = max(peak, store.byteCount(of: sequence))
            guard step < steps else { break }
            let logP = NextTokenStatistics.logSoftmax(logits[...])
            nll -= logP[Int(continuation[step + 1])]
            let top = NextTokenStatistics.argmax(logits[...])
            if let reference {
                let ref = reference.logProbabilities[(step * vocabulary)..<((step + 1) * vocabulary)].map(Double.init)
                kl += NextTokenStatistics.klDivergence(ref, logP)
                if top == reference.top1[step] { agree += 1 }
            } else {
                logProbabilities += logP.map(Float.init)
                top1.append(top)
            }
        }
        let perplexity = exp(nll / Double(steps))
        return DecodeFigures(perplexity: perplexity, negativeLogLikelihood: nll, klSum: kl, agreeCount: agree, peakByteCount: peak,
                             seconds: seconds, sessionSeconds: sessionSeconds,
                             reference: reference ?? Reference(logProbabilities: logProbabilities, top1: top1, perplexity: perplexity))
    }
}
