import Foundation
@testable import KVModel
import Testing
import KVQuantization

@Suite struct TokenizerTests {
    @Test func gpt2PatternSplitsLikeTheRegex() {
        let p = PreTokenizer.gpt2
        #expect(p.split("Hello world") == ["Hello", " world"])
        #expect(p.split("it's they're we'll I'd") == ["it", "'s", " they", "'re", " we", "'ll", " I", "'d"])
        #expect(p.split("a  b") == ["a", " ", " b"])
        #expect(p.split("x\n\ny") == ["x", "\n", "\n", "y"])  // \s+(?!\S) stops before the last whitespace, then \s+
        #expect(p.split("if x:\n    return") == ["if", " x", ":", "\n   ", " return"])
        #expect(p.split("end  ") == ["end", "  "])
        #expect(p.split("f(x)==1") == ["f", "(", "x", ")==", "1"])
        #expect(p.split("abc123 45") == ["abc", "123", " 45"])
        #expect(p.split("héllo мир 😀!") == ["héllo", " мир", " 😀!"])
        #expect(p.split("") == [])
    }

    @Test func smollmIsolatesEveryDigit() {
        let p = PreTokenizer(name: "smollm")!
        #expect(p == .digitsThenGPT2)
        #expect(p.split("abc123 45") == ["abc", "1", "2", "3", " ", "4", "5"])
        #expect(p.split("x = 2 * k + 1") == ["x", " =", " ", "2", " *", " k", " +", " ", "1"])
        #expect(PreTokenizer(name: "llama3") == nil)
    }

    /// A toy vocabulary: bytes of "a", "b", "c", " " and merges "a b" → "ab", "Ġ ab" → "Ġab", "ab c".
    static func toy() throws -> BPETokenizer {
        try BPETokenizer(tokens: ["<s>", "a", "b", "c", "Ġ", "ab", "Ġab", "abc", "Ċ"], merges: ["a b", "Ġ ab", "ab c"],
                         preTokenizer: .gpt2, bosToken: 0)
    }

    @Test func mergesApplyByRank() throws {
        let t = try Self.toy()
        #expect(t.encode("ab") == [5])
        #expect(t.encode("abc") == [7])
        #expect(t.encode(" ab") == [6])
        #expect(t.encode(" abc") == [6, 3])  // "Ġ ab" outranks "ab c"
        #expect(t.encode("ba") == [2, 1])
        #expect(t.encode("ab ab\n") == [5, 6, 8])
        #expect(t.decode([5, 6, 8]) == "ab ab\n")
        #expect(t.encode("z") == [])  // not in the vocabulary at all: skipped
    }

    @Test func byteTableIsABijectionOfPrintableCharacters() {
        let table = BPETokenizer.byteToCharacter
        #expect(Set(table).count == 256)
        #expect(table[32] == "Ġ" && table[10] == "Ċ" && table[65] == "A")
        for (b, c) in table.enumerated() { #expect(BPETokenizer.characterToByte[c] == UInt8(b)) }
    }

    @Test func builtFromGGUFMetadata() throws {
        var w = GGUFWriter()
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.pre", .string("smollm"))
        w.set("tokenizer.ggml.tokens", .array(elementType: .string, ["<s>", "a", "b", "c", "Ġ", "ab", "Ġab", "abc", "Ċ", "1"].map { .string($0) }))
        w.set("tokenizer.ggml.merges", .array(elementType: .string, ["a b", "Ġ ab", "ab c"].map { .string($0) }))
        w.set("tokenizer.ggml.bos_token_id", .uint32(0))
        w.set("tokenizer.ggml.eos_token_id", .uint32(8))
        let t = try BPETokenizer(file: GGUFFile(data: Data(w.serialized())))
        #expect(t.preTokenizer == .digitsThenGPT2 && t.bosToken == 0 && t.eosToken == 8 && !t.addsBOS)
        #expect(t.encode("ab 11") == [5, 4, 9, 9])
        #expect(t.id(of: "Ġab") == 6)

        var bad = GGUFWriter()
        bad.set("tokenizer.ggml.model", .string("llama"))
        #expect(throws: LlamaModelError.self) { try BPETokenizer(file: GGUFFile(data: Data(bad.serialized()))) }
        var badMerge = GGUFWriter()
        badMerge.set("tokenizer.ggml.model", .string("gpt2"))
        badMerge.set("tokenizer.ggml.tokens", .array(elementType: .string, [.string("a")]))
        badMerge.set("tokenizer.ggml.merges", .array(elementType: .string, [.string("abc")]))
        #expect(throws: LlamaModelError.self) { try BPETokenizer(file: GGUFFile(data: Data(badMerge.serialized()))) }
    }
}
