import KVSelection
import KVStore

/// What is done to a sequence's cache in an end-to-end run: once after the prompt's prefill (e.g.
/// compress it to a budget), and optionally during every decode step (e.g. keep the budget).
///
/// A treatment is a name, the configuration it reports, and a closure that changes the cache only
/// through the store's public API (`apply` a `RetentionPlan`, `attend` for scores) and may return
/// a `DecodeHook` for the decode steps. Built in: the uncompressed baseline, the uniform formats,
/// and any `KVSelection` policy through `KVCompressor` (`compressed`).
public struct CacheTreatment: Sendable {
    /// What the cache holds when a treatment runs.
    public struct Context: Sendable {
        public var store: KVStore
        public var sequence: SequenceID
        /// Tokens of the prompt (positions `0 ..< promptTokenCount` of the sequence).
        public var promptTokenCount: Int
        /// Queries of the prompt's last tokens, per layer.
        public var observation: ObservationWindow

        public init(store: KVStore, sequence: SequenceID, promptTokenCount: Int, observation: ObservationWindow) {
            self.store = store
            self.sequence = sequence
            self.promptTokenCount = promptTokenCount
            self.observation = observation
        }
    }

    /// What a treatment does during decode: it sees each layer's attention result (with weights)
    /// and acts after each step.
    public struct DecodeHook {
        /// Called with every layer's attention result of a step (weights included).
        public var recordAttention: (Int, AttentionResult) -> Void
        /// Called after each decode step, once its token is in every layer.
        public var afterStep: () throws -> Void

        public init(recordAttention: @escaping (Int, AttentionResult) -> Void, afterStep: @escaping () throws -> Void) {
            self.recordAttention = recordAttention
            self.afterStep = afterStep
        }
    }

    /// The policy's name as reported (`uncompressed`, `uniform-int8`, `snapkv`, …).
    public var policy: String
    /// The byte budget as a fraction of the FP16 cache, when the policy has one.
    public var budget: Double?
    /// KVCrush settings, when the policy uses them (reported as given).
    public var crushShare: Double?
    public var representativeFormat: String?
    public var anchor: String?
    /// Runs once after the prompt's prefill; returns what to do during decode, if anything.
    public var afterPrefill: @Sendable (Context) throws -> DecodeHook?

    public init(policy: String, budget: Double? = nil, crushShare: Double? = nil, representativeFormat: String? = nil,
                anchor: String? = nil, afterPrefill: @escaping @Sendable (Context) throws -> DecodeHook?) {
        self.policy = policy
        self.budget = budget
        self.crushShare = crushShare
        self.representativeFormat = representativeFormat
        self.anchor = anchor
        self.afterPrefill = afterPrefill
    }

    /// The cache as prefilled, at FP16.
    public static let uncompressed = CacheTreatment(policy: "uncompressed", afterPrefill: { _ in nil })

    /// Every prompt token moved to `tier` in every stream (tokens decoded later stay at FP16).
    public static func uniform(_ tier: Tier) -> CacheTreatment {
        precondition(tier != .dropped, "CacheTreatment.uniform: cannot keep a cache of dropped tokens")
        return CacheTreatment(policy: "uniform-\(tier)", afterPrefill: { c in
            try c.store.apply(uniformPlan(tier, promptTokenCount: c.promptTokenCount, configuration: c.store.configuration),
                              to: c.sequence)
            return nil
        })
    }

    /// The plan moving positions `0 ..< promptTokenCount` of every stream to `tier`.
    public static func uniformPlan(_ tier: Tier, promptTokenCount: Int, configuration: KVStoreConfiguration) -> RetentionPlan {
        let moves = (0..<promptTokenCount).map { StreamPlan.Move(position: Int32($0), tier: tier) }
        var streams = [StreamPlan]()
        for l in 0..<configuration.layerCount {
            for h in 0..<configuration.kvHeadCount { streams.append(StreamPlan(layer: l, kvHead: h, moves: moves)) }
        }
        return RetentionPlan(streams: streams)
    }

    /// A `KVSelection` policy run by `KVCompressor`: the prompt is compressed once from the
    /// observation window (SnapKV style, `compressPrefill`), and, if `keepsBudgetDuringDecode`, a
    /// `DecodeSession` accumulates every decode step's attention and re-plans each layer whenever a
    /// page of new tokens has arrived, so the cache stays within the budget.
    ///
    /// The reported fields (`policy`, `budget`, …) are taken as given.
    public static func compressed(_ settings: CompressionSettings, policy: String, budget: Double?, crushShare: Double?,
                                  representativeFormat: String?, anchor: String?, keepsBudgetDuringDecode: Bool = true) -> CacheTreatment {
        CacheTreatment(policy: policy, budget: budget, crushShare: crushShare, representativeFormat: representativeFormat,
                       anchor: anchor, afterPrefill: { c in
            let compressor = KVCompressor(store: c.store, settings: settings)
            let layers = c.store.configuration.layerCount
            try compressor.compressPrefill(c.sequence, observationQueries: c.observation.queries,
                                           queryPositions: Array(repeating: c.observation.positions, count: layers))
            guard keepsBudgetDuringDecode else { return nil }
            let session = DecodeSessionBox(compressor.decodeSession(c.sequence))
            return DecodeHook(recordAttention: { layer, result in session.value.record(layer: layer, result) },
                              afterStep: { for l in 0..<layers { try session.value.appended(layer: l, count: 1) } })
        })
    }

    /// The built-in treatment called `name`: `uncompressed` (or `fp16`), `uniform-int8`,
    /// `uniform-int4`, `uniform-int2`; `nil` for any other name.
    public static func builtIn(_ name: String) -> CacheTreatment? {
        switch name {
        case "uncompressed", "fp16": .uncompressed
        case "uniform-int8": .uniform(.int8)
        case "uniform-int4": .uniform(.int4)
        case "uniform-int2": .uniform(.int2)
        default: nil
        }
    }
}

/// A mutable decode session shared by the closures of one `DecodeHook` (used on one thread).
final class DecodeSessionBox {
    var value: KVCompressor.DecodeSession
    init(_ value: KVCompressor.DecodeSession) { self.value = value }
}
