// libFuzzer target: the tokenizers (BPETokenizer, SentencePieceTokenizer) on fuzzer-chosen small
// vocabularies and arbitrary text. The input is read as
//
//     | flags: 1 byte | count: 1 byte | count × (token bytes, 0x00) | per token: 1 byte (type, score) |
//     | merge index pairs: 2 bytes each, up to a 0xFF 0xFF pair | text: the rest (as UTF-8, repaired) |
//
// (missing parts are empty). The tokenizer is built from those pieces directly and, with flag 0x40,
// also through a GGUF file carrying them (`loadTokenizer`), which must encode the same (equal encoding
// tables, and equal ids on texts up to `maxReferenceBytes`). Encoding must not trap and give ids in the vocabulary;
// texts up to `maxReferenceBytes` must encode as the encoders' quadratic twins (`encodeReference`) do;
// decoding any ids must not trap; and where it must hold, decode(encode(text)) is the text:
// - BPE whenever every byte of the text has its single-character token (flag 0x04 adds all 256);
// - SentencePiece with all 256 `<0xXX>` byte tokens (flag 0x04), token types limited to normal,
//   user-defined and unused (flag 0x08), no `▁` or `<0x` in the text: the text itself without the
//   space prefix (flag 0x10 off), " " + text with it when there are no user-defined tokens.
// Built and run by `.ci/fuzz`.
import Foundation
import KVQuantization
@testable import KVModel

/// Text bytes encoded per input at most (the encoders are O(n log n) in a piece's length; this
/// bounds the time per input).
let maxTextBytes = 4096
/// Texts up to this many bytes are also encoded by the quadratic twins, which must agree.
let maxReferenceBytes = 512

// What does not depend on the input, built once (not per input).
/// BPE's byte-to-unicode alphabet as one-character strings, by byte.
let byteStrings = BPETokenizer.byteToCharacter.map { String($0) }
/// SentencePiece's 256 byte pieces `<0x00>` … `<0xFF>`, their type (6, byte) and score.
let byteTokens = (0..<256).map { "<0x" + String(UInt8($0), radix: 16, uppercase: true).leftPadded(2) + ">" }
let byteTokenTypes = [Int32](repeating: 6, count: 256), byteTokenScores = [Float](repeating: -100, count: 256)
/// `(0..<n).reversed()` as ids, for the largest vocabulary an input can give (63 tokens + 256 bytes).
let reversedIDs = [Int32]((0..<Int32(64 + 256)).reversed())

struct TokenizerInput {
    var sentencePiece = false, digits = false, allBytes = false, plainTypes = false, spacePrefix = false, byteAlphabet = false, viaGGUF = false
    var tokens = [[UInt8]]()
    var traits = [UInt8]()
    var mergePairs = [(Int, Int)]()
    var text = ""

    init(_ b: [UInt8]) {
        var i = 0
        func next() -> UInt8? { guard i < b.count else { return nil }; defer { i += 1 }; return b[i] }
        let flags = next() ?? 0
        sentencePiece = flags & 1 != 0
        digits = flags & 2 != 0
        allBytes = flags & 4 != 0
        plainTypes = flags & 8 != 0
        spacePrefix = flags & 16 != 0
        byteAlphabet = flags & 32 != 0
        viaGGUF = flags & 64 != 0
        let count = Int(next() ?? 0) % 64
        for _ in 0..<count {
            var t = [UInt8]()
            while let c = next(), c != 0 { if t.count < 16 { t.append(c) } }
            tokens.append(t)
        }
        for _ in 0..<count { traits.append(next() ?? 0) }
        while let a = next(), let c = next(), !(a == 0xFF && c == 0xFF) { mergePairs.append((Int(a), Int(c))) }
        text = String(decoding: b[min(i, b.count)...].prefix(maxTextBytes), as: UTF8.self)
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func tokenizerFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = TokenizerInput(Array(UnsafeBufferPointer(start: data, count: size)))
    if input.sentencePiece { sentencePiece(input) } else { bpe(input) }
    return 0
}

/// Encodes `text`, checks the ids and the round trip, decodes the whole vocabulary; the ids.
@discardableResult
func checkRoundTrip<T: TextTokenizer>(_ t: T, vocabulary: Int, _ text: String, expected: String?) -> [Int32] {
    let ids = t.encode(text)
    precondition(ids.allSatisfy { $0 >= 0 && Int($0) < vocabulary }, "an id outside the vocabulary of \(vocabulary)")
    let decoded = t.decode(ids)
    if let expected {
        // Byte for byte (String's == is canonical equivalence, which is looser).
        precondition(decoded.utf8.elementsEqual(expected.utf8), "decode(encode(\(text.debugDescription))) = \(decoded.debugDescription), ids \(ids)")
    }
    // Every id, last first: the suffix of `reversedIDs` is vocabulary - 1 … 0.
    _ = t.decode(vocabulary <= reversedIDs.count ? Array(reversedIDs.suffix(vocabulary)) : (0..<Int32(vocabulary)).reversed())
    return ids
}

/// Whether two tokens lists are the same byte for byte (String's == is canonical equivalence).
func sameBytes(_ a: [String], _ b: [String]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.utf8.elementsEqual($1.utf8) }
}

