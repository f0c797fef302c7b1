import KVCrush
import KVExperiments
import KVModel

/// The selection knobs `eval`, `run` and `generate` share: one policy grammar
/// (`PolicyName`: `streaming`, `h2o`, `snapkv`, `tova`, `random`, `pyramid`, `tiered`,
/// `uniform-int8|int4|int2`, `full`/`uncompressed`, with `+tiered`, `+kvcrush`, `+mikv`, `+int2`),
/// budgets, the KVCrush share, representative format and anchor (each a list that is swept), and
/// the sinks and recent window.
struct SelectionOptions {
    var policies: [PolicyName]
    var budgets: [Double]
    var crushShares: [Double]
    var representativeTiers: [Tier]
    var anchors: [Anchor]
    var seed: UInt64
    var observationWindow: Int
    var regions: StreamRegions
    var decodeReplanInterval: Int?
    /// `--protected-tier` when given: the tier of `regions` (FP16 otherwise) and of every preset (each
    /// preset's own otherwise).
    var protectedTier: Tier?

    /// Every (policy, budget, KVCrush setting) combination to run.
    var configurations: [EvaluationConfiguration] {
        evaluationConfigurations(policies: policies, budgets: budgets, crushShares: crushShares,
                                 representativeTiers: representativeTiers, anchors: anchors, regions: regions,
                                 decodeReplanInterval: decodeReplanInterval)
    }

    /// Reads `--seed`, `--window`, the policies (`names`, or `--policies` with `defaultPolicies`),
    /// `--budgets`, `--crush-share`, `--rep-format`, `--anchor`, `--sinks` and `--recent`.
    /// `readsWindow: false` leaves `--window` unread (an error if given): the model runner's
    /// observation window is fixed at 32.
    static func parse(_ args: inout CommandLineArguments, names: [String]? = nil, defaultPolicies: String,
                      defaultBudgets: [Double], readsWindow: Bool = true) throws(UsageError) -> SelectionOptions {
        let seed = try args.value("seed", default: UInt64(0), expected: "a non-negative integer") { UInt64($0) }
        var window = 32
        if readsWindow {
            window = try args.value("window", default: 32, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        }
        var rawNames = names ?? []
        if names == nil {
            rawNames = try args.list("policies", default: defaultPolicies.split(separator: ",").map(String.init), expected: "policies") { String?.some($0) }
        }
        var policies = [PolicyName]()
        for name in rawNames {
            do { policies.append(try PolicyName(parsing: name, seed: seed, observationWindow: window)) } catch {
                throw UsageError(message: "--policies: \(error)", command: args.command)
            }
        }
        let sinks = try args.value("sinks", default: 4, expected: "a non-negative integer") { Int($0).flatMap { $0 >= 0 ? $0 : nil } }
        let recent = try args.value("recent", default: 32, expected: "a non-negative integer") { Int($0).flatMap { $0 >= 0 ? $0 : nil } }
        let protectedTier: Tier? = try args.string("protected-tier") == nil ? nil
            : args.value("protected-tier", default: Tier.fp16, expected: "fp16 or int8") { Tier(name: $0).flatMap { $0 == .fp16 || $0 == .int8 ? $0 : nil } }
        let replan: Int? = try args.string("decode-replan") == nil ? nil
            : args.value("decode-replan", default: 0, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let budgets = try args.list("budgets", default: defaultBudgets, expected: "fractions in (0, 1]") {
            Double($0).flatMap { $0 > 0 && $0 <= 1 ? $0 : nil }
        }
        let shares = try args.list("crush-share", default: [0.3], expected: "shares in (0, 1]") {
            Double($0).flatMap { $0 > 0 && $0 <= 1 ? $0 : nil }
        }
        let repTiers = try args.list("rep-format", default: [Tier.int4], expected: "fp16, int8, int4 or int2") {
            Tier(name: $0).flatMap { $0 == .dropped ? nil : $0 }
        }
        let anchors = try args.list("anchor", default: [Anchor.alternate], expected: "random, zeros, ones, mean or alternate") {
            KVCrushSettings.anchor(named: $0, seed: seed)
        }
        if policies.contains(where: { $0.restTier == Tier.int2 && $0.usesKVCrush }) && repTiers.contains(.int2) {
            throw UsageError(message: "+mikv keeps the rest at INT2, so --rep-format int2 adds nothing", command: args.command)
        }
        return SelectionOptions(policies: policies, budgets: budgets, crushShares: shares, representativeTiers: repTiers,
                                anchors: anchors, seed: seed, observationWindow: window,
                                regions: StreamRegions(sinkTokenCount: sinks, recentTokenCount: recent, tier: protectedTier ?? .fp16),
                                decodeReplanInterval: replan, protectedTier: protectedTier)
    }
}
