import Foundation
import KVCrush
import KVExperiments
import KVModel

/// `kvcrush calibrate`: measures a model's per-layer key and value sensitivity (`SensitivityCalibration`)
/// and writes the profile `run --profile` (and the library's `CompressionPreset.calibrated`) use.
enum CalibrateCommand {
    static let subcommand = Subcommand(
        name: "calibrate",
        summary: "measure per-layer key/value format sensitivity on a GGUF model; write a profile (JSON)",
        help: """
            usage: kvcrush calibrate --model FILE.gguf --text FILE --output PROFILE.json
                                     [--prompt-tokens 1024] [--continue 128] [--page 64]
                                     [--keys int8/channel,int4/channel,int3/channel[,mix4/channel,mix3.5/channel]] [--values lm4,lm3,lm2]
                                     [--drops 0.75,0.5,0.25] [--rotate values|keys|keys+values|none] [--threads N]

            Prefills the first --prompt-tokens tokens of the text at FP16; then, for every layer and
            every candidate format, moves that layer's middle tokens' keys (for --keys; values for
            --values) to the format, all else FP16, teacher-forces the next --continue tokens and
            records the mean KL divergence of the next-token distributions to the FP16 run; and for
            every kept share in --drops (fractions in (0, 1); "none" for no drop measurements), keeps
            only that share of the layer's middle tokens (best by SnapKV score over the prompt's last
            32 queries, at FP16) and drops the rest. Costs layers × (keys + values + drops)
            continuations: about 15 minutes for SmolLM2-135M at the defaults.
            --rotate (default values) says which quantised side the store rotates, as in run.
            A key candidate mixB/channel is per-channel keys with a width (2, 3, 4 or 8 bits) per channel
            and KV head at B bits per element on average: the prompt's query energy and per-page key
            ranges are measured first (kept in the profile as keyChannels) and each layer's widths
            allocated from them (`ChannelWidths.allocate`).

            The profile is JSON (`SensitivityProfile`): `run --profile FILE --presets 4x` then picks each
            layer's INT4 key and value formats and kept share to minimise the summed KLD within the
            preset's budget.
            Calibrate on one text and report on another.
            """,
        run: run)

