import Foundation
import KVCrush
import KVModel

/// `kvcrush generate`: greedy generation from a GGUF model whose cache is a KVStore.
enum GenerateCommand {
    static let subcommand = Subcommand(
        name: "generate",
        summary: "greedy text generation from a GGUF model with the store as its KV cache",
        help: """
            usage: kvcrush generate --model FILE.gguf --prompt TEXT [--max-tokens 64] [--template none|chatml]
                                    [--policy NAME [--budgets B] [--crush-share S] [--rep-format T] [--anchor A]] [--threads N]

            Tokenizes --prompt (with --template chatml: wrapped in the model's ChatML turn, <|im_start|>user …
            <|im_end|> <|im_start|>assistant), prefills it, applies --policy to the prompt's cache, then
            prints the most likely next token until --max-tokens or the end-of-sequence token, and
            the speed and cache bytes on standard error. --model defaults to $KVCRUSH_MODEL.

            \(RunPolicyOptions.help)
            (generate takes one policy and the first budget and share.)
            """,
        run: run)

    static func run(_ args: inout CommandLineArguments) throws {
        let modelPath = args.string("model") ?? ProcessInfo.processInfo.environment["KVCRUSH_MODEL"]
        let prompt = args.string("prompt")
        let maxTokens = try args.value("max-tokens", default: 64, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let template = try args.value("template", default: "none", expected: "none or chatml") { ["none", "chatml"].contains($0) ? $0 : nil }
        let chat = template == "chatml"
        let policy = args.string("policy") ?? "uncompressed"
        let threads = try args.value("threads", default: ProcessInfo.processInfo.activeProcessorCount, expected: "a positive integer") {
            Int($0).flatMap { $0 > 0 ? $0 : nil }
        }
        let options = try RunPolicyOptions.parse([policy], &args)
        let configuration = options.configurations[0]
        try args.finish()
        guard let modelPath else { throw UsageError(message: "--model is required (or set KVCRUSH_MODEL)", command: "generate") }
        guard let prompt else { throw UsageError(message: "--prompt is required", command: "generate") }
        let url = URL(fileURLWithPath: modelPath)
        let file = try GGUFFile(contentsOf: url)
        let model = try loadLanguageModel(file: file, threadCount: threads)
        let tokenizer = try loadTokenizer(file: file)
        var ids = [Int32]()
        if chat {
            guard let start = tokenizer.id(of: "<|im_start|>"), let end = tokenizer.id(of: "<|im_end|>") else {
                throw UsageError(message: "--template chatml: the model has no <|im_start|>/<|im_end|> tokens", command: "generate")
            }
            ids = [start] + tokenizer.encode("user\n" + prompt) + [end] + tokenizer.encode("\n") + [start] + tokenizer.encode("assistant\n")
        } else {
            if tokenizer.addsBOS, let bos = tokenizer.bosToken { ids.append(bos) }
            ids += tokenizer.encode(prompt)
        }
        var stops = Set<Int32>()
        if let eos = tokenizer.eosToken { stops.insert(eos) }
        if chat, let end = tokenizer.id(of: "<|im_end|>") { stops.insert(end) }
        let store = try KVStore(model.storeConfiguration())
        let sequence = store.addSequence()
        let start = Date()
        var firstTokenTime: Date?
        var generated = [Int32]()
        var printedBytes = 0
        _ = try model.generate(prompt: ids, maxTokenCount: maxTokens, sequence: sequence, in: store, stopTokens: stops, afterPrefill: { obs in
            try configuration.cachePolicy.apply(to: sequence, in: store, observation: obs,
                                                keepingBudgetDuringDecode: options.keepsBudgetDuringDecode).map { DecodeHook(session: $0) }
        }, onToken: { token in
            if firstTokenTime == nil { firstTokenTime = Date() }
            if stops.contains(token) { return }
            generated.append(token)
            // Print whole characters only: decode everything and emit the new complete part.
            let text = tokenizer.decode(generated)
            let complete = text.hasSuffix("\u{FFFD}") ? String(text.dropLast()) : text
            let bytes = Array(complete.utf8)
            if bytes.count > printedBytes {
                FileHandle.standardOutput.write(Data(bytes[printedBytes...]))
                printedBytes = bytes.count
            }
        })
        FileHandle.standardOutput.write(Data("\n".utf8))
        let end = Date()
        let prefillSeconds = (firstTokenTime ?? end).timeIntervalSince(start)
        let decodeSeconds = end.timeIntervalSince(firstTokenTime ?? end)
        FileHandle.standardError.write(Data(String(
            format: "kvcrush generate: prompt %d tokens (%.1f tokens/s), %d generated (%.1f tokens/s), policy %@, cache %d bytes\n",
            ids.count, Double(ids.count) / prefillSeconds, generated.count, Double(max(0, generated.count - 1)) / max(decodeSeconds, 1e-9),
            configuration.label, store.byteCount(of: sequence)).utf8))
    }
}
