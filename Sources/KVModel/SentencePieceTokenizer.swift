import KVQuantization

/// A SentencePiece-style tokenizer (`tokenizer.ggml.model = llama`: pieces with scores, byte
/// fallback), encoding as llama.cpp's `llm_tokenizer_spm` does.
///
/// Encoding, in llama.cpp's order:
/// 1. *User-defined tokens* (token type 4, e.g. Gemma's runs of spaces, newlines and tabs) are cut
///    out of the text first, longest token first, each occurrence left to right; they become their
///    own ids. (Control tokens are not recognised in text: add them by id.)
/// 2. Each remaining fragment gets a leading space if `tokenizer.ggml.add_space_prefix` says so (and
///    it starts the text or follows a user-defined token), its spaces become `▁` (U+2581), and it is
///    split into UTF-8 characters.
/// 3. Repeatedly, of all adjacent pairs whose concatenation is a piece, the pair with the highest
///    piece score (ties: the leftmost) is merged. Like llama.cpp, on a priority queue of pairs: a
///    fragment of n bytes costs O(n log n), not O(n²) (`encodeReference` is the direct quadratic
///    form, kept as its twin). A NaN score ranks below every other score.
/// 4. Each final symbol is its piece's id, or, if no piece has its text (a lone character outside
///    the vocabulary), the ids of its bytes' `<0xXX>` pieces.
///
/// Decoding concatenates the pieces' texts with `▁` as a space and byte pieces as bytes; control
/// and unknown tokens decode to nothing.
public struct SentencePieceTokenizer: Sendable {
    /// Piece texts by id.
    public let tokens: [String]
    /// Piece scores by id (higher merges first).
    public let scores: [Float]
    /// Token types by id (llama.cpp's: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    public let tokenTypes: [Int32]
    public let bosToken: Int32?
    public let eosToken: Int32?
    /// Whether a prompt starts with BOS (`tokenizer.ggml.add_bos_token`, default true).
    public let addsBOS: Bool
    /// Whether a fragment gets a leading space (`tokenizer.ggml.add_space_prefix`, default true).
    public let addsSpacePrefix: Bool

    /// Piece text (UTF-8 bytes) → id (the first id of a repeated text).
    let ids: [ArraySlice<UInt8>: Int32]
    /// The longest piece, in bytes (longer pairs are not looked up).
    let longestPiece: Int
    /// The id of `<0xXX>` for each byte, where present.
    let byteTokens: [Int32?]
    /// The byte of each id in `byteTokens` (decoding's inverse, O(1) per token).
    let byteValues: [Int32: UInt8]
    /// User-defined tokens' bytes and ids, longest first.
    let userDefined: [(bytes: [UInt8], id: Int32)]

    static let normal: Int32 = 1, unknown: Int32 = 2, control: Int32 = 3, userDefinedType: Int32 = 4, byte: Int32 = 6

    /// Builds the tokenizer of `file`.
    ///
    /// - Throws: `LlamaModelError.invalidTokenizer` if the model is not `llama` (SentencePiece), or
    ///   the tokens, scores or types are missing, of the wrong type or of different lengths.
    public init(file: GGUFFile) throws(LlamaModelError) {
        guard let model = file["tokenizer.ggml.model"]?.string else { throw .invalidTokenizer("tokenizer.ggml.model is missing") }
        guard model == "llama" else { throw .invalidTokenizer("model \(model) is not SentencePiece (llama)") }
        let tokens = try file.tokenizerVocabulary()
        var scores = [Float](), types = [Int32]()
        if let raw = file["tokenizer.ggml.scores"]?.array {
            for (i, v) in raw.enumerated() {
                guard let d = v.double, d.isFinite else { throw .invalidTokenizer("score \(i) is not a finite number") }
                scores.append(Float(d))
            }
        } else { scores = Array(repeating: 0, count: tokens.count) }
        if let raw = file["tokenizer.ggml.token_type"]?.array {
            for (i, v) in raw.enumerated() {
                guard let t = v.integer, t >= 0, t <= 6 else { throw .invalidTokenizer("token type \(i) is not in 0...6") }
                types.append(Int32(t))
            }
        } else { types = Array(repeating: Self.normal, count: tokens.count) }
        guard scores.count == tokens.count, types.count == tokens.count else {
            throw .invalidTokenizer("\(tokens.count) tokens but \(scores.count) scores and \(types.count) types")
        }
        func tokenID(_ key: String) throws(LlamaModelError) -> Int32? { try file.tokenizerTokenID(key, vocabularySize: tokens.count) }
        self.init(tokens: tokens, scores: scores, tokenTypes: types, bosToken: try tokenID("tokenizer.ggml.bos_token_id"),
                  eosToken: try tokenID("tokenizer.ggml.eos_token_id"),
                  addsBOS: file["tokenizer.ggml.add_bos_token"]?.bool ?? true,
                  addsSpacePrefix: file["tokenizer.ggml.add_space_prefix"]?.bool ?? true)
    }

