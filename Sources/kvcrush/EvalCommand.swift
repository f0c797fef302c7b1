import Foundation
import KVCrush
import KVExperiments
import KVModel

/// `kvcrush eval`: the attention-level protocol of evaluation.md on a KV dump.
enum EvalCommand {
    static let defaultPolicies = "full,streaming,h2o,snapkv,snapkv+kvcrush,h2o+tiered,uniform-int8,uniform-int4,uniform-int2"

    static let subcommand = Subcommand(
        name: "eval",
        summary: "memory vs attention error of policies, KVCrush and tiers on a KV dump",
        help: """
            usage: kvcrush eval [--dump FILE] [--layers L,L] [--policies P,P] [--budgets F,F]
                                [--crush-share S,S] [--rep-format int8|int4|int2|fp16,…] [--anchor A,…] [--seed N]
                                [--sinks 4] [--recent 32] [--window 32] [--page 32] [--key-format channel|group]
                                [--profile PROFILE.json] [--format table|csv|json] [--plot FILE.svg] [--output FILE]

            Runs the attention-level protocol of evaluation.md on a kv-dump/1 file (default: the bundled
            fixture): the prompt is every token but the last 32; it is appended at FP16 to a KVStore and
            compressed by each policy, scored only by the last --window prompt queries; then each of the
            last 32 queries attends over the compressed prompt plus the exact new tokens, and its output
            is compared with FP64 attention over the uncompressed cache. Figures per layer and overall:
            relErr mean/p95/max, massKept, bytes (exact store bytes of the compressed prompt), fp16Bytes
            (the same prompt at FP16 in whole pages), ratio, and prompt tokens per tier.

            --policies   comma list (default \(defaultPolicies)) of
                         full, streaming (sinks + the most recent tokens the budget holds), h2o, snapkv,
                         tova, random, pyramid, tiered (SnapKV scores,
                         tiered FP16/INT8/INT4 planner), uniform-int8, uniform-int4, uniform-int2;
                         plain (the top 2% at FP16, the next at INT4 until the budget is spent);
                         modifiers: +tiered (tiered planner on a scored host's scores, e.g. h2o+tiered), +plain,
                         +kvcrush (representatives), +mikv (rest at INT2 instead of dropped),
                         +int2 (a tiered planner may use INT2). E.g. snapkv+kvcrush, tiered+kvcrush+mikv.
                         presets: preset:2x, preset:4x, preset:6x, preset:8x (no --budgets needed), and with
                         --profile FILE (kvcrush calibrate, on the dump's model) preset:4x+cal; see `kvcrush run --help`.
                         A calibrated preset gives each dump layer the formats and budget share it has in the
                         whole model, so the dump's layers together need not sit at the preset's ratio.
            --budgets    fractions of the prompt's FP16 bytes (default 0.1,0.25,0.5); sinks and window included
            --crush-share, --rep-format, --anchor   KVCrush settings, each a list: every +kvcrush policy runs
                         for every combination (defaults 0.3, int4, alternate; anchors random, zeros, ones,
                         mean, alternate)
            --seed       seed of the random policy and the random anchor (default 0)
            --key-format channel (default: per-channel keys in pages, KIVI) or group (keys grouped per token)
            --plot       also write an SVG of mean relErr vs bytes ratio
            --output     write the results there instead of stdout
            Progress goes to stderr.
            """,
        run: run)

    /// Everything the command line asks for.
    struct Options {
        var dumpURL: URL
        var layers: [Int]?
        var selection: SelectionOptions
        var settings: EvaluationSettings
        var format: String
        var plot: String?
        var output: String?
        /// Preset names (`4x`, `4x+cal`) from `--policies preset:…`, and `--profile`.
        var presetNames: [String]
        var profilePath: String?

        /// The configurations of the policies (presets are resolved once the dump is loaded).
        var configurations: [EvaluationConfiguration] { selection.configurations }
    }

