import KVQuantization

/// A byte-level BPE tokenizer (GPT-2 style) built from a GGUF file's `tokenizer.ggml.*` data.
///
/// Encoding: the text is split into pieces by the pre-tokenizer (`PreTokenizer`, chosen by
/// `tokenizer.ggml.pre`); each piece's UTF-8 bytes are mapped to printable characters (GPT-2's
/// byte-to-unicode table, so a space is `Ġ`); the piece is then merged by rank, lowest first, using
/// `tokenizer.ggml.merges`, and each resulting symbol looked up in `tokenizer.ggml.tokens`. Special
/// tokens in the text are not recognised (they are encoded as ordinary text); add them by id.
///
/// Decoding maps each token's characters back to bytes and the bytes to UTF-8 (invalid sequences
/// become U+FFFD); control tokens decode to their own text.
public struct BPETokenizer: Sendable {
    /// Token strings, in the byte-to-unicode alphabet, by id.
    public let tokens: [String]
    /// The pre-tokenizer.
    public let preTokenizer: PreTokenizer
    /// The beginning-of-sequence token, if the file names one.
    public let bosToken: Int32?
    /// The end-of-sequence token, if the file names one.
    public let eosToken: Int32?
    /// Whether the file asks for a BOS token at the start of a prompt (`tokenizer.ggml.add_bos_token`).
    public let addsBOS: Bool

    let ids: [String: Int32]
    let mergeRanks: [String: Int]
    /// GPT-2's table: byte → printable character, and back.
    static let byteToCharacter: [Character] = {
        var bs = Array(33...126) + Array(161...172) + Array(174...255)
        var cs = bs
        var n = 0
        for b in 0..<256 where !bs.contains(b) {
            bs.append(b)
            cs.append(256 + n)
            n += 1
        }
        var table = [Character](repeating: " ", count: 256)
        for (b, c) in zip(bs, cs) { table[b] = Character(Unicode.Scalar(UInt32(c))!) }
        return table
    }()
    static let characterToByte: [Character: UInt8] = {
        var m = [Character: UInt8]()
        for (b, c) in byteToCharacter.enumerated() { m[c] = UInt8(b) }
        return m
    }()

    /// Builds the tokenizer of `file`.
    ///
    /// - Throws: `LlamaModelError.invalidTokenizer` if the model is not `gpt2` (byte-level BPE),
    ///   the pre-tokenizer is unknown, the vocabulary or merges are missing or not strings, or a
    ///   merge is not two symbols.
    public init(file: GGUFFile) throws(LlamaModelError) {
        guard let model = file["tokenizer.ggml.model"]?.string else { throw .invalidTokenizer("tokenizer.ggml.model is missing") }
        guard model == "gpt2" else { throw .invalidTokenizer("model \(model) is not supported (only gpt2 byte-level BPE)") }
        let pre = file["tokenizer.ggml.pre"]?.string ?? "default"
        guard let p = PreTokenizer(name: pre) else { throw .invalidTokenizer("pre-tokenizer \(pre) is not supported") }
        let tokens = try file.tokenizerVocabulary()
        var merges = [String]()
        for (i, m) in (file["tokenizer.ggml.merges"]?.array ?? []).enumerated() {
            guard let s = m.string, s.split(separator: " ", omittingEmptySubsequences: false).count == 2 else {
                throw .invalidTokenizer("merge \(i) is not two symbols separated by one space")
            }
            merges.append(s)
        }
        func tokenID(_ key: String) throws(LlamaModelError) -> Int32? { try file.tokenizerTokenID(key, vocabularySize: tokens.count) }
        try self.init(tokens: tokens, merges: merges, preTokenizer: p, bosToken: tokenID("tokenizer.ggml.bos_token_id"),
                      eosToken: tokenID("tokenizer.ggml.eos_token_id"),
                      addsBOS: file["tokenizer.ggml.add_bos_token"]?.bool ?? false)
    }

    /// Builds a tokenizer from a vocabulary (strings in the byte-to-unicode alphabet) and merges
    /// (`"left right"`, highest priority first).
    public init(tokens: [String], merges: [String], preTokenizer: PreTokenizer, bosToken: Int32? = nil,
                eosToken: Int32? = nil, addsBOS: Bool = false) throws(LlamaModelError) {
        guard tokens.count <= Int(Int32.max) else { throw .invalidTokenizer("too many tokens") }
        self.tokens = tokens
        self.preTokenizer = preTokenizer
        self.bosToken = bosToken
        self.eosToken = eosToken
        self.addsBOS = addsBOS
        var ids = [String: Int32](minimumCapacity: tokens.count)
        for (i, t) in tokens.enumerated() where ids[t] == nil { ids[t] = Int32(i) }
        self.ids = ids
        var ranks = [String: Int](minimumCapacity: merges.count)
        for (i, m) in merges.enumerated() where ranks[m] == nil { ranks[m] = i }
        mergeRanks = ranks
    }

    /// The token ids of `text` (no BOS added; prepend `bosToken` yourself if `addsBOS`).
    ///
    /// A symbol missing from the vocabulary (a broken vocabulary) is encoded byte by byte, and a
    /// byte missing too is skipped.
    public func encode(_ text: String) -> [Int32] {
        var out = [Int32]()
        var cache = [String: [Int32]]()
        for piece in preTokenizer.split(text) {
            if let hit = cache[piece] { out += hit; continue }
            let ids = encodePiece(piece)
            cache[piece] = ids
            out += ids
        }
        return out
    }

    /// BPE of one pre-tokenized piece.
    func encodePiece(_ piece: String) -> [Int32] {
        var symbols = piece.utf8.map { String(Self.byteToCharacter[Int($0)]) }
        while symbols.count > 1 {
            var best = Int.max, at = -1
            for i in 0..<(symbols.count - 1) {
                if let r = mergeRanks[symbols[i] + " " + symbols[i + 1]], r < best { best = r; at = i }
            }
            guard at >= 0 else { break }
            let left = symbols[at], right = symbols[at + 1]
            var merged = [String]()
            merged.reserveCapacity(symbols.count)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count, symbols[i] == left, symbols[i + 1] == right {
                    merged.append(left + right)
                    i += 2
                } else {
                    merged.append(symbols[i])
                    i += 1
                }
            }
            symbols = merged
        }
        var out = [Int32]()
        for s in symbols {
            if let id = ids[s] { out.append(id); continue }
            for ch in s { if let id = ids[String(ch)] { out.append(id) } }
        }
        return out
    }

    /// The text of `ids`. Traps on an id outside the vocabulary (a caller bug).
    public func decode(_ ids: [Int32]) -> String {
        var bytes = [UInt8]()
        for id in ids {
            precondition(id >= 0 && Int(id) < tokens.count, "BPETokenizer.decode: token \(id) outside the vocabulary")
            for ch in tokens[Int(id)] {
                if let b = Self.characterToByte[ch] { bytes.append(b) } else { bytes += Array(String(ch).utf8) }
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension BPETokenizer {
    /// The id of the token whose text is exactly `token` (e.g. a control token `<|im_start|>`).
    public func id(of token: String) -> Int32? { ids[token] }
}
