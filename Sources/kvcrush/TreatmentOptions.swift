import KVCrush

/// The cache treatments `run` and `generate` accept, in the policy grammar of `kvcrush eval`
/// (`SelectionOptions`), mapped to `CacheTreatment`s with the same `CompressionSettings` eval uses.
enum TreatmentOptions {
    static let help = """
        Policies use the grammar of 'kvcrush eval': full (alias uncompressed: the reference),
        uniform-int8, uniform-int4, uniform-int2 (every prompt token moved to that tier), and the
        budgeted host policies streaming, h2o, snapkv, tova, random, pyramid, tiered (= snapkv+tiered)
        with the modifiers +tiered (the tiered planner splits the budget over FP16/INT8/INT4 by error
        reduction per byte), +kvcrush (KVCrush representatives), +mikv (the rest kept at INT2 instead
        of dropped) and +int2 (tiered may use INT2). They run through the store's KVCompressor: the
        prompt is compressed once from the last 32 prompt queries (SnapKV protocol), then, unless
        --decode-budget off, a decode session re-plans each layer within the budget after every page
        of new tokens. Each budgeted policy runs once per --budgets fraction (of the FP16 cache, sinks
        and recent window included; default 0.5,0.25); +kvcrush policies once per --crush-share
        (default 0.3), --rep-format (int4) and --anchor (alternate); --seed seeds random and the random
        anchor. Unlike eval, StreamingLLM keeps S sinks + R recent tokens and does not widen its window
        to its budget.
        """

    /// Reads the selection knobs and `--decode-budget`, and expands `names` into treatments.
    static func treatments(_ names: [String], _ args: inout CommandLineArguments) throws(UsageError) -> [CacheTreatment] {
        let decodeBudget = try args.value("decode-budget", default: true, expected: "on or off") { $0 == "on" ? true : $0 == "off" ? false : nil }
        let selection = try SelectionOptions.parse(&args, names: names.map { $0 == "uncompressed" ? "full" : $0 },
                                                   defaultPolicies: "", defaultBudgets: [0.5, 0.25], readsWindow: false)
        return selection.configurations.map { c in
            switch c.policy.base {
            case .full: return .uncompressed
            case .uniform(let tier): return .uniform(tier)
            case .host, .tiered:
                let k = c.kvCrush
                return .compressed(c.compressionSettings(tierFormats: .standard)!, policy: c.policy.description, budget: c.budget,
                                   crushShare: k?.share, representativeFormat: k?.representativeTier.description,
                                   anchor: k.map { KVCrushSettings.name(of: $0.anchor) }, keepsBudgetDuringDecode: decodeBudget)
            }
        }
    }
}
