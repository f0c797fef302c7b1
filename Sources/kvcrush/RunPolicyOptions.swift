import KVCrush
import KVExperiments

/// The policies `run` and `generate` accept: the policy grammar of `kvcrush eval`
/// (`SelectionOptions`), plus `--decode-budget`.
enum RunPolicyOptions {
    static let help = """
        Policies use the grammar of 'kvcrush eval': uncompressed (alias full: the reference),
        uniform-int8, uniform-int4, uniform-int2 (every prompt token moved to that tier), and the
        budgeted host policies streaming (sinks + the most recent tokens the budget holds), h2o, snapkv,
        tova, random, pyramid, tiered (= snapkv+tiered), plain (= snapkv+plain: the top 2% at FP16, the
        next at INT4 until the budget is spent) with the modifiers +tiered (the tiered planner
        splits the budget over FP16/INT8/INT4 by error reduction per byte), +plain, +kvcrush (KVCrush
        representatives), +mikv (the rest kept at INT2 instead of dropped) and +int2 (tiered may use
        INT2). They run through the store's KVCompressor: the prompt is compressed once from the last
        32 prompt queries (SnapKV protocol), then, unless --decode-budget off, a decode session
        re-plans each layer within the budget after every page of new tokens. Each budgeted policy runs
        once per --budgets fraction (of the FP16 cache, sinks and recent window included; default
        0.5,0.25); +kvcrush policies once per --crush-share (default 0.3), --rep-format (int4) and
        --anchor (alternate); --seed seeds random and the random anchor; --sinks (4) and --recent (32)
        set the tokens every stream keeps at FP16 (or at --protected-tier int8 when compressing: per
        token INT8, for policies and presets alike; each preset has its own default); --decode-replan N re-plans a layer after every N new
        tokens (default: the page capacity), each plan leaving N FP16 slots free inside the budget.
        """

    /// Reads the selection knobs and `--decode-budget`, and expands `names` into configurations.
    static func parse(_ names: [String], _ args: inout CommandLineArguments) throws(UsageError)
        -> (configurations: [EvaluationConfiguration], keepsBudgetDuringDecode: Bool, regions: StreamRegions, protectedTier: Tier?) {
        let decodeBudget = try args.value("decode-budget", default: true, expected: "on or off") { $0 == "on" ? true : $0 == "off" ? false : nil }
        let selection = try SelectionOptions.parse(&args, names: names, defaultPolicies: "", defaultBudgets: [0.5, 0.25], readsWindow: false)
        return (selection.configurations, decodeBudget, selection.regions, selection.protectedTier)
    }
}