    /// Parses the command line (every bad flag or value is a `UsageError`).
    static func parse(_ args: inout CommandLineArguments) throws(UsageError) -> Options {
        let dumpURL = args.string("dump").map { URL(fileURLWithPath: $0) } ?? KVDump.bundledFixtureURL
        let layers: [Int]? = try args.string("layers") == nil ? nil
            : args.list("layers", default: [], expected: "layer indices") { Int($0).flatMap { $0 >= 0 ? $0 : nil } }
        let named = try args.list("policies", default: defaultPolicies.split(separator: ",").map(String.init), expected: "policies") {
            $0.isEmpty ? nil : $0
        }
        let (presetNames, policyNames) = PresetOptions.split(named)
        for name in presetNames where !PresetOptions.isPreset(name) {
            throw UsageError(message: "--policies: unknown preset 'preset:\(name)': expected \(CompressionPreset.all.map { "preset:\($0.name)" }.joined(separator: ", ")), each optionally with +cal", command: args.command)
        }
        let profilePath = args.string("profile")
        let selection = try SelectionOptions.parse(&args, names: policyNames, defaultPolicies: defaultPolicies, defaultBudgets: [0.1, 0.25, 0.5])
        let page = try args.value("page", default: 32, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let formats = try args.value("key-format", default: TierFormats.standard, expected: "channel or group") {
            $0 == "channel" ? TierFormats.standard : $0 == "group" ? TierFormats.grouped : nil
        }
        let format = try args.value("format", default: "table", expected: "table, csv or json") { ["table", "csv", "json"].contains($0) ? $0 : nil }
        let plot = args.string("plot"), output = args.string("output")
        try args.finish()
        return Options(dumpURL: dumpURL, layers: layers, selection: selection,
                       settings: EvaluationSettings(observationWindow: selection.observationWindow, pageCapacity: page, tierFormats: formats),
                       format: format, plot: plot, output: output, presetNames: presetNames, profilePath: profilePath)
    }

    static func run(_ args: inout CommandLineArguments) throws {
        let options = try parse(&args)
        let start = ContinuousClock.now
        let dump = try KVDump(contentsOf: options.dumpURL, layers: options.layers)
        let evaluation: Evaluation
        do { evaluation = try Evaluation(dump: dump, settings: options.settings) } catch {
            if case .invalidSetting = error { throw UsageError(message: error.description, command: args.command) }
            throw error
        }
        let profile = try options.profilePath.map { path throws in
            try PresetOptions.profile(at: path, layerCount: (dump.layerIndices.max() ?? 0) + 1, atLeast: true, headDim: dump.shape.headDim,
                                      command: args.command)
        }
        let presets = try PresetOptions.resolve(options.presetNames, profile: profile, expectedTokenCount: evaluation.promptTokenCount,
                                                protectedTier: options.selection.protectedTier, command: args.command)
        let configurations = options.configurations
            + presets.map { EvaluationConfiguration(preset: $0.restricted(toLayers: dump.layerIndices), regions: options.selection.regions) }
        for c in configurations {
            do { try evaluation.validate(c) } catch { throw UsageError(message: error.description, command: args.command) }
        }
        let stderr = FileHandle.standardError
        stderr.write(Data("kvcrush eval: \(options.dumpURL.lastPathComponent), layers \(dump.layerIndices.map(String.init).joined(separator: ",")), \(configurations.count) configurations\n".utf8))
        let report = try evaluation.run(configurations, dumpName: options.dumpURL.lastPathComponent) { done, total, c in
            let t = start.duration(to: .now)
            let secs = Double(t.components.seconds) + Double(t.components.attoseconds) * 1e-18
            let line = String(format: "  [%d/%d] %@ %@ (%.1f s)\n", done, total, c.label, c.budget.map { "budget \($0)" } ?? "", secs)
            stderr.write(Data(line.utf8))
        }
        let text: String
        switch options.format {
        case "csv": text = report.csv()
        case "json": text = report.json()
        default: text = report.table()
        }
        if let output = options.output { try Data(text.utf8).write(to: URL(fileURLWithPath: output), options: .atomic) } else { print(text, terminator: "") }
        if let plot = options.plot { try Data(report.plot().svg().utf8).write(to: URL(fileURLWithPath: plot), options: .atomic) }
    }
}
