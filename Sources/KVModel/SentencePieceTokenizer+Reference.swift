extension SentencePieceTokenizer {
    /// `encode` with steps 2–4 in their direct quadratic form (every step scans all pairs for the
    /// best one): the priority-queue encoder's twin, for tests and the fuzz target.
    func encodeReference(_ text: String) -> [Int32] { encode(text, reference: true) }

    /// `encodeEscaped`, quadratic: each merge scans every pair's score and removes from arrays.
    func encodeEscapedReference(_ text: [UInt8], into out: inout [Int32]) {
        guard !text.isEmpty else { return }
        var symbols = Self.characterRanges(text)
        // pairScores[i]: the score of merging symbols i and i + 1 (NaN as -∞, below every -∞: the
        // queue's order), nil if their text is no piece.
        func score(_ a: Range<Int>, _ b: Range<Int>) -> (Float, Bool)? {
            ids[text[a.lowerBound..<b.upperBound]].map { let s = scores[Int($0)]; return s.isNaN ? (-.infinity, true) : (s, false) }
        }
        var pairScores = (0..<max(0, symbols.count - 1)).map { score(symbols[$0], symbols[$0 + 1]) }
        while true {
            var best = -1, bestScore = -Float.infinity, bestNaN = true
            for (i, s) in pairScores.enumerated() {
                guard let (v, nan) = s else { continue }
                if best < 0 || v > bestScore || (v == bestScore && bestNaN && !nan) { best = i; bestScore = v; bestNaN = nan }
            }
            guard best >= 0 else { break }
            symbols[best] = symbols[best].lowerBound..<symbols[best + 1].upperBound
            symbols.remove(at: best + 1)
            pairScores.remove(at: best)
            if best > 0 { pairScores[best - 1] = score(symbols[best - 1], symbols[best]) }
            if best < pairScores.count { pairScores[best] = score(symbols[best], symbols[best + 1]) }
        }
        for s in symbols {
            if let id = ids[text[s]] {
                out.append(id)
            } else {
                for b in text[s] { if let id = byteTokens[Int(b)] { out.append(id) } }
            }
        }
    }
}
