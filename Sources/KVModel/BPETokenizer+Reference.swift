extension BPETokenizer {
    /// `encode` by the direct quadratic form of GPT-2's `bpe()` (each pass scans every pair for the
    /// lowest rank, then merges all its occurrences left to right; no piece cache): the
    /// priority-queue encoder's twin, for tests and the fuzz target.
    func encodeReference(_ text: String) -> [Int32] {
        let bytes = Array(text.utf8)
        var out = [Int32]()
        for r in preTokenizer.byteRanges(text) {
            var symbols = r.map { $0..<($0 + 1) }
            while symbols.count > 1 {
                var best = Int.max, at = -1
                for i in 0..<(symbols.count - 1) {
                    let key = MergeKey(bytes: bytes[symbols[i].lowerBound..<symbols[i + 1].upperBound], split: symbols[i].count)
                    if let rank = mergeRanks[key], rank < best { best = rank; at = i }
                }
                guard at >= 0 else { break }
                let left = bytes[symbols[at]], right = bytes[symbols[at + 1]]
                var merged = [Range<Int>]()
                var i = 0
                while i < symbols.count {
                    if i + 1 < symbols.count, bytes[symbols[i]].elementsEqual(left), bytes[symbols[i + 1]].elementsEqual(right) {
                        merged.append(symbols[i].lowerBound..<symbols[i + 1].upperBound)
                        i += 2
                    } else {
                        merged.append(symbols[i])
                        i += 1
                    }
                }
                symbols = merged
            }
            for s in symbols {
                if let id = symbolIDs[bytes[s]] {
                    out.append(id)
                } else {
                    for b in bytes[s] { if let id = byteIDs[Int(b)] { out.append(id) } }
                }
            }
        }
        return out
    }
}
