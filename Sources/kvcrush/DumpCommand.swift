import Foundation
import KVCrush
import KVExperiments
import KVModel

/// `kvcrush dump`: a kv-dump/1 file of a GGUF model's keys, values and queries over a text.
enum DumpCommand {
    static let subcommand = Subcommand(
        name: "dump",
        summary: "write a kv-dump/1 file (keys, values, queries) of a GGUF model over a text, for eval",
        help: """
            usage: kvcrush dump --model FILE.gguf --text FILE --output FILE.safetensors
                                [--tokens 2048] [--queries 64] [--layers all|L,L] [--dtype f32|f16] [--threads N]

            Tokenizes --text as `run` does (the model's BOS first when it adds one), runs its first --tokens
            tokens through the model with an uncompressed store, and writes every token's keys and values
            of --layers (after RoPE, as attention reads them) and the queries of the last --queries positions
            as a kv-dump/1 safetensors file (evaluation.md), with the token ids. Layers with a sliding
            window (Gemma 3's local layers) carry it in `sliding_windows`; `kvcrush eval` then attends over
            the window only, in the store and in its FP64 reference. --model defaults to $KVCRUSH_MODEL.
            """,
        run: run)

    static func run(_ args: inout CommandLineArguments) throws {
        let modelPath = args.string("model") ?? ProcessInfo.processInfo.environment["KVCRUSH_MODEL"]
        let textPath = args.string("text"), output = args.string("output")
        let tokenCount = try args.value("tokens", default: 2048, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let queryCount = try args.value("queries", default: 64, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let layerText = args.string("layers") ?? "all"
        let dtype = try args.value("dtype", default: SafetensorsDType.f32, expected: "f32 or f16") { ["f32": .f32, "f16": .f16][$0] }
        let threads = try args.value("threads", default: ProcessInfo.processInfo.activeProcessorCount, expected: "a positive integer") {
            Int($0).flatMap { $0 > 0 ? $0 : nil }
        }
        try args.finish()
        guard let modelPath else { throw UsageError(message: "--model is required (or set KVCRUSH_MODEL)", command: "dump") }
        guard let textPath else { throw UsageError(message: "--text is required", command: "dump") }
        guard let output else { throw UsageError(message: "--output is required", command: "dump") }
        guard queryCount <= tokenCount else {
            throw UsageError(message: "--queries \(queryCount) exceeds --tokens \(tokenCount)", command: "dump")
        }
        let file = try GGUFFile(contentsOf: URL(fileURLWithPath: modelPath))
        let model = try loadLanguageModel(file: file, threadCount: threads)
        let layerCount = model.cacheShape.layerCount
        var layers: [Int]?
        if layerText != "all" {
            let parsed = layerText.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard parsed.allSatisfy({ $0.map { (0..<layerCount).contains($0) } ?? false }), Set(parsed).count == parsed.count else {
                throw UsageError(message: "--layers '\(layerText)': expected all or distinct layers in 0..<\(layerCount)", command: "dump")
            }
            layers = parsed.map { $0! }
        }
        let tokenizer = try loadTokenizer(file: file)
        let text = try String(contentsOf: URL(fileURLWithPath: textPath), encoding: .utf8)
        let all = tokenizer.encodePrompt(text)
        guard tokenCount <= all.count else {
            throw UsageError(message: "the text has \(all.count) tokens, fewer than --tokens \(tokenCount)", command: "dump")
        }
        let modelName = file["general.name"]?.string ?? URL(fileURLWithPath: modelPath).lastPathComponent
        let start = Date()
        let dump = try KVDump(running: model, tokens: Array(all.prefix(tokenCount)), layers: layers, queryCount: queryCount, model: modelName,
                              metadata: ["text": URL(fileURLWithPath: textPath).lastPathComponent,
                                         "source": "kvcrush dump --model \(URL(fileURLWithPath: modelPath).lastPathComponent)"])
        try dump.write(to: URL(fileURLWithPath: output), storing: dtype)
        let windows = dump.layers.compactMap(\.slidingWindow).count
        FileHandle.standardError.write(Data(("kvcrush dump: \(dump.layers.count) layers (\(windows) with a sliding window), \(tokenCount) tokens, "
            + "\(queryCount) queries -> \(output) in \(String(format: "%.1f", Date().timeIntervalSince(start))) s\n").utf8))
    }
}