    /// Builds a tokenizer from pieces, their scores and types.
    ///
    /// - Precondition: the three arrays have one entry per token (a caller bug otherwise).
    public init(tokens: [String], scores: [Float], tokenTypes: [Int32], bosToken: Int32? = nil, eosToken: Int32? = nil,
                addsBOS: Bool = true, addsSpacePrefix: Bool = true) {
        precondition(scores.count == tokens.count && tokenTypes.count == tokens.count && tokens.count <= Int(Int32.max),
                     "SentencePieceTokenizer: \(tokens.count) tokens, \(scores.count) scores, \(tokenTypes.count) types")
        self.tokens = tokens
        self.scores = scores
        self.tokenTypes = tokenTypes
        self.bosToken = bosToken
        self.eosToken = eosToken
        self.addsBOS = addsBOS
        self.addsSpacePrefix = addsSpacePrefix
        var ids = [ArraySlice<UInt8>: Int32](minimumCapacity: tokens.count)
        var longest = 0
        var bytes = [Int32?](repeating: nil, count: 256)
        var user = [(bytes: [UInt8], id: Int32)]()
        for (i, t) in tokens.enumerated() {
            let b = Array(t.utf8)
            if ids[b[...]] == nil { ids[b[...]] = Int32(i) }
            longest = max(longest, b.count)
            if tokenTypes[i] == Self.byte, b.count == 6, t.hasPrefix("<0x"), t.hasSuffix(">"),
               let v = UInt8(t.dropFirst(3).dropLast(), radix: 16), bytes[Int(v)] == nil {
                bytes[Int(v)] = Int32(i)
            }
            if tokenTypes[i] == Self.userDefinedType, !b.isEmpty { user.append((b, Int32(i))) }
        }
        self.ids = ids
        longestPiece = longest
        byteTokens = bytes
        var values = [Int32: UInt8]()
        for (b, id) in bytes.enumerated() { if let id { values[id] = UInt8(b) } }
        byteValues = values
        // Longest first; equal lengths by id (llama.cpp's order among equal lengths is unspecified).
        userDefined = user.sorted { $0.bytes.count != $1.bytes.count ? $0.bytes.count > $1.bytes.count : $0.id < $1.id }
    }

    /// A piece of text before SentencePiece: raw bytes, or a user-defined token already recognised.
    enum Fragment {
        case text(ArraySlice<UInt8>)
        case token(Int32)
    }

    /// The token ids of `text` (no BOS added; prepend `bosToken` yourself if `addsBOS`).
    public func encode(_ text: String) -> [Int32] { encode(text, reference: false) }

    /// `encode`, steps 2–4 by `encodeEscaped` or (`reference`) by `encodeEscapedReference`.
    func encode(_ text: String, reference: Bool) -> [Int32] {
        var fragments = [Fragment.text(ArraySlice(Array(text.utf8)))]
        for (needle, id) in userDefined {
            var next = [Fragment]()
            next.reserveCapacity(fragments.count)
            for f in fragments {
                guard case .text(let raw) = f, raw.count >= needle.count else { next.append(f); continue }
                var start = raw.startIndex, i = raw.startIndex
                while i + needle.count <= raw.endIndex {
                    if raw[i] == needle[0], raw[i..<(i + needle.count)].elementsEqual(needle) {
                        if start < i { next.append(.text(raw[start..<i])) }
                        next.append(.token(id))
                        i += needle.count
                        start = i
                    } else {
                        i += 1
                    }
                }
                if start < raw.endIndex { next.append(.text(raw[start..<raw.endIndex])) }
            }
            fragments = next
        }
        var out = [Int32]()
        var afterSpecial = true
        for f in fragments {
            switch f {
            case .token(let id):
                out.append(id)
                afterSpecial = true
            case .text(let raw):
                var escaped = [UInt8]()
                escaped.reserveCapacity(raw.count + 3)
                // `▁` is E2 96 81 (appended byte by byte: no array per space).
                func appendSpace() { escaped.append(0xE2); escaped.append(0x96); escaped.append(0x81) }
                if addsSpacePrefix && afterSpecial { appendSpace() }
                for b in raw { if b == 0x20 { appendSpace() } else { escaped.append(b) } }
                if reference { encodeEscapedReference(escaped, into: &out) } else { encodeEscaped(escaped, into: &out) }
                afterSpecial = false
            }
        }
        return out
    }