    static func run(_ args: inout CommandLineArguments) throws {
        let modelPath = args.string("model") ?? ProcessInfo.processInfo.environment["KVCRUSH_MODEL"]
        let textPath = args.string("text"), output = args.string("output")
        let promptTokens = try args.value("prompt-tokens", default: 1024, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let continueTokens = try args.value("continue", default: 128, expected: "an integer ≥ 2") { Int($0).flatMap { $0 >= 2 ? $0 : nil } }
        let page = try args.value("page", default: 64, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let threads = try args.value("threads", default: ProcessInfo.processInfo.activeProcessorCount, expected: "a positive integer") {
            Int($0).flatMap { $0 > 0 ? $0 : nil }
        }
        // A key name is a format, or mixB/channel (mixed widths at B bits per element, allocated per layer).
        let keyNames = try args.list("keys", default: ["int8/channel", "int4/channel", "int3/channel"],
                                     expected: "key format names (int4/channel, int4/g32, lm3, mix3.5/channel, …; not fp16)") { n -> String? in
            if let b = KeyChannelStatistics.mixedBits(named: n) { return b >= 2 && b <= 8 ? n : nil }
            return StorageFormat(name: n).flatMap { $0 == .fp16 ? nil : n }
        }
        let keys = keyNames.compactMap { KeyChannelStatistics.mixedBits(named: $0) == nil ? StorageFormat(name: $0) : nil }
        let mixedBits = keyNames.compactMap(KeyChannelStatistics.mixedBits(named:))
        let values = try args.list("values", default: [StorageFormat.lloydMax(.int4), .lloydMax(.int3), .lloydMax(.int2)],
                                   expected: "value format names (lm3, int4/g32, …; not fp16 or per channel)") { n in
            StorageFormat(name: n).flatMap { $0 == .fp16 || $0.isPageWise ? nil : $0 }
        }
        let drops: [Double] = try args.string("drops") == "none" ? []
            : args.list("drops", default: [0.75, 0.5, 0.25], expected: "kept shares in (0, 1), or none") { Double($0).flatMap { $0 > 0 && $0 < 1 ? $0 : nil } }
        let rotate = try args.value("rotate", default: "values", expected: "keys, values, keys+values or none") {
            ["keys", "values", "keys+values", "none"].contains($0) ? $0 : nil
        }
        try args.finish()
        guard let modelPath else { throw UsageError(message: "--model is required (or set KVCRUSH_MODEL)", command: "calibrate") }
        guard let textPath else { throw UsageError(message: "--text is required", command: "calibrate") }
        guard let output else { throw UsageError(message: "--output PROFILE.json is required", command: "calibrate") }
        let file = try GGUFFile(contentsOf: URL(fileURLWithPath: modelPath))
        let model = try loadLanguageModel(file: file, threadCount: threads)
        for f in keys + values {
            do { try f.validate(headDim: model.cacheShape.headDim) } catch {
                throw UsageError(message: "format \(f) does not suit head dim \(model.cacheShape.headDim): \(error)", command: "calibrate")
            }
        }
        for b in mixedBits where (b * Double(model.cacheShape.headDim) / 8).rounded() != b * Double(model.cacheShape.headDim) / 8 {
            throw UsageError(message: "mix\(b)/channel: \(b) bits × head dim \(model.cacheShape.headDim) is not a whole number of bytes", command: "calibrate")
        }
        let tokens = try loadTokenizer(file: file).encodePrompt(try String(contentsOf: URL(fileURLWithPath: textPath), encoding: .utf8))
        guard promptTokens + continueTokens <= tokens.count else {
            throw UsageError(message: "the text has \(tokens.count) tokens, fewer than --prompt-tokens + --continue = \(promptTokens + continueTokens)", command: "calibrate")
        }
        var calibration = SensitivityCalibration(model: model)
        calibration.pageCapacity = page
        calibration.rotatesKeys = rotate.contains("keys")
        calibration.rotatesValues = rotate.contains("values")
        calibration.keptShares = drops
        let profile = try calibration.run(tokens: tokens, promptTokenCount: promptTokens, continuationTokenCount: continueTokens,
                                          keyFormats: keys, mixedKeyBits: mixedBits, valueFormats: values,
                                          modelName: URL(fileURLWithPath: modelPath).lastPathComponent,
                                          textName: URL(fileURLWithPath: textPath).lastPathComponent) { line in
            FileHandle.standardError.write(Data("kvcrush calibrate: \(line)\n".utf8))
        }
        try profile.json().write(to: URL(fileURLWithPath: output), options: .atomic)
        print(summary(profile))
    }

    /// One line per layer: each candidate's KLD.
    static func summary(_ p: SensitivityProfile) -> String {
        let entries = p.keys.map { ("K " + $0.format, $0.kld) } + p.values.map { ("V " + $0.format, $0.kld) }
            + p.drops.map { (String(format: "keep %.2f", $0.keptShare), $0.kld) }
        var s = "Sensitivity of \(p.model) on \(p.text) (prompt \(p.promptTokenCount) + \(p.continuationTokenCount)): mean KLD per layer when that layer alone moves\n"
        s += "layer " + entries.map { $0.0.padding(toLength: 15, withPad: " ", startingAt: 0) }.joined() + "\n"
        for l in 0..<p.layerCount {
            s += String(l).padding(toLength: 6, withPad: " ", startingAt: 0)
            s += entries.map { String(format: "%-15.6f", $0.1[l]) }.joined() + "\n"
        }
        s += "sum   " + entries.map { String(format: "%-15.6f", $0.1.reduce(0, +)) }.joined() + "\n"
        return s
    }
}
