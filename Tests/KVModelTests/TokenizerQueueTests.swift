import Foundation
@testable import KVModel
import Testing
import TestSupport

/// The priority-queue encoders against their quadratic twins (`encodeReference`), linear cost on
/// long pieces, and exact (not canonically equivalent) matching of pieces and tokens.
@Suite struct TokenizerQueueTests {
    /// A random BPE vocabulary over a few letters: every byte's token, random multi-byte tokens and
    /// random merges among them (ranks in random order, so merges may create lower-ranked pairs).
    static func randomBPE(_ g: inout SeededGenerator) throws -> BPETokenizer {
        let alphabet = BPETokenizer.byteToCharacter
        let letters: [UInt8] = Array("abc .1é".utf8)
        var tokens = alphabet.map { String($0) }
        var pieces = letters.map { String(alphabet[Int($0)]) }
        for _ in 0..<Int.random(in: 4...40, using: &g) {
            let a = pieces.randomElement(using: &g)!, b = pieces.randomElement(using: &g)!
            pieces.append(a + b)
        }
        tokens += pieces.shuffled(using: &g)
        var merges = [String]()
        for _ in 0..<Int.random(in: 4...60, using: &g) {
            merges.append(pieces.randomElement(using: &g)! + " " + pieces.randomElement(using: &g)!)
        }
        return try BPETokenizer(tokens: tokens, merges: merges, preTokenizer: Bool.random(using: &g) ? .gpt2 : .digitsThenGPT2)
    }

    static func randomText(_ g: inout SeededGenerator, letters: [String], length: Int) -> String {
        (0..<length).map { _ in letters.randomElement(using: &g)! }.joined()
    }

    @Test func bpeQueueMatchesTheQuadraticForm() throws {
        var g = SeededGenerator(seed: 0x17B_BE)
        for _ in 0..<300 {
            let t = try Self.randomBPE(&g)
            let text = Self.randomText(&g, letters: ["a", "b", "c", " ", ".", "1", "é", "aa", "ab"], length: Int.random(in: 0...200, using: &g))
            #expect(t.encode(text) == t.encodeReference(text), "seed \(g.seed), text \(text.debugDescription)")
        }
    }

    @Test func bpeMergesEveryOccurrenceOfARankBeforeTheNext() throws {
        // GPT-2's bpe(): "a b" (rank 1) merges both occurrences of "abab" before "ab a" (rank 0),
        // which the first merge creates, is considered: ab ab, not aba b.
        let t = try BPETokenizer(tokens: ["a", "b", "ab", "aba"], merges: ["ab a", "a b"], preTokenizer: .gpt2)
        #expect(t.encode("abab") == [2, 2])
        #expect(t.encodeReference("abab") == [2, 2])
        #expect(t.encode("aaa") == [0, 0, 0])
    }

    @Test func spmQueueMatchesTheQuadraticForm() {
        var g = SeededGenerator(seed: 0x17_5E)
        let letters = ["a", "b", "c", " ", "é", "\u{2581}", "ab"]
        for _ in 0..<300 {
            var pieces = ["a", "b", "c", "\u{2581}", "é"]
            for _ in 0..<Int.random(in: 2...40, using: &g) { pieces.append(pieces.randomElement(using: &g)! + pieces.randomElement(using: &g)!) }
            pieces.shuffle(using: &g)
            // Few distinct scores (ties), sometimes -∞ or NaN; some user-defined and byte tokens.
            let choices: [Float] = [0, -1, -2, 3, -.infinity, .nan]
            var scores = pieces.map { _ in choices.randomElement(using: &g)! }
            var types: [Int32] = pieces.map { _ in Int.random(in: 0..<10, using: &g) == 0 ? 4 : 1 }
            var tokens = pieces
            for b in [0x61, 0xC3, 0xA9, 0x20] {
                tokens.append("<0x" + String(b, radix: 16, uppercase: true) + ">")
                scores.append(0)
                types.append(6)
            }
            let t = SentencePieceTokenizer(tokens: tokens, scores: scores, tokenTypes: types, addsSpacePrefix: Bool.random(using: &g))
            let text = Self.randomText(&g, letters: letters + ["d", "ü"], length: Int.random(in: 0...200, using: &g))
            #expect(t.encode(text) == t.encodeReference(text), "seed \(g.seed), text \(text.debugDescription)")
        }
    }

    /// 100,000 bytes without a space: one piece, one fragment. The quadratic forms took ~3 s on
    /// 4 KB under the fuzzer; at 100 KB they would take minutes. The queue takes well under a second.
    @Test func longSinglePiecesEncodeInLinearithmicTime() throws {
        let n = 100_000
        let text = String(repeating: "a", count: n)
        let runs = ["a", "aa", "aaaa", "aaaaaaaa", String(repeating: "a", count: 16)]
        let spm = SentencePieceTokenizer(tokens: runs, scores: [0, 1, 2, 3, 4], tokenTypes: [1, 1, 1, 1, 1], addsSpacePrefix: false)
        #expect(spm.encode(text) == Array(repeating: 4, count: n / 16))
        let bpe = try BPETokenizer(tokens: runs, merges: ["a a", "aa aa", "aaaa aaaa", "aaaaaaaa aaaaaaaa"], preTokenizer: .gpt2)
        #expect(bpe.encode(text) == Array(repeating: 4, count: n / 16))
        // A chain that merges one pair per rank: "a b", then "a ab", "a aab", ... (2,000 ranks).
        let chain = String(repeating: "a", count: 2000) + "b"
        var tokens = ["a", "b"], merges = [String]()
        var s = "b"
        for _ in 0..<2000 {
            merges.append("a " + s)
            s = "a" + s
            tokens.append(s)
        }
        let c = try BPETokenizer(tokens: tokens, merges: merges, preTokenizer: .gpt2)
        #expect(c.encode(chain) == [Int32(tokens.count - 1)])
    }

    @Test func bpePiecesAreMatchedExactlyNotByCanonicalEquivalence() throws {
        let alphabet = BPETokenizer.byteToCharacter
        // U+00C5 and U+212B (Å, Angstrom sign) are canonically equivalent but different bytes: the
        // per-call piece cache once gave the second piece the first one's ids.
        let t = try BPETokenizer(tokens: alphabet.map { String($0) }, merges: [], preTokenizer: .gpt2)
        let text = "\u{00C5}.\u{212B}"
        #expect(t.decode(t.encode(text)).utf8.elementsEqual(text.utf8))
        // A token "A" + U+0304 is canonically "Ā" (byte 0's character) but is not byte 0's token.
        let u = try BPETokenizer(tokens: ["A\u{0304}"] + alphabet.map { String($0) }, merges: [], preTokenizer: .gpt2)
        #expect(u.encode("\u{0}") == [1])
        #expect(u.id(of: "A\u{0304}") == 0)
    }

    /// Both real vocabularies encode a longer text exactly as the quadratic twins do.
    @Test(.enabled(if: RealModelFiles.model != nil && GemmaModelFiles.model != nil))
    func realVocabulariesMatchTheQuadraticForm() throws {
        let path = RealModelFiles.dataDirectory.appendingPathComponent("pydoc-topics-12k.txt")
        guard let full = try? String(contentsOf: path, encoding: .utf8) else { return }
        let text = String(full.prefix(6000))
        let bpe = try BPETokenizer(file: GGUFFile(contentsOf: RealModelFiles.model!))
        #expect(bpe.encode(text) == bpe.encodeReference(text))
        let spm = try SentencePieceTokenizer(file: GGUFFile(contentsOf: GemmaModelFiles.model!))
        #expect(spm.encode(text) == spm.encodeReference(text))
    }
}
