import KVQuantization

/// A fixed-length bit vector stored in 64-bit words (bit `i` is bit `i mod 64` of word `i / 64`);
/// bits past `bitCount` are always zero. Used for anchors.
public struct BitVector: Sendable, Hashable {
    /// Number of bits.
    public let bitCount: Int
    /// The words, `⌈bitCount / 64⌉` of them.
    public private(set) var words: [UInt64]

    /// All zeros.
    public init(bitCount: Int) {
        precondition(bitCount >= 0, "BitVector: bitCount must be non-negative")
        self.bitCount = bitCount
        words = [UInt64](repeating: 0, count: (bitCount + 63) / 64)
    }

    /// The given bits, first element first.
    public init(bits: [Bool]) {
        self.init(bitCount: bits.count)
        for (i, b) in bits.enumerated() where b { self[i] = true }
    }

    /// Bit `i`.
    public subscript(i: Int) -> Bool {
        get {
            precondition(i >= 0 && i < bitCount, "BitVector: bit \(i) out of range")
            return words[i >> 6] >> UInt64(i & 63) & 1 == 1
        }
        set {
            precondition(i >= 0 && i < bitCount, "BitVector: bit \(i) out of range")
            if newValue { words[i >> 6] |= 1 << UInt64(i & 63) } else { words[i >> 6] &= ~(1 << UInt64(i & 63)) }
        }
    }

    /// The bits as an array, first bit first.
    public var bits: [Bool] { (0..<bitCount).map { self[$0] } }
}

/// KVCrush head-behaviour signatures: one bit string of `bitCount` bits per unit (token or page).
///
/// Layout: unit `u` owns words `u·wordsPerUnit ..< (u+1)·wordsPerUnit`; bit `i` of its signature is
/// bit `i mod 64` of its word `i / 64`. A token signature has one bit per query head
/// (`bitsPerToken = H`; any `H`, e.g. 9 or 96, since words are chained). A page signature lays its
/// tokens' signatures end to end: bit `t·bitsPerToken + h` is token `t`'s bit `h`.
public struct BitSignatures: Sendable, Hashable {
    /// Number of units (tokens or pages).
    public let unitCount: Int
    /// Bits per unit.
    public let bitCount: Int
    /// Bits each token contributes (H per-head, 1 head-summed); `bitCount` is a multiple of it.
    public let bitsPerToken: Int
    /// Words per unit, `⌈bitCount / 64⌉`.
    public let wordsPerUnit: Int
    /// All units' words, unit after unit.
    public private(set) var words: [UInt64]

    /// All-zero signatures.
    public init(unitCount: Int, bitCount: Int, bitsPerToken: Int) {
        precondition(unitCount >= 0 && bitCount >= 0 && bitsPerToken > 0 && bitCount % bitsPerToken == 0,
                     "BitSignatures: bitCount must be a non-negative multiple of bitsPerToken > 0")
        self.unitCount = unitCount
        self.bitCount = bitCount
        self.bitsPerToken = bitsPerToken
        wordsPerUnit = (bitCount + 63) / 64
        words = [UInt64](repeating: 0, count: unitCount * wordsPerUnit)
    }

    /// Bit `index` of unit `unit`'s signature.
    public func bit(unit: Int, index: Int) -> Bool {
        precondition(unit >= 0 && unit < unitCount && index >= 0 && index < bitCount,
                     "BitSignatures: (unit \(unit), bit \(index)) out of range")
        return words[unit * wordsPerUnit + index >> 6] >> UInt64(index & 63) & 1 == 1
    }

    /// Sets bit `index` of unit `unit`.
    public mutating func setBit(unit: Int, index: Int) {
        precondition(unit >= 0 && unit < unitCount && index >= 0 && index < bitCount,
                     "BitSignatures: (unit \(unit), bit \(index)) out of range")
        words[unit * wordsPerUnit + index >> 6] |= 1 << UInt64(index & 63)
    }

    /// The Hamming distance of unit `unit`'s signature to `anchor`: popcount of their XOR.
    ///
    /// - Complexity: O(bitCount / 64).
    public func distance(unit: Int, to anchor: BitVector) -> Int {
        precondition(anchor.bitCount == bitCount, "BitSignatures: anchor has \(anchor.bitCount) bits, signatures \(bitCount)")
        precondition(unit >= 0 && unit < unitCount, "BitSignatures: unit \(unit) out of range")
        var d = 0
        let base = unit * wordsPerUnit
        for w in 0..<wordsPerUnit { d += (words[base + w] ^ anchor.words[w]).nonzeroBitCount }
        return d
    }

    /// Token signatures with one bit per query head: bit `h` of token `j` is 1 iff `j` is among the
    /// `⌊n/2⌋` best of head `h`'s scores over the `n` tokens given (rank < ⌊n/2⌋, ranked by
    /// `TokenRanking`: score descending, ties to the later position).
    ///
    /// `middleScores` must hold exactly the middle region's tokens, in position order.
    ///
    /// - Complexity: O(H · n log n).
    public static func perHead(middleScores s: ImportanceScores) -> BitSignatures {
        let n = s.tokenCount
        var sig = BitSignatures(unitCount: n, bitCount: s.headCount, bitsPerToken: max(1, s.headCount))
        for h in 0..<s.headCount {
            for j in TokenRanking.descendingOrder(s.scores(head: h)).prefix(n / 2) {
                sig.setBit(unit: j, index: h)
            }
        }
        return sig
    }

    /// OpenVINO-compatible token signatures: the heads are summed away first, leaving one bit per
    /// token (1 iff the token is among the `⌊n/2⌋` best of the head-summed scores, same tie rule).
    /// Not the default: it discards which heads a token matters to.
    ///
    /// - Complexity: O(H · n + n log n).
    public static func headSummed(middleScores s: ImportanceScores) -> BitSignatures {
        let n = s.tokenCount
        var sig = BitSignatures(unitCount: n, bitCount: 1, bitsPerToken: 1)
        for j in TokenRanking.descendingOrder(s.summedOverHeads()).prefix(n / 2) {
            sig.setBit(unit: j, index: 0)
        }
        return sig
    }

    /// Page signatures from these token signatures: page `p` covers tokens
    /// `p·pageTokenCount ..< min((p+1)·pageTokenCount, unitCount)` and its signature is their
    /// signatures end to end (`pageTokenCount · bitCount` bits). A final short page is padded with
    /// zero bits for its missing tokens.
    ///
    /// - Complexity: O(unitCount · bitCount).
    public func pages(tokenCount pageTokenCount: Int) -> BitSignatures {
        precondition(pageTokenCount > 0, "BitSignatures: pageTokenCount must be positive")
        let pageCount = (unitCount + pageTokenCount - 1) / pageTokenCount
        var out = BitSignatures(unitCount: pageCount, bitCount: pageTokenCount * bitCount, bitsPerToken: bitsPerToken)
        for t in 0..<unitCount {
            let p = t / pageTokenCount, slot = t % pageTokenCount
            for i in 0..<bitCount where bit(unit: t, index: i) {
                out.setBit(unit: p, index: slot * bitCount + i)
            }
        }
        return out
    }
}