/// Whether `u` and `t` have equal tables for everything `encode` reads (`encode` is a function of
/// these alone), so they encode every text alike; and equal tokens (what `decode` reads).
/// `encode(text)` is compared as well for texts up to `maxReferenceBytes`; longer texts, whose
/// second encoding cost as much as the first, are covered by this (which covers every text).
func encodesAlike(_ u: BPETokenizer, _ t: BPETokenizer) -> Bool {
    sameBytes(u.tokens, t.tokens) && u.preTokenizer == t.preTokenizer && u.symbolIDs == t.symbolIDs
        && u.byteIDs == t.byteIDs && u.mergeRanks == t.mergeRanks && u.longestMerge == t.longestMerge
}

func encodesAlike(_ u: SentencePieceTokenizer, _ t: SentencePieceTokenizer) -> Bool {
    sameBytes(u.tokens, t.tokens) && u.scores.map(\.bitPattern) == t.scores.map(\.bitPattern) && u.tokenTypes == t.tokenTypes
        && u.addsSpacePrefix == t.addsSpacePrefix && u.ids == t.ids && u.longestPiece == t.longestPiece
        && u.byteTokens == t.byteTokens && u.byteValues == t.byteValues
        && u.userDefined.map(\.bytes) == t.userDefined.map(\.bytes) && u.userDefined.map(\.id) == t.userDefined.map(\.id)
}

/// The same tokenizer read back from a GGUF file must encode the same way.
func viaGGUF(_ w: GGUFWriter) -> (any TextTokenizer)? {
    guard let file = try? GGUFFile(data: Data(w.serialized())) else { preconditionFailure("a written GGUF file does not parse") }
    return try? loadTokenizer(file: file)
}

