import KVCompression
import KVQuantization
import KVSelection

/// One configuration an experiment (`kvcrush eval`, `kvcrush run`) runs: a policy name, its
/// budget, its KVCrush settings and the protected regions, which together are a `CachePolicy`.
public struct EvaluationConfiguration: Sendable, Hashable {
    public var policy: PolicyName
    /// Budget as a fraction of the prompt's FP16 bytes; `nil` for `full` and `uniform-*`.
    public var budget: Double?
    /// KVCrush settings; `nil` unless the policy has `+kvcrush`.
    public var kvCrush: KVCrushSettings?
    /// Sinks and recent window kept at FP16 (default 4 and 32).
    public var regions: StreamRegions
    /// During decode, tokens between two plans of a layer (`nil`: the store's page capacity;
    /// `CompressionSettings.decodeReplanInterval`).
    public var decodeReplanInterval: Int?

    public init(policy: PolicyName, budget: Double?, kvCrush: KVCrushSettings?, regions: StreamRegions = StreamRegions(),
                decodeReplanInterval: Int? = nil) {
        self.policy = policy
        self.budget = budget
        self.kvCrush = kvCrush
        self.regions = regions
        self.decodeReplanInterval = decodeReplanInterval
    }

    /// What the configuration does to a cache.
    public var cachePolicy: CachePolicy {
        var p = policy.cachePolicy(budget: budget, kvCrush: kvCrush, regions: regions)
        if case .compress(var s) = p.action {
            s.decodeReplanInterval = decodeReplanInterval
            p.action = .compress(s)
        }
        return p
    }

    /// The KVCrush share, representative format and anchor name, as reports print them.
    public var crushShare: Double? { kvCrush?.share }
    public var representativeFormat: String? { kvCrush?.representativeTier.description }
    public var anchorName: String? { kvCrush.map { KVCrushSettings.name(of: $0.anchor) } }

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
public func evaluationConfigurations(policies: [PolicyName], budgets: [Double], crushShares: [Double],
                                     representativeTiers: [Tier], anchors: [Anchor],
                                     regions: StreamRegions = StreamRegions(), decodeReplanInterval: Int? = nil) -> [EvaluationConfiguration] {
    var out: [EvaluationConfiguration] = []
    for p in policies where !p.usesBudget { out.append(EvaluationConfiguration(policy: p, budget: nil, kvCrush: nil, regions: regions, decodeReplanInterval: decodeReplanInterval)) }
    for b in budgets {
        for p in policies where p.usesBudget {
            if p.usesKVCrush {
                for s in crushShares {
                    for t in representativeTiers {
                        for a in anchors {
                            out.append(EvaluationConfiguration(policy: p, budget: b, kvCrush: KVCrushSettings(share: s, representativeTier: t, anchor: a), regions: regions, decodeReplanInterval: decodeReplanInterval))
                        }
                    }
                }
            } else {
                out.append(EvaluationConfiguration(policy: p, budget: b, kvCrush: nil, regions: regions, decodeReplanInterval: decodeReplanInterval))
            }
        }
    }
    return out
}
