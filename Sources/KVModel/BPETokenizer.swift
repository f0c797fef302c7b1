import KVQuantization

/// A byte-level BPE tokenizer (GPT-2 style) built from a GGUF file's `tokenizer.ggml.*` data.
///
/// Encoding: the text is split into pieces by the pre-tokenizer (`PreTokenizer`, chosen by
/// `tokenizer.ggml.pre`); each piece's UTF-8 bytes are mapped to printable characters (GPT-2's
/// byte-to-unicode table, so a space is `Ġ`); the piece is then merged by rank, lowest first, using
/// `tokenizer.ggml.merges`, and each resulting symbol looked up in `tokenizer.ggml.tokens`. Special
/// tokens in the text are not recognised (they are encoded as ordinary text); add them by id.
///
/// Merging is GPT-2's `bpe()`: repeatedly the lowest-ranked adjacent pair is found and every
/// occurrence of it merged, left to right. It runs on a priority queue of pairs (all pairs of one
/// rank are merged before pairs that merging creates are considered), so a piece of n bytes costs
/// O(n log n), not O(n²); `encodeReference` is the direct quadratic form, kept as its twin.
/// Symbols, tokens and merges are matched by their exact Unicode scalars (not by `String`'s
/// canonical equivalence): a token or merge with characters outside the byte-to-unicode alphabet
/// is never produced by encoding.
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

    /// Token text → id (the first id of a repeated text), for `id(of:)`.
    let ids: [String: Int32]
    /// Encoding's tables, keyed by raw bytes (the byte-to-unicode alphabet undone) and filled only
    /// from tokens and merges written wholly in that alphabet: token bytes → id (first id of a
    /// repeated text); the id of each single byte's token; a merge's two symbols → rank (its first
    /// index); the longest merge, in bytes.
    let symbolIDs: [ArraySlice<UInt8>: Int32]
    let byteIDs: [Int32?]
    let mergeRanks: [MergeKey: Int]
    let longestMerge: Int

    /// A merge's two symbols as raw bytes: `bytes` is left then right, `split` the left's length.
    struct MergeKey: Hashable {
        var bytes: ArraySlice<UInt8>
        var split: Int
    }

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
    /// The table's inverse by Unicode scalar value (every character of the table is one scalar
    /// below U+0144); -1 outside the alphabet.
    static let scalarToByte: [Int16] = {
        var t = [Int16](repeating: -1, count: 0x144)
        for (b, c) in byteToCharacter.enumerated() { t[Int(c.unicodeScalars.first!.value)] = Int16(b) }
        return t
    }()

    /// The raw bytes `text` spells in the byte-to-unicode alphabet, or nil if a scalar is outside it.
    static func rawBytes<S: StringProtocol>(_ text: S) -> [UInt8]? {
        var out = [UInt8]()
        out.reserveCapacity(text.utf8.count)  // at least the scalar count, and O(1) (counting scalars is a pass)
        for u in text.unicodeScalars {
            guard u.value < 0x144, case let b = scalarToByte[Int(u.value)], b >= 0 else { return nil }
            out.append(UInt8(b))
        }
        return out
    }

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
        var symbols = [ArraySlice<UInt8>: Int32](minimumCapacity: tokens.count)
        // `symbols[[b]]` for every byte b, filled as `symbols` is (the first id of a one-byte symbol),
        // without a lookup (and an array) per byte afterwards.
        var single = [Int32?](repeating: nil, count: 256)
        for (i, t) in tokens.enumerated() {
            if ids[t] == nil { ids[t] = Int32(i) }
            if let raw = Self.rawBytes(t), symbols[raw[...]] == nil {
                symbols[raw[...]] = Int32(i)
                if raw.count == 1 { single[Int(raw[0])] = Int32(i) }
            }
        }
        self.ids = ids
        symbolIDs = symbols
        byteIDs = single
        var ranks = [MergeKey: Int](minimumCapacity: merges.count)
        var longest = 0
        for (i, m) in merges.enumerated() {
            let parts = m.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, let left = Self.rawBytes(parts[0]), let right = Self.rawBytes(parts[1]) else { continue }
            let key = MergeKey(bytes: (left + right)[...], split: left.count)
            if ranks[key] == nil {
                ranks[key] = i
                longest = max(longest, left.count + right.count)
            }
        }
        mergeRanks = ranks
        longestMerge = longest
    }

    /// The token ids of `text` (no BOS added; prepend `bosToken` yourself if `addsBOS`).
    ///
    /// A symbol missing from the vocabulary (a broken vocabulary) is encoded byte by byte, and a
    /// byte missing too is skipped.
    public func encode(_ text: String) -> [Int32] {
        let bytes = Array(text.utf8)
        var out = [Int32]()
        out.reserveCapacity(bytes.count / 2)
        var cache = [ArraySlice<UInt8>: Range<Int>]()  // a piece's bytes → where its ids are in `out`
        for r in preTokenizer.byteRanges(text) {
            let piece = bytes[r]
            // Element by element: `append(contentsOf: out[hit])` would hold a slice of `out`'s own
            // buffer, so the append could not grow it in place and copied the whole output per hit.
            if let hit = cache[piece] { for k in hit { out.append(out[k]) }; continue }
            let start = out.count
            encodePiece(piece, into: &out)
            cache[piece] = start..<out.count
        }
        return out
    }

    /// A pair of adjacent symbols in the merge queue: the merge's rank, the left symbol (its index,
    /// which is its first byte's offset in the piece) and the right one, and the right one's end
    /// when the pair was queued (a changed end, or a changed neighbour, makes the entry stale).
    struct Bigram: Comparable {
        var rank: Int
        var left: Int
        var right: Int
        var rightEnd: Int

        static func < (a: Bigram, b: Bigram) -> Bool { a.rank != b.rank ? a.rank < b.rank : a.left < b.left }
    }

    /// BPE of one pre-tokenized piece (its raw bytes), appended to `out`.
    func encodePiece(_ piece: ArraySlice<UInt8>, into out: inout [Int32]) {
        let n = piece.count, base = piece.startIndex
        guard n > 1 else {
            if let b = piece.first, let id = byteIDs[Int(b)] { out.append(id) }
            return
        }
        // Symbol i covers piece bytes i..<end[i] (offsets from `base`); end -1 once merged away.
        var end = Array(1...n)
        var next = Array(1...n)  // n: none
        var prev = Array(-1..<(n - 1))
        var queue = BinaryHeap<Bigram>()
        func enqueue(_ l: Int, _ r: Int) {
            let e = end[r]
            guard e - l <= longestMerge,
                  let rank = mergeRanks[MergeKey(bytes: piece[(base + l)..<(base + e)], split: r - l)] else { return }
            queue.push(Bigram(rank: rank, left: l, right: r, rightEnd: e))
        }
        func isCurrent(_ b: Bigram) -> Bool { end[b.left] >= 0 && next[b.left] == b.right && end[b.right] == b.rightEnd }
        for i in 0..<(n - 1) { enqueue(i, i + 1) }
        var created = [(Int, Int)]()
        while let top = queue.pop() {
            guard isCurrent(top) else { continue }
            // Every occurrence of this rank's pair, left to right; pairs the merges create wait
            // until the rank is done (GPT-2's pass), and a merged symbol never re-forms the pair.
            var b = top
            while true {
                let l = b.left, r = b.right
                end[l] = end[r]
                end[r] = -1
                next[l] = next[r]
                if next[l] < n { prev[next[l]] = l }
                if prev[l] >= 0 { created.append((prev[l], l)) }
                if next[l] < n { created.append((l, next[l])) }
                var found = false
                while let t = queue.first, t.rank == top.rank {
                    _ = queue.pop()
                    if isCurrent(t) { b = t; found = true; break }
                }
                if !found { break }
            }
            for (l, r) in created where end[l] >= 0 && next[l] == r { enqueue(l, r) }
            created.removeAll(keepingCapacity: true)
        }
        var i = 0
        while i < n {
            let symbol = piece[(base + i)..<(base + end[i])]
            if let id = symbolIDs[symbol] {
                out.append(id)
            } else {
                for b in symbol { if let id = byteIDs[Int(b)] { out.append(id) } }
            }
            i = next[i]
        }
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
