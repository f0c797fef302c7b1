import KVQuantization
import KVSelection

/// A cache policy as named on the command line (`kvcrush eval`, `kvcrush run`) and in the library:
/// a base name plus `+` modifiers. With a budget and KVCrush settings it becomes a `CachePolicy`
/// (`cachePolicy(budget:kvCrush:regions:)`); the name means the same everywhere.
///
/// | base | what happens to the prompt's middle tokens |
/// |---|---|
/// | `full` (or `uncompressed`) | nothing: every token stays at FP16 (no budget) |
/// | `streaming` | StreamingLLM: the most recent that fit the budget are kept (the recent window widened to the budget), the rest dropped |
/// | `h2o`, `snapkv`, `tova`, `random`, `pyramid` | the host keeps its top tokens at FP16 (`BudgetPlanner`) |
/// | `tiered` | SnapKV scores spent by `TieredPlanner` over FP16 / INT8 / INT4 (= `snapkv+tiered`) |
/// | `plain` | the baseline plan: the top 2% of the middle by SnapKV score at FP16, the next at INT4 until the budget is spent (= `snapkv+plain`, `PlainPlanner`) |
/// | `uniform-int8`, `uniform-int4`, `uniform-int2` | every prompt token (sinks and window too) moved to that tier (no budget) |
///
/// | modifier | effect |
/// |---|---|
/// | `+tiered` | (scored hosts) `TieredPlanner` instead of keep-top-B at FP16, e.g. `h2o+tiered` |
/// | `+plain` | (scored hosts) `PlainPlanner`, e.g. `h2o+plain` |
/// | `+kvcrush` | KVCrush representatives of the tail, with the evaluation's crush share, representative format and anchor |
/// | `+mikv` | tokens neither kept nor representatives go to INT2 instead of being dropped (MiKV) |
/// | `+int2` | (tiered only) INT2 is one of the planner's candidate tiers |
///
/// Every score-based policy scores only from the observation-window queries (H2O accumulates over
/// them, TOVA takes the last one); `random` draws its scores from the evaluation's seed.
public struct PolicyName: Sendable, Hashable, CustomStringConvertible {
    /// The base behaviour.
    public enum Base: Sendable, Hashable {
        case full
        case host(EvictionPolicy)
        /// `TieredPlanner` spending the budget by this host's scores.
        case tiered(EvictionPolicy)
        /// `PlainPlanner` (the top 2% at FP16, the next at INT4 until the budget is spent) by this
        /// host's scores.
        case plain(EvictionPolicy)
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
    public static let baseNames = ["full", "uncompressed", "streaming", "h2o", "snapkv", "tova", "random", "pyramid", "tiered", "plain",
                                   "uniform-int8", "uniform-int4", "uniform-int2"]

    /// The canonical name: base, then the modifiers in the order `tiered`/`plain`, `kvcrush`, `mikv`, `int2`.
    public var description: String {
        var s = baseName
        if case .tiered = base, baseName != "tiered" { s += "+tiered" }
        if case .plain = base, baseName != "plain" { s += "+plain" }
        if usesKVCrush { s += "+kvcrush" }
        if restTier == .int2 { s += "+mikv" }
        if candidateTiers.contains(.int2) { s += "+int2" }
        return s
    }

    /// Whether the policy compresses to a byte budget (everything but `full` and `uniform-*`).
    public var usesBudget: Bool {
        switch base {
        case .full, .uniform: false
        case .host, .tiered, .plain: true
        }
    }

