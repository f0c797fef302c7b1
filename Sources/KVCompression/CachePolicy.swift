import KVQuantization
import KVSelection
import KVStore

/// The queries of a prompt's last tokens, per layer: what attention-score policies (SnapKV, H2O,
/// KVCrush signatures) observe when a prompt's cache is compressed.
public struct ObservationWindow: Sendable, Hashable {
    /// Positions of the observed queries (ascending, inside the prompt).
    public var positions: [Int32]
    /// Per layer, `[queryHead][query][headDim]` (after RoPE, as attention sees them).
    public var queries: [[Float]]

    public init(positions: [Int32], queries: [[Float]]) {
        self.positions = positions
        self.queries = queries
    }
}

/// What is done to a sequence's cache once its prompt is in: the one description that the library,
/// `kvcrush eval` and `kvcrush run` share (names parse with `PolicyName`).
///
/// - `keep`: nothing; every token stays at FP16 (the uncompressed reference).
/// - `uniform(tier)`: every prompt token of every stream moves to `tier` (no budget; tokens
///   appended later stay at FP16).
/// - `compress(settings)`: `KVCompressor` compresses the prompt to a byte budget from the
///   observation window's attention, and its decode session can keep the budget while generating.
public struct CachePolicy: Sendable, Hashable, CustomStringConvertible {
    /// What the policy does.
    public enum Action: Sendable, Hashable {
        case keep
        case uniform(Tier)
        case compress(CompressionSettings)
    }

    /// The canonical name (`uncompressed`, `uniform-int4`, `snapkv+kvcrush`, …).
    public var name: String
    public var action: Action

    public init(name: String, action: Action) {
        self.name = name
        self.action = action
    }

    /// Every token at FP16.
    public static let uncompressed = CachePolicy(name: "uncompressed", action: .keep)

    /// Every prompt token moved to `tier`.
    public static func uniform(_ tier: Tier) -> CachePolicy {
        precondition(tier != .dropped, "CachePolicy.uniform: a cache of dropped tokens keeps nothing")
        return CachePolicy(name: "uniform-\(tier)", action: .uniform(tier))
    }

    /// A policy compressing with `settings`, reported as `name`.
    public static func compressed(_ settings: CompressionSettings, name: String) -> CachePolicy {
        CachePolicy(name: name, action: .compress(settings))
    }

    public var description: String { name }

    /// The compression settings, for `compress` policies.
    public var compressionSettings: CompressionSettings? {
        if case .compress(let s) = action { return s }
        return nil
    }

    /// Applies the policy to sequence `id` of `store` right after its prompt was prefilled (every
    /// stream holds positions `0 ..< n` at FP16, or a windowed layer's stream the last of them), and returns the decode session that keeps the
    /// budget while generating when `keepingBudgetDuringDecode` and the policy compresses.
    ///
    /// - Parameter observation: the prompt's last queries; required by `compress` policies whose
    ///   host or KVCrush uses attention scores (`nil` is allowed for the others).
    /// - Throws: `CompressionError` (a budget below sinks + window, the store's byte limit); the
    ///   sequence is then unchanged.
    public func apply(to id: SequenceID, in store: KVStore, observation: ObservationWindow?,
                      keepingBudgetDuringDecode: Bool = false) throws(CompressionError) -> KVCompressor.DecodeSession? {
        let c = store.configuration
        switch action {
        case .keep:
            return nil
        case .uniform(let tier):
            let n = store.nextPosition(of: id, layer: 0)
            var plan = RetentionPlan.uniform(tier, positions: 0..<Int32(n), layerCount: c.layerCount, kvHeadCount: c.kvHeadCount)
            if c.layerSlidingWindows != nil {
                // A windowed layer holds only its window's tokens: move those.
                plan.streams = plan.streams.map { sp in
                    guard c.slidingWindow(layer: sp.layer) != nil else { return sp }
                    let held = store.tokenTiers(of: id, layer: sp.layer, kvHead: sp.kvHead).positions
                    return StreamPlan(layer: sp.layer, kvHead: sp.kvHead, moves: held.map { StreamPlan.Move(position: $0, tier: tier) })
                }
            }
            do { try store.apply(plan, to: id) } catch { throw .store(error) }
            return nil
        case .compress(let settings):
            let compressor = KVCompressor(store: store, settings: settings)
            let window = observation ?? ObservationWindow(positions: [], queries: [])
            try compressor.compressPrefill(id, observation: window, reservingDecodeHeadroom: keepingBudgetDuringDecode)
            return keepingBudgetDuringDecode ? compressor.decodeSession(id) : nil
        }
    }
}
