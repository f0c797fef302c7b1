import KVQuantization

/// How KVCrush builds a token's signature.
public enum SignatureMode: Sendable, Hashable {
    /// One bit per query head (the paper; default).
    case perHead
    /// OpenVINO compatibility: heads summed first, one bit per token.
    case openVINOHeadSummed
}

/// How KVCrush spreads its representatives along the (distance, position) order.
public enum RepresentativeSpacing: Sendable, Hashable {
    /// `index_k = round(k·(|C|−1)/(B_c−1))`, k = 0 … B_c−1, both ends included (index 0 when
    /// B_c = 1); rounding is half-up in exact integer arithmetic (default).
    case evenIncludingEnds
    /// OpenVINO compatibility: `index_k = k·⌊|C|/B_c⌋`, which never reaches the far end.
    case openVINOStride
}

/// KVCrush: picks representatives of the tokens (or pages) the host policy would drop, by
/// head-behaviour signature (algorithm.md §3).
///
/// Steps, for candidates C (middle units the host did not keep) and a count B_c:
/// 1. signatures: `BitSignatures.perHead` (or head-summed) over the whole middle region;
/// 2. anchor bits (`Anchor`), `mean` computed over C;
/// 3. distance `d_j = popcount(b_j XOR a)`;
/// 4. sort C by `(d_j, position)` ascending and keep `B_c` evenly spread entries, both ends included.
///
/// `B_c = 0` keeps nothing; `B_c ≥ |C|` keeps every candidate. Each distance bucket of size `m`
/// receives `m/|C|·B_c` representatives up to ±1 (consecutive picks are `(|C|−1)/(B_c−1)` apart in the
/// sorted order, so a run of `m` entries contains that many picks, within rounding).
public struct KVCrushSelector: Sendable, Hashable {
    /// The anchor signatures are compared with.
    public var anchor: Anchor
    /// Per-head bits (default) or OpenVINO's head-summed bit.
    public var signatureMode: SignatureMode
    /// Even spread with both ends (default) or OpenVINO's stride.
    public var spacing: RepresentativeSpacing

    /// Defaults: `random(seed: 0)` anchor (OpenVINO's default mode is random), per-head bits, even
    /// spacing including both ends.
    public init(anchor: Anchor = .random(seed: 0), signatureMode: SignatureMode = .perHead,
                spacing: RepresentativeSpacing = .evenIncludingEnds) {
        self.anchor = anchor
        self.signatureMode = signatureMode
        self.spacing = spacing
    }

    /// Token signatures of the middle region from its per-query-head scores (columns = middle tokens
    /// in position order).
    ///
    /// - Complexity: O(H · n log n).
    public func tokenSignatures(middleScores: ImportanceScores) -> BitSignatures {
        switch signatureMode {
        case .perHead: BitSignatures.perHead(middleScores: middleScores)
        case .openVINOHeadSummed: BitSignatures.headSummed(middleScores: middleScores)
        }
    }

    /// The candidates sorted by `(distance to the anchor, unit index)` ascending, with their
    /// distances. Unit indices are in position order, so the tie rule is "earlier position first".
    ///
    /// - Complexity: O(|C| · (N/64 + log |C|)), plus O(|C| · N) for the `mean` anchor.
    public func rankedCandidates(signatures: BitSignatures, candidates: [Int]) -> [(unit: Int, distance: Int)] {
        let a = anchor.bits(for: signatures, candidates: candidates)
        return candidates.map { (unit: $0, distance: signatures.distance(unit: $0, to: a)) }
            .sorted { $0.distance != $1.distance ? $0.distance < $1.distance : $0.unit < $1.unit }
    }

    /// The positions in a sorted candidate list of `candidateCount` entries at which `count`
    /// representatives sit, ascending and distinct. `count ≥ candidateCount` gives every position,
    /// `count = 0` none.
    ///
    /// - Complexity: O(min(count, candidateCount)).
    public static func spreadIndices(candidateCount c: Int, count b: Int,
                                     spacing: RepresentativeSpacing = .evenIncludingEnds) -> [Int] {
        precondition(c >= 0 && b >= 0, "KVCrushSelector: counts must be non-negative")
        if b == 0 || c == 0 { return [] }
        if b >= c { return Array(0..<c) }
        switch spacing {
        case .evenIncludingEnds:
            if b == 1 { return [0] }
            // round(k(c−1)/(b−1)) half up = ⌊(2k(c−1) + (b−1)) / (2(b−1))⌋.
            return (0..<b).map { k in (2 * k * (c - 1) + (b - 1)) / (2 * (b - 1)) }
        case .openVINOStride:
            let stride = c / b
            return (0..<b).map { $0 * stride }
        }
    }

    /// Picks `count` representatives among `candidates` (unit indices of `signatures`), returned in
    /// ascending unit order.
    ///
    /// - Precondition: candidates are distinct and in range.
    /// - Complexity: as `rankedCandidates`.
    public func representatives(signatures: BitSignatures, candidates: [Int], count: Int) -> [Int] {
        precondition(count >= 0, "KVCrushSelector: count must be non-negative")
        precondition(Set(candidates).count == candidates.count, "KVCrushSelector: candidates must be distinct")
        if count == 0 || candidates.isEmpty { return [] }
        if count >= candidates.count { return candidates.sorted() }
        let ranked = rankedCandidates(signatures: signatures, candidates: candidates)
        return Self.spreadIndices(candidateCount: ranked.count, count: count, spacing: spacing)
            .map { ranked[$0].unit }.sorted()
    }

    /// Token granularity in one call: signatures over the middle (`middleScores`, per query head,
    /// columns = middle tokens in position order), candidates = middle tokens not in `hostKept`
    /// (middle-relative indices), `count` representatives (middle-relative, ascending).
    ///
    /// - Complexity: O(H · n log n).
    public func selectTokens(middleScores: ImportanceScores, hostKept: [Int], count: Int) -> [Int] {
        let sig = tokenSignatures(middleScores: middleScores)
        let kept = Set(hostKept)
        let candidates = (0..<middleScores.tokenCount).filter { !kept.contains($0) }
        return representatives(signatures: sig, candidates: candidates, count: count)
    }

    /// Page granularity in one call: middle tokens are grouped into pages of `pageTokenCount`
    /// starting at the first middle token (a final page may be shorter); page signatures are the
    /// token signatures end to end; candidates are the pages not in `hostKeptPages`; returns
    /// `count` page indices, ascending.
    ///
    /// - Complexity: O(H · n log n).
    public func selectPages(middleScores: ImportanceScores, pageTokenCount: Int, hostKeptPages: [Int], count: Int) -> [Int] {
        let sig = tokenSignatures(middleScores: middleScores).pages(tokenCount: pageTokenCount)
        let kept = Set(hostKeptPages)
        let candidates = (0..<sig.unitCount).filter { !kept.contains($0) }
        return representatives(signatures: sig, candidates: candidates, count: count)
    }
}
