import Foundation
import KVModel
import KVStore
import Testing
import KVQuantization

/// Checks against the real Gemma 3 270M file (`$KVCRUSH_GEMMA_MODEL`, else
/// `/work/models/gemma3/gemma-3-270m-q4_k_m.gguf`; see `../shared/docs/evaluation.md` for how to get
/// it), skipped when it is absent.
enum GemmaModelFiles {
    static let model: URL? = {
        let path = ProcessInfo.processInfo.environment["KVCRUSH_GEMMA_MODEL"] ?? "/work/models/gemma3/gemma-3-270m-q4_k_m.gguf"
        return FileManager.default.fileExists(atPath: path) ? URL(fileURLWithPath: path) : nil
    }()
    /// llama.cpp's ids for `heapq-2048.txt` with BOS (`Fixtures/README.md`).
    static let referenceIDs: [Int32] = {
        let u = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Fixtures/gemma3-270m-heapq-2048-ids.txt").standardized
        let text = (try? String(contentsOf: u, encoding: .utf8)) ?? ""
        return text.split(whereSeparator: \.isWhitespace).compactMap { Int32($0) }
    }()
}

@Suite("GemmaRealModel") struct GemmaRealModelTests {
    @Test(.enabled(if: GemmaModelFiles.model != nil && RealModelFiles.text != nil))
    func tokenizerGivesLlamaCppIDs() throws {
        let file = try GGUFFile(contentsOf: GemmaModelFiles.model!)
        let tokenizer = try loadTokenizer(file: file)
        #expect(tokenizer is SentencePieceTokenizer)
        let text = try String(contentsOf: RealModelFiles.text!, encoding: .utf8)
        let ids = tokenizer.encodePrompt(text)
        let expected = GemmaModelFiles.referenceIDs
        #expect(expected.count == 2007)
        #expect(ids.count == expected.count)
        let firstDifference = zip(ids, expected).enumerated().first { $0.element.0 != $0.element.1 }
        #expect(firstDifference == nil, "first difference at \(firstDifference.map { "\($0.offset): \($0.element)" } ?? "")")
        #expect(tokenizer.decode(ids) == text)
    }
}