func bpe(_ input: TokenizerInput) {
    let alphabet = BPETokenizer.byteToCharacter
    var tokens = input.tokens.map { raw in
        input.byteAlphabet ? String(raw.map { alphabet[Int($0)] }) : String(decoding: raw, as: UTF8.self)
    }
    if input.allBytes { tokens += byteStrings }
    guard !tokens.isEmpty else { return }
    let merges = input.mergePairs.map { tokens[$0 % tokens.count] + " " + tokens[$1 % tokens.count] }
        .filter { $0.split(separator: " ", omittingEmptySubsequences: false).count == 2 }
    let pre: PreTokenizer = input.digits ? .digitsThenGPT2 : .gpt2
    let t = try! BPETokenizer(tokens: tokens, merges: merges, preTokenizer: pre)
    let covered = Set(tokens)
    // Whether each byte's one-character token is in the vocabulary, looked up once per byte value
    // that occurs (0 no, 1 yes, 2 not yet known), not once per byte of the text.
    var known = [UInt8](repeating: 2, count: 256)
    let identity = input.text.utf8.allSatisfy { b in
        if known[Int(b)] == 2 { known[Int(b)] = covered.contains(byteStrings[Int(b)]) ? 1 : 0 }
        return known[Int(b)] == 1
    }
    let ids = checkRoundTrip(t, vocabulary: tokens.count, input.text, expected: identity ? input.text : nil)
    if input.text.utf8.count <= maxReferenceBytes {
        precondition(t.encodeReference(input.text) == ids, "the quadratic BPE twin encodes differently")
    }
    guard input.viaGGUF else { return }
    var w = GGUFWriter()
    w.set("tokenizer.ggml.model", .string("gpt2"))
    w.set("tokenizer.ggml.pre", .string(input.digits ? "smollm" : "gpt2"))
    w.set("tokenizer.ggml.tokens", .array(elementType: .string, tokens.map { .string($0) }))
    w.set("tokenizer.ggml.merges", .array(elementType: .string, merges.map { .string($0) }))
    guard let u = viaGGUF(w) as? BPETokenizer else { preconditionFailure("a valid BPE vocabulary was refused") }
    precondition(encodesAlike(u, t), "the GGUF-read tokenizer's encoding tables differ")
    if input.text.utf8.count <= maxReferenceBytes {
        precondition(u.encode(input.text) == ids, "the GGUF-read tokenizer encodes differently")
    }
}

func sentencePiece(_ input: TokenizerInput) {
    var tokens = input.tokens.map { String(decoding: $0, as: UTF8.self) }
    let allTypes: [Int32] = [0, 1, 2, 3, 4, 5, 6], plain: [Int32] = [1, 1, 4, 5]
    var types = input.traits.map { input.plainTypes ? plain[Int($0) % plain.count] : allTypes[Int($0) % allTypes.count] }
    var scores = input.traits.map { Float(Int($0 >> 3)) - 12 }
    if input.allBytes {
        tokens += byteTokens
        types += byteTokenTypes
        scores += byteTokenScores
    }
    guard !tokens.isEmpty else { return }
    let t = SentencePieceTokenizer(tokens: tokens, scores: scores, tokenTypes: types, addsSpacePrefix: input.spacePrefix)
    var expected: String?
    // By bytes, not Characters: "▁" followed by a combining mark is one Character that is not "▁".
    let utf8 = Array(input.text.utf8)
    func has(_ needle: String) -> Bool {
        let n = Array(needle.utf8)
        return utf8.count >= n.count && (0...(utf8.count - n.count)).contains { utf8[$0] == n[0] && utf8[$0..<($0 + n.count)].elementsEqual(n) }
    }
    if input.allBytes, input.plainTypes, !has("\u{2581}"), !has("<0x") {
        if !input.spacePrefix { expected = input.text } else if !types.contains(4) { expected = " " + input.text }
    }
    let ids = checkRoundTrip(t, vocabulary: tokens.count, input.text, expected: expected)
    if input.text.utf8.count <= maxReferenceBytes {
        precondition(t.encodeReference(input.text) == ids, "the quadratic SentencePiece twin encodes differently")
    }
    guard input.viaGGUF else { return }
    var w = GGUFWriter()
    w.set("tokenizer.ggml.model", .string("llama"))
    w.set("tokenizer.ggml.tokens", .array(elementType: .string, tokens.map { .string($0) }))
    w.set("tokenizer.ggml.scores", .array(elementType: .float32, scores.map { .float32($0) }))
    w.set("tokenizer.ggml.token_type", .array(elementType: .int32, types.map { .int32($0) }))
    w.set("tokenizer.ggml.add_space_prefix", .bool(input.spacePrefix))
    guard let u = viaGGUF(w) as? SentencePieceTokenizer else { preconditionFailure("a valid SentencePiece vocabulary was refused") }
    precondition(encodesAlike(u, t), "the GGUF-read tokenizer's encoding tables differ")
    if input.text.utf8.count <= maxReferenceBytes {
        precondition(u.encode(input.text) == ids, "the GGUF-read tokenizer encodes differently")
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}
