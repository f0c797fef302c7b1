import KVSelection
import KVStore

/// What is done to a sequence's cache in an end-to-end run: once after the prompt's prefill (e.g.
/// compress it to a budget), and optionally after every decode step (e.g. keep the budget).
///
/// Policies plug in here: a treatment is a name, the configuration it reports, and closures that
/// change the cache only through the store's public API (`apply` a `RetentionPlan`, `attend` for
/// scores). The uncompressed baseline and the uniform formats are built in; score-based policies
/// come from `KVSelection` through a compressor.
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

    /// The policy's name as reported (`uncompressed`, `uniform-int8`, …).
    public var policy: String
    /// The byte budget as a fraction of the FP16 cache, when the policy has one.
    public var budget: Double?
    /// KVCrush settings, when the policy uses them (reported as given).
    public var crushShare: Double?
    public var representativeFormat: String?
    public var anchor: String?
    /// Runs once after the prompt's prefill.
    public var afterPrefill: @Sendable (Context) throws -> Void
    /// Runs after every decode step (`nil`: nothing).
    public var afterDecodeStep: (@Sendable (Context) throws -> Void)?

    public init(policy: String, budget: Double? = nil, crushShare: Double? = nil, representativeFormat: String? = nil,
                anchor: String? = nil, afterPrefill: @escaping @Sendable (Context) throws -> Void,
                afterDecodeStep: (@Sendable (Context) throws -> Void)? = nil) {
        self.policy = policy
        self.budget = budget
        self.crushShare = crushShare
        self.representativeFormat = representativeFormat
        self.anchor = anchor
        self.afterPrefill = afterPrefill
        self.afterDecodeStep = afterDecodeStep
    }

    /// The cache as prefilled, at FP16.
    public static let uncompressed = CacheTreatment(policy: "uncompressed", afterPrefill: { _ in })

    /// Every prompt token moved to `tier` in every stream (tokens decoded later stay at FP16).
    public static func uniform(_ tier: Tier) -> CacheTreatment {
        precondition(tier != .dropped, "CacheTreatment.uniform: cannot keep a cache of dropped tokens")
        return CacheTreatment(policy: "uniform-\(tier)", afterPrefill: { c in
            try c.store.apply(uniformPlan(tier, promptTokenCount: c.promptTokenCount, configuration: c.store.configuration),
                              to: c.sequence)
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
