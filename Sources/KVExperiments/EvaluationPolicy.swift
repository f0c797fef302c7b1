import KVQuantization
import KVSelection
import KVStore

/// One policy of an evaluation, as named on the command line: a base name plus `+` modifiers.
///
/// | base | what happens to the prompt's middle tokens |
/// |---|---|
/// | `full` | nothing: every token stays at FP16 (no budget) |
/// | `streaming` | StreamingLLM: dropped, with the recent window widened to fill the budget (`Evaluation.storeConfiguration(for:)`) |
/// | `h2o`, `snapkv`, `tova`, `random`, `pyramid` | the host keeps its top tokens at FP16 (`BudgetPlanner`) |
/// | `tiered` | SnapKV scores spent by `TieredPlanner` over FP16 / INT8 / INT4 (= `snapkv+tiered`) |
/// | `uniform-int8`, `uniform-int4`, `uniform-int2` | every prompt token (sinks and window too) moved to that tier (no budget) |
///
/// | modifier | effect |
/// |---|---|
/// | `+tiered` | (scored hosts) `TieredPlanner` instead of keep-top-B at FP16, e.g. `h2o+tiered` |
/// | `+kvcrush` | KVCrush representatives of the tail, with the evaluation's crush share, representative format and anchor |
/// | `+mikv` | tokens neither kept nor representatives go to INT2 instead of being dropped (MiKV) |
/// | `+int2` | (tiered only) INT2 is one of the planner's candidate tiers |
///
/// Every score-based policy scores only from the observation-window queries (H2O accumulates over
/// them, TOVA takes the last one); `random` draws its scores from the evaluation's seed.
public struct EvaluationPolicy: Sendable, Hashable, CustomStringConvertible {
    /// The base behaviour.
    public enum Base: Sendable, Hashable {
        case full
        case host(EvictionPolicy)
        /// `TieredPlanner` spending the budget by this host's scores.
        case tiered(EvictionPolicy)
        case uniform(Tier)
    }

    /// The base name as written (`snapkv`, `uniform-int4`, …).
    public let baseName: String
    public let base: Base
    /// KVCrush representatives are added (`+kvcrush`).
    public let usesKVCrush: Bool
    /// Where tokens neither kept nor chosen go: `.dropped`, or `.int2` with `+mikv`.
    public let restTier: Tier
    /// `tiered` only: the stored tiers the planner may assign.
    public let candidateTiers: [Tier]

    /// The names `parse` accepts as a base.
    public static let baseNames = ["full", "streaming", "h2o", "snapkv", "tova", "random", "pyramid", "tiered",
                                   "uniform-int8", "uniform-int4", "uniform-int2"]

    /// The canonical name: base, then the modifiers in the order `tiered`, `kvcrush`, `mikv`, `int2`.
    public var description: String {
        var s = baseName
        if case .tiered = base, baseName != "tiered" { s += "+tiered" }
        if usesKVCrush { s += "+kvcrush" }
        if restTier == .int2 { s += "+mikv" }
        if candidateTiers.contains(.int2) { s += "+int2" }
        return s
    }

    /// Whether the policy compresses to a byte budget (everything but `full` and `uniform-*`).
    public var usesBudget: Bool {
        switch base {
        case .full, .uniform: false
        case .host, .tiered: true
        }
    }

    /// Parses `name` (`BASE[+tiered][+kvcrush][+mikv][+int2]`, modifiers in any order); `seed` seeds `random`.
    ///
    /// - Throws: `EvaluationError.invalidPolicy` naming what is wrong.
    public init(parsing name: String, seed: UInt64 = 0, observationWindow: Int = 32) throws(EvaluationError) {
        let parts = name.split(separator: "+", omittingEmptySubsequences: false).map(String.init)
        let baseName = parts[0]
        func bad(_ why: String) -> EvaluationError { .invalidPolicy(name, why) }
        let snap = SnapKVOptions(observationQueryCount: observationWindow)
        var b: Base
        switch baseName {
        case "full": b = .full
        case "streaming": b = .host(.streamingLLM)
        case "h2o": b = .host(.h2o())
        case "snapkv": b = .host(.snapKV(snap))
        case "tova": b = .host(.tova)
        case "random": b = .host(.random(seed: seed))
        case "pyramid": b = .host(.pyramidKV(snap))
        case "tiered": b = .tiered(.snapKV(snap))
        case "uniform-int8": b = .uniform(.int8)
        case "uniform-int4": b = .uniform(.int4)
        case "uniform-int2": b = .uniform(.int2)
        default: throw bad("unknown base '\(baseName)' (expected one of \(Self.baseNames.joined(separator: ", ")))")
        }
        self.baseName = baseName
        var modifiers = Set<String>()
        for m in parts.dropFirst() {
            guard ["tiered", "kvcrush", "mikv", "int2"].contains(m) else { throw bad("unknown modifier '+\(m)' (expected +tiered, +kvcrush, +mikv or +int2)") }
            guard modifiers.insert(m).inserted else { throw bad("modifier '+\(m)' given twice") }
        }
        if !modifiers.isEmpty, case .full = b { throw bad("full takes no modifiers") }
        if !modifiers.isEmpty, case .uniform = b { throw bad("uniform baselines take no modifiers") }
        if modifiers.contains("tiered") {
            guard case .host(let p) = b, p.usesScores else { throw bad("+tiered needs a scored host policy (h2o, snapkv, tova, random, pyramid)") }
            b = .tiered(p)
        }
        if modifiers.contains("int2") {
            guard case .tiered = b else { throw bad("+int2 applies to tiered planners only") }
        }
        base = b
        usesKVCrush = modifiers.contains("kvcrush")
        restTier = modifiers.contains("mikv") ? .int2 : .dropped
        candidateTiers = modifiers.contains("int2") ? [.fp16, .int8, .int4, .int2] : [.fp16, .int8, .int4]
        if modifiers.contains("int2") && restTier == .int2 { throw bad("+int2 and +mikv together leave INT2 nothing to add") }
    }

