import KVQuantization

/// A tokenizer read from a GGUF file: `BPETokenizer` (`tokenizer.ggml.model = gpt2`) or
/// `SentencePieceTokenizer` (`llama`), chosen by `loadTokenizer`.
public protocol TextTokenizer: Sendable {
    /// The token ids of `text`, without BOS.
    func encode(_ text: String) -> [Int32]
    /// The text of `ids` (traps on an id outside the vocabulary).
    func decode(_ ids: [Int32]) -> String
    /// The id of the token whose text is exactly `token`.
    func id(of token: String) -> Int32?
    var bosToken: Int32? { get }
    var eosToken: Int32? { get }
    /// Whether a prompt starts with BOS.
    var addsBOS: Bool { get }
}

extension TextTokenizer {
    /// The ids of `text` as a prompt: BOS first if the file asks for it (`addsBOS`), as llama.cpp's
    /// `tokenize(…, add_special: true)` gives.
    public func encodePrompt(_ text: String) -> [Int32] {
        (addsBOS ? bosToken.map { [$0] } ?? [] : []) + encode(text)
    }
}

extension BPETokenizer: TextTokenizer {}
extension SentencePieceTokenizer: TextTokenizer {}

/// The tokenizer `file` describes (`tokenizer.ggml.model`: `gpt2` or `llama`).
///
/// - Throws: `LlamaModelError.invalidTokenizer`.
public func loadTokenizer(file: GGUFFile) throws(LlamaModelError) -> any TextTokenizer {
    if file["tokenizer.ggml.model"]?.string == "llama" { return try SentencePieceTokenizer(file: file) }
    return try BPETokenizer(file: file)
}

extension GGUFFile {
    /// `tokenizer.ggml.tokens`: every token's text, in id order (what both tokenizers read first).
    ///
    /// - Throws: `LlamaModelError.invalidTokenizer` if it is missing, empty or not all strings.
    func tokenizerVocabulary() throws(LlamaModelError) -> [String] {
        guard let raw = self["tokenizer.ggml.tokens"]?.array, !raw.isEmpty else {
            throw .invalidTokenizer("tokenizer.ggml.tokens is missing or empty")
        }
        var tokens = [String]()
        tokens.reserveCapacity(raw.count)
        for (i, t) in raw.enumerated() {
            guard let s = t.string else { throw .invalidTokenizer("token \(i) is not a string") }
            tokens.append(s)
        }
        return tokens
    }

    /// The token id stored under `key` (`tokenizer.ggml.bos_token_id`, …), or `nil` if absent.
    ///
    /// - Throws: `LlamaModelError.invalidTokenizer` if it is not an id below `vocabularySize`.
    func tokenizerTokenID(_ key: String, vocabularySize: Int) throws(LlamaModelError) -> Int32? {
        guard let v = self[key] else { return nil }
        guard let i = v.integer, i >= 0, i < vocabularySize else { throw .invalidTokenizer("\(key) = \(v) is not a token id") }
        return Int32(i)
    }
}