    /// The byte ranges of `text`'s UTF-8 characters, in order (a truncated sequence ends at the text's
    /// end; a stray continuation byte is one symbol): the symbols both encoders start from.
    static func characterRanges(_ text: [UInt8]) -> [Range<Int>] {
        var symbols = [Range<Int>]()
        var o = 0
        while o < text.count {
            let lead = text[o]
            let length = lead < 0x80 ? 1 : lead >> 5 == 0b110 ? 2 : lead >> 4 == 0b1110 ? 3 : lead >> 3 == 0b11110 ? 4 : 1
            let end = min(text.count, o + length)
            symbols.append(o..<end)
            o = end
        }
        return symbols
    }

    /// Steps 2–4 on one fragment whose spaces are already `▁`.
    func encodeEscaped(_ text: [UInt8], into out: inout [Int32]) {
        guard !text.isEmpty else { return }
        let symbols = Self.characterRanges(text)
        // Symbol i covers text[start[i]..<end[i]]; merged away: end -1; next/prev: neighbours (m: none).
        let m = symbols.count
        let start = symbols.map(\.lowerBound)
        var end = symbols.map(\.upperBound)
        var next = Array(1...m), prev = Array(-1..<(m - 1))
        var queue = BinaryHeap<Bigram>()
        func enqueue(_ l: Int, _ r: Int) {
            let size = end[r] - start[l]
            guard size <= longestPiece, let id = ids[text[start[l]..<end[r]]] else { return }
            let score = scores[Int(id)]
            queue.push(Bigram(score: score.isNaN ? -.infinity : score, nan: score.isNaN, left: l, right: r, size: size))
        }
        for i in 0..<(m - 1) { enqueue(i, i + 1) }
        while let b = queue.pop() {
            let l = b.left, r = b.right
            // Stale: the left symbol was merged away or has another neighbour, or the right one grew.
            guard end[l] >= 0, next[l] == r, end[r] - start[l] == b.size else { continue }
            end[l] = end[r]
            end[r] = -1
            next[l] = next[r]
            if next[l] < m { prev[next[l]] = l }
            if prev[l] >= 0 { enqueue(prev[l], l) }
            if next[l] < m { enqueue(l, next[l]) }
        }
        var i = 0
        while i < m {
            let s = text[start[i]..<end[i]]
            if let id = ids[s] {
                out.append(id)
            } else {
                for b in s { if let id = byteTokens[Int(b)] { out.append(id) } }
            }
            i = next[i]
        }
    }

    /// A pair of adjacent symbols in the merge queue: the merged piece's score (NaN as -∞, after
    /// every -∞), the left and right symbols (indices, in text order) and the merged length when
    /// queued. Queue order: highest score first, then leftmost.
    struct Bigram: Comparable {
        var score: Float
        var nan: Bool
        var left: Int
        var right: Int
        var size: Int

        static func < (a: Bigram, b: Bigram) -> Bool {
            if a.score != b.score { return a.score > b.score }
            if a.nan != b.nan { return !a.nan }
            return a.left < b.left
        }
    }

    /// The text of `ids`. Traps on an id outside the vocabulary (a caller bug).
    public func decode(_ ids: [Int32]) -> String {
        var bytes = [UInt8]()
        for id in ids {
            precondition(id >= 0 && Int(id) < tokens.count, "SentencePieceTokenizer.decode: token \(id) outside the vocabulary")
            switch tokenTypes[Int(id)] {
            case Self.control, Self.unknown: continue
            case Self.byte:
                if let b = byteValues[id] { bytes.append(b) }
            default:
                for b in tokens[Int(id)].utf8 { bytes.append(b) }
            }
        }
        var text = [UInt8]()
        var i = 0
        while i < bytes.count {
            if i + 2 < bytes.count, bytes[i] == 0xE2, bytes[i + 1] == 0x96, bytes[i + 2] == 0x81 { text.append(0x20); i += 3 } else { text.append(bytes[i]); i += 1 }
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// The id of the token whose text is exactly `token`.
    public func id(of token: String) -> Int32? { ids[Array(token.utf8)[...]] }
}