    /// The host policy whose scores rank tokens (`tiered` uses SnapKV's).
    func hostPolicy(observationWindow: Int) -> EvictionPolicy? {
        switch base {
        case .full, .uniform: nil
        case .host(let p): p
        case .tiered(let p): p
        }
    }
}

/// KVCrush's settings for one evaluated configuration.
public struct KVCrushSettings: Sendable, Hashable {
    /// Share of the available bytes (after sinks and window) given to representatives.
    public var share: Double
    /// The tier representatives are stored at.
    public var representativeTier: Tier
    /// The anchor signatures are compared with.
    public var anchor: Anchor

    public init(share: Double, representativeTier: Tier, anchor: Anchor) {
        self.share = share
        self.representativeTier = representativeTier
        self.anchor = anchor
    }

    /// `random`, `zeros`, `ones`, `mean` or `alternate` (random uses `seed`).
    public static func anchor(named name: String, seed: UInt64) -> Anchor? {
        switch name {
        case "random": .random(seed: seed)
        case "zeros": .zeros
        case "ones": .ones
        case "mean": .mean
        case "alternate": .alternate
        default: nil
        }
    }

    /// The anchor's command-line name.
    public static func name(of anchor: Anchor) -> String {
        switch anchor {
        case .random: "random"
        case .zeros: "zeros"
        case .ones: "ones"
        case .mean: "mean"
        case .alternate: "alternate"
        }
    }
}

/// One configuration the evaluation runs: a policy, its budget and its KVCrush settings.
public struct EvaluationConfiguration: Sendable, Hashable {
    public var policy: EvaluationPolicy
    /// Budget as a fraction of the prompt's FP16 bytes; `nil` for `full` and `uniform-*`.
    public var budget: Double?
    /// KVCrush settings; `nil` unless the policy has `+kvcrush`.
    public var kvCrush: KVCrushSettings?

    public init(policy: EvaluationPolicy, budget: Double?, kvCrush: KVCrushSettings?) {
        self.policy = policy
        self.budget = budget
        self.kvCrush = kvCrush
    }

    /// A short human label: the policy, plus representative format and share with KVCrush.
    public var label: String {
        guard let k = kvCrush else { return policy.description }
        return "\(policy) (\(k.representativeTier) reps, share \(formatShare(k.share)))"
    }
}

func formatShare(_ x: Double) -> String {
    var s = String(x)
    if s.hasSuffix(".0") { s.removeLast(2) }
    return s
}

/// Every configuration of a sweep: budget-free policies once; budgeted ones once per budget, and
/// `+kvcrush` ones once per (crush share, representative tier, anchor).
public func evaluationConfigurations(policies: [EvaluationPolicy], budgets: [Double], crushShares: [Double],
                                     representativeTiers: [Tier], anchors: [Anchor]) -> [EvaluationConfiguration] {
    var out: [EvaluationConfiguration] = []
    for p in policies where !p.usesBudget { out.append(EvaluationConfiguration(policy: p, budget: nil, kvCrush: nil)) }
    for b in budgets {
        for p in policies where p.usesBudget {
            if p.usesKVCrush {
                for s in crushShares {
                    for t in representativeTiers {
                        for a in anchors {
                            out.append(EvaluationConfiguration(policy: p, budget: b, kvCrush: KVCrushSettings(share: s, representativeTier: t, anchor: a)))
                        }
                    }
                }
            } else {
                out.append(EvaluationConfiguration(policy: p, budget: b, kvCrush: nil))
            }
        }
    }
    return out
}

extension EvaluationConfiguration {
    /// The `KVCompressor` settings this configuration runs with (`nil` for `full` and the uniform
    /// baselines, which need no planning): the host policy, a budget of `budget` of the FP16 bytes
    /// with the KVCrush share, representative tier and rest tier, and the tiered planner (error
    /// model derived from `tierFormats`) for `+tiered`. Shared by `kvcrush eval` and `kvcrush run`.
    ///
    /// - Parameter streamingWindowFillsBudget: StreamingLLM's recent window was widened to fill the
    ///   budget (as `Evaluation` does), so any KVCrush representatives get what is left: share 1.
    public func compressionSettings(tierFormats: TierFormats, streamingWindowFillsBudget: Bool = false) -> CompressionSettings? {
        guard let host = policy.hostPolicy(observationWindow: 0), let b = budget else { return nil }
        var share = kvCrush?.share ?? 0
        if streamingWindowFillsBudget, case .host(.streamingLLM) = policy.base, kvCrush != nil { share = 1 }
        let byteBudget = ByteBudget.fraction(b, representativeShare: share, representativeTier: kvCrush?.representativeTier ?? .int4,
                                             restTier: policy.restTier)
        var planner = CompressionSettings.PlannerKind.budget
        if case .tiered = policy.base {
            planner = .tiered(TierErrorModel.derived(from: tierFormats), candidateTiers: policy.candidateTiers)
        }
        return CompressionSettings(policy: host, budget: byteBudget, planner: planner,
                                   kvCrush: KVCrushSelector(anchor: kvCrush?.anchor ?? .random(seed: 0)))
    }
}
