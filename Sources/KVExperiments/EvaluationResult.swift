import KVQuantization
import KVSelection

/// An evaluation that cannot run: a bad policy name or setting, a dump too short for the protocol,
/// or a compression that failed.
public enum EvaluationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A setting outside its range: which, and the rule.
    case invalidSetting(String, String)
    /// The dump has too few queries for the protocol: needed from this position, has from that one.
    case notEnoughQueries(neededFrom: Int, queryStart: Int)
    /// Compressing a configuration failed (e.g. a budget below sinks + window).
    case compression(configuration: String, budget: Double?, message: String)
    /// Storing the dump's tensors failed (a value outside FP16's range).
    case store(String)

    public var description: String {
        switch self {
        case .invalidSetting(let n, let rule): "invalid setting \(n): \(rule)"
        case .notEnoughQueries(let needed, let start):
            "the protocol needs queries from position \(needed), but the dump has them from \(start) (fewer --window or evaluation queries)"
        case .compression(let c, let b, let m): "\(c) at budget \(b.map { String($0) } ?? "none"): \(m)"
        case .store(let m): "storing the dump: \(m)"
        }
    }
}

/// The figures of one configuration on one layer, or on all layers together (`layer == nil`).
///
/// Per (layer, query head, evaluation query): `relErr = ‖o − ô‖₂ / ‖o‖₂` of the attention output
/// against the FP64 reference over the uncompressed cache, and the reference attention mass on
/// tokens still stored. Mean, 95th percentile (nearest rank) and maximum are over those samples
/// (pooled over layers for the overall row).
public struct EvaluationResult: Sendable, Hashable {
    /// The policy's canonical name (`snapkv+kvcrush`, `uniform-int4`, …).
    public var policy: String
    /// Budget as a fraction of the prompt's FP16 bytes; `nil` for budget-free baselines.
    public var budget: Double?
    /// KVCrush's share, representative tier and anchor name; `nil` without `+kvcrush`.
    public var crushShare: Double?
    public var representativeTier: Tier?
    public var anchor: String?
    /// The model layer, or `nil` for all evaluated layers together.
    public var layer: Int?
    public var relErrMean: Double
    public var relErrP95: Double
    public var relErrMax: Double
    /// Mean over samples of the reference attention mass on tokens still in the cache.
    public var massKept: Double
    /// Exact bytes of the compressed prompt cache in the store: every page of every stream (codes,
    /// scales, zeros, positions, page-wise parameters, unused slots of partial pages).
    public var byteCount: Int
    /// Bytes the store takes for the same prompt tokens at FP16: key and value rows and 4-byte
    /// positions, in whole pages (`⌈P / pageCapacity⌉` pages per stream).
    public var fp16ByteCount: Int
    /// Prompt tokens per tier, summed over streams (KV heads, and layers for the overall row);
    /// `dropped` are prompt tokens no longer stored.
    public var tokenCounts: [Tier: Int]

    /// `byteCount / fp16ByteCount`.
    public var ratio: Double { fp16ByteCount == 0 ? 0 : Double(byteCount) / Double(fp16ByteCount) }

    /// The configuration's label (policy, and KVCrush's format and share).
    public var label: String {
        guard let s = crushShare, let t = representativeTier else { return policy }
        return "\(policy) (\(t) reps, share \(formatShare(s)))"
    }

    /// Aggregates per-sample figures into one result.
    static func summarise(errors: [Double], masses: [Double]) -> (mean: Double, p95: Double, max: Double, mass: Double) {
        guard !errors.isEmpty else { return (0, 0, 0, 1) }
        let sorted = errors.sorted()
        let rank = max(1, Int((0.95 * Double(sorted.count)).rounded(.up)))
        return (errors.reduce(0, +) / Double(errors.count), sorted[rank - 1], sorted.last!,
                masses.reduce(0, +) / Double(masses.count))
    }
}

/// Everything an evaluation produced.
public struct EvaluationReport: Sendable {
    /// The dump's file name.
    public var dumpName: String
    public var model: String
    /// The evaluated model layers.
    public var layers: [Int]
    /// Prompt tokens P, observation window W, evaluation queries E.
    public var promptTokenCount: Int
    public var observationWindow: Int
    public var evaluationQueryCount: Int
    /// Results in configuration order, each overall row followed by its per-layer rows.
    public var results: [EvaluationResult]

    public init(dumpName: String, model: String, layers: [Int], promptTokenCount: Int, observationWindow: Int,
                evaluationQueryCount: Int, results: [EvaluationResult]) {
        self.dumpName = dumpName
        self.model = model
        self.layers = layers
        self.promptTokenCount = promptTokenCount
        self.observationWindow = observationWindow
        self.evaluationQueryCount = evaluationQueryCount
        self.results = results
    }

    /// The rows over all layers.
    public var overall: [EvaluationResult] { results.filter { $0.layer == nil } }
}
