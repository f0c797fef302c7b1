import KVCrush

/// The cache treatments `run` and `generate` accept: built-in formats and `KVSelection` policies
/// with their budget and KVCrush knobs.
enum TreatmentOptions {
    /// Names accepted by `--policies` / `--policy`.
    static let builtInNames = ["uncompressed", "uniform-int8", "uniform-int4", "uniform-int2"]
    static let policyNames = ["full", "streaming-llm", "h2o", "snapkv", "tova", "random", "pyramidkv"]
    static let help = """
        Policies: uncompressed (the reference), uniform-int8, uniform-int4, uniform-int2 (every prompt
        token moved to that tier), and the budgeted KVSelection policies full, streaming-llm, h2o,
        snapkv, tova, random, pyramidkv, run by the store's KVCompressor: the prompt is compressed
        once from the last 32 prompt queries (SnapKV protocol), then, unless --decode-budget off, a
        decode session re-plans each layer within the budget after every page of new tokens.
        Each budgeted policy runs once per --budgets fraction (of the FP16 cache, sinks and recent
        window included; default 0.5,0.25) and --crush-share (share of the budget spent on KVCrush
        representatives stored as --rep-format, default 0 = host policy alone), with --anchor.
        --planner tiered (reported as POLICY+tiered) lets the tiered planner split the budget over
        FP16, INT8 and INT4 by error reduction per byte (error model derived from the store's
        formats) before the KVCrush share; --planner budget,tiered runs both.
        """

    static func evictionPolicy(_ name: String) -> EvictionPolicy? {
        switch name {
        case "full": .full
        case "streaming-llm": .streamingLLM
        case "h2o": .h2o()
        case "snapkv": .snapKV()
        case "tova": .tova
        case "random": .random(seed: 0)
        case "pyramidkv": .pyramidKV()
        default: nil
        }
    }

    static func anchor(_ name: String) -> Anchor? {
        switch name {
        case "random": .random(seed: 0)
        case "zeros": .zeros
        case "ones": .ones
        case "mean": .mean
        case "alternate": .alternate
        default: nil
        }
    }

    /// Reads the policy knobs (`--budgets`, `--crush-share`, `--rep-format`, `--anchor`,
    /// `--decode-budget`) and expands `names` into treatments.
    static func treatments(_ names: [String], _ args: inout CommandLineArguments) throws(UsageError) -> [CacheTreatment] {
        let command = args.command
        let budgets = try args.list("budgets", default: [0.5, 0.25], expected: "fractions in (0, 1]") {
            Double($0).flatMap { $0 > 0 && $0 <= 1 ? $0 : nil }
        }
        let shares = try args.list("crush-share", default: [0.0], expected: "fractions in [0, 1)") { Double($0).flatMap { $0 >= 0 && $0 < 1 ? $0 : nil } }
        let repFormat = try args.value("rep-format", default: Tier.int4, expected: "fp16, int8, int4 or int2") {
            Tier(name: $0).flatMap { $0 == .dropped ? nil : $0 }
        }
        let anchorName = try args.value("anchor", default: "random", expected: "random, zeros, ones, mean or alternate") { anchor($0) == nil ? nil : $0 }
        let decodeBudget = try args.value("decode-budget", default: true, expected: "on or off") { $0 == "on" ? true : $0 == "off" ? false : nil }
        let planners = try args.list("planner", default: ["budget"], expected: "budget or tiered") { ["budget", "tiered"].contains($0) ? $0 : nil }
        var out = [CacheTreatment]()
        for name in names {
            if let t = CacheTreatment.builtIn(name) { out.append(t); continue }
            guard let policy = evictionPolicy(name) else {
                throw UsageError(message: "unknown policy '\(name)': expected one of \((builtInNames + policyNames).joined(separator: ", "))", command: command)
            }
            for planner in planners {
                for budget in budgets {
                    for share in shares {
                        let kind: CompressionSettings.PlannerKind = planner == "tiered"
                            ? .tiered(.derived(from: .standard), candidateTiers: [.fp16, .int8, .int4]) : .budget
                        let settings = CompressionSettings(
                            policy: policy, budget: .fraction(budget, representativeShare: share, representativeTier: repFormat),
                            planner: kind, kvCrush: KVCrushSelector(anchor: anchor(anchorName)!))
                        out.append(.compressed(settings, policy: planner == "tiered" ? name + "+tiered" : name, budget: budget, crushShare: share,
                                               representativeFormat: share > 0 ? repFormat.description : nil,
                                               anchor: share > 0 ? anchorName : nil, keepsBudgetDuringDecode: decodeBudget))
                    }
                }
            }
        }
        return out
    }
}