    /// Parses `name` (`BASE[+tiered|+plain][+kvcrush][+mikv][+int2]`, modifiers in any order); `seed` seeds `random`.
    ///
    /// - Throws: `PolicyError` naming what is wrong.
    public init(parsing name: String, seed: UInt64 = 0, observationWindow: Int = 32) throws(PolicyError) {
        let parts = name.split(separator: "+", omittingEmptySubsequences: false).map(String.init)
        let baseName = parts[0]
        func bad(_ why: String) -> PolicyError { PolicyError(name: name, reason: why) }
        let snap = SnapKVOptions(observationQueryCount: observationWindow)
        var b: Base
        switch baseName {
        case "full", "uncompressed": b = .full
        case "streaming": b = .host(.streamingLLM)
        case "h2o": b = .host(.h2o())
        case "snapkv": b = .host(.snapKV(snap))
        case "tova": b = .host(.tova)
        case "random": b = .host(.random(seed: seed))
        case "pyramid": b = .host(.pyramidKV(snap))
        case "tiered": b = .tiered(.snapKV(snap))
        case "plain": b = .plain(.snapKV(snap))
        case "uniform-int8": b = .uniform(.int8)
        case "uniform-int4": b = .uniform(.int4)
        case "uniform-int2": b = .uniform(.int2)
        default: throw bad("unknown base '\(baseName)' (expected one of \(Self.baseNames.joined(separator: ", ")))")
        }
        self.baseName = baseName
        var modifiers = Set<String>()
        for m in parts.dropFirst() {
            guard ["tiered", "plain", "kvcrush", "mikv", "int2"].contains(m) else {
                throw bad("unknown modifier '+\(m)' (expected +tiered, +plain, +kvcrush, +mikv or +int2)")
            }
            guard modifiers.insert(m).inserted else { throw bad("modifier '+\(m)' given twice") }
        }
        if !modifiers.isEmpty, case .full = b { throw bad("full takes no modifiers") }
        if !modifiers.isEmpty, case .uniform = b { throw bad("uniform baselines take no modifiers") }
        if modifiers.contains("tiered") {
            guard case .host(let p) = b, p.usesScores else { throw bad("+tiered needs a scored host policy (h2o, snapkv, tova, random, pyramid)") }
            b = .tiered(p)
        }
        if modifiers.contains("plain") {
            guard case .host(let p) = b, p.usesScores, !modifiers.contains("tiered") else {
                throw bad("+plain needs a scored host policy and no other planner")
            }
            b = .plain(p)
        }
        if case .plain = b, modifiers.contains("kvcrush") { throw bad("the plain plan keeps no representatives") }
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
    public var hostPolicy: EvictionPolicy? {
        switch base {
        case .full, .uniform: nil
        case .host(let p), .tiered(let p), .plain(let p): p
        }
    }
}

/// KVCrush's settings for a `+kvcrush` policy.
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

/// A policy name that does not parse: the name and why.
public struct PolicyError: Error, Equatable, Sendable, CustomStringConvertible {
    public var name: String
    public var reason: String
    public init(name: String, reason: String) {
        self.name = name
        self.reason = reason
    }
    public var description: String { "invalid policy '\(name)': \(reason)" }
}

extension PolicyName {
    /// The cache policy this name means with `budget` (a fraction of the FP16 cache; required by
    /// budgeted names, ignored by `full` and `uniform-*`) and `kvCrush` (required by `+kvcrush`):
    /// the host policy, a byte budget of that fraction with the KVCrush share, representative
    /// tier and rest tier, the tiered planner (error model derived from the store's formats) for
    /// `tiered`/`+tiered`, and the protected `regions`.
    ///
    /// - Precondition: a budget for budgeted names, KVCrush settings for `+kvcrush` (caller bugs).
    public func cachePolicy(budget: Double?, kvCrush: KVCrushSettings? = nil, regions: StreamRegions = StreamRegions()) -> CachePolicy {
        switch base {
        case .full: return CachePolicy(name: description, action: .keep)
        case .uniform(let tier): return CachePolicy(name: description, action: .uniform(tier))
        case .host(let host), .tiered(let host), .plain(let host):
            guard let b = budget else { preconditionFailure("PolicyName.cachePolicy: \(self) needs a budget") }
            precondition(usesKVCrush == (kvCrush != nil), "PolicyName.cachePolicy: KVCrush settings go with +kvcrush policies")
            let byteBudget = ByteBudget.fraction(b, representativeShare: kvCrush?.share ?? 0,
                                                 representativeTier: kvCrush?.representativeTier ?? .int4, restTier: restTier)
            var planner = CompressionSettings.PlannerKind.budget
            if case .tiered = base { planner = .tiered(nil, candidateTiers: candidateTiers) }
            if case .plain = base { planner = .plain(topShare: 0.02, tier: .int4) }
            return CachePolicy(name: description, action: .compress(CompressionSettings(
                policy: host, regions: regions, budget: byteBudget, planner: planner,
                kvCrush: KVCrushSelector(anchor: kvCrush?.anchor ?? .random(seed: 0)))))
        }
    }
}
