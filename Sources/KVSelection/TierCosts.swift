import KVQuantization

/// What one token costs a stream in each tier, as every planner counts it.
///
/// `byteCount(t)` is `TierFormats.tokenByteCount(t, headDim:)` (key row + value row + 2-byte
/// position offset) plus what each page costs once, amortised per token and rounded up
/// (`⌈pageOverheadByteCount / P_t⌉`: page-wise parameters, `4·d` for per-channel keys, and the
/// position block's base and padding, `PagePositions`); 0 for `.dropped`. `P_t` is the tier's page
/// capacity: `formats.pageCapacities[t]`, else `pageCapacity`.
///
/// **Page slack.** A store keeps each tier's tokens in pages of `P_t` slots, so a stream
/// holding `c_t` tokens in tier `t` occupies `⌈c_t / P_t⌉` pages (a stream spanning more than 65,535
/// positions can need more: see `KVStore`). Because the amortised cost is rounded up,
/// `⌈c_t/P_t⌉ · pageByteCount(t) ≤ c_t · byteCount(t) + pageByteCount(t)`: the paged memory exceeds
/// the planned byte count by less than one page per stored tier in use (`slackBound`).
public struct TierCosts: Sendable, Hashable {
    /// The formats costed.
    public let formats: TierFormats
    /// Elements per head vector.
    public let headDim: Int
    /// Token slots per page of the tiers `formats` gives no page capacity.
    public let pageCapacity: Int
    private let perToken: [Int]  // indexed by Tier.rawValue
    // Per tier (Tier.rawValue), computed once: the planners' inner loops (page fit) call the paged
    // costs millions of times per compression, and the formats answer through dictionaries.
    private let capacities: [Int], pageBytes: [Int], partialPageBytes: [Int], pageWise: [Bool]

    /// Costs for `formats` at `headDim`, with pages of `pageCapacity` tokens in every tier whose
    /// capacity `formats.pageCapacities` does not give.
    ///
    /// - Precondition: every stored tier has key and value formats, `headDim > 0`, every page
    ///   capacity positive, and costs do not increase down the tiers
    ///   (fp16 ≥ int8 ≥ int4 ≥ int2 ≥ dropped), which the planners' "move down only" rule relies on.
    public init(formats: TierFormats, headDim: Int, pageCapacity: Int) {
        precondition(headDim > 0 && pageCapacity > 0, "TierCosts: headDim and pageCapacity must be positive")
        precondition(formats.pageCapacities.values.allSatisfy { $0 > 0 }, "TierCosts: page capacities must be positive")
        self.formats = formats
        self.headDim = headDim
        self.pageCapacity = pageCapacity
        perToken = Tier.allCases.map { t in
            guard t != .dropped else { return 0 }
            let p = formats.pageCapacity(t, default: pageCapacity)
            let overhead = formats.pageOverheadByteCount(t, headDim: headDim, pageCapacity: p)
            return formats.tokenByteCount(t, headDim: headDim) + (overhead + p - 1) / p
        }
        let caps = Tier.allCases.map { formats.pageCapacity($0, default: pageCapacity) }
        let wise = Tier.allCases.map { $0 != .dropped && formats.keyFormat($0).isPageWise }
        let full = Tier.allCases.map { t in t == .dropped ? 0 : formats.pageByteCount(t, headDim: headDim, pageCapacity: caps[t.rawValue]) }
        capacities = caps
        pageWise = wise
        pageBytes = full
        partialPageBytes = Tier.allCases.map { t in
            guard wise[t.rawValue] else { return full[t.rawValue] }
            let p = caps[t.rawValue]
            return p * (StorageFormat.fp16.rowByteCount(headDim: headDim) + formats.valueFormat(t).rowByteCount(headDim: headDim) + 2)
                + PagePositions.overheadByteCount(pageCapacity: p)
        }
        for i in 1..<perToken.count {
            precondition(perToken[i] <= perToken[i - 1],
                         "TierCosts: \(Tier.allCases[i]) costs more than \(Tier.allCases[i - 1]); tiers must get cheaper downwards")
        }
    }

    /// Bytes one token costs in `tier` (0 for `.dropped`).
    @inlinable public func byteCount(_ tier: Tier) -> Int { perTokenCost(tier) }

    @usableFromInline func perTokenCost(_ tier: Tier) -> Int { perToken[tier.rawValue] }

    /// Token slots per page of `tier`.
    public func pageCapacity(_ tier: Tier) -> Int { capacities[tier.rawValue] }

    /// Bytes of one page of `tier` in a store (rows, positions and page-wise parameters; exact).
    public func pageByteCount(_ tier: Tier) -> Int { pageBytes[tier.rawValue] }

    /// True when `tier`'s keys are quantised per channel across a page: such a tier keeps its
    /// full pages sealed and its last, partly filled group of tokens in a staging page whose keys
    /// are FP16 (`partialPageByteCount`).
    public func isPageWise(_ tier: Tier) -> Bool { pageWise[tier.rawValue] }

    /// Bytes of the page holding a tier's last, partly filled group of tokens: for a tier with
    /// per-channel keys the staging page (P_t slots of FP16 keys, the tier's values and positions, no
    /// key parameters), else a regular page (`pageByteCount`).
    public func partialPageByteCount(_ tier: Tier) -> Int { partialPageBytes[tier.rawValue] }

    /// Exactly the bytes a store's pages take for `tokenCount` tokens of `tier` (what
    /// `KVStore.byteCounts(of:layer:kvHead:)` reports for a stream holding them, when they span
    /// fewer than 65,536 positions: see `KVStore` for longer spans): ⌈n/P_t⌉ pages for a row-wise
    /// tier; ⌊n/P_t⌋ sealed pages plus one staging page when n mod P_t > 0 for a tier with
    /// per-channel keys. 0 for `.dropped`.
    ///
    /// - Complexity: O(1).
    public func pagedByteCount(_ tier: Tier, tokenCount n: Int) -> Int {
        guard tier != .dropped else { return 0 }
        return pagedByteCount(storedTier: tier.rawValue, tokenCount: n)
    }

    /// `pagedByteCount(_:tokenCount:)` of the stored tier with raw value `i`.
    @inline(__always) private func pagedByteCount(storedTier i: Int, tokenCount n: Int) -> Int {
        guard n > 0 else { return 0 }
        let p = capacities[i]
        if pageWise[i] {
            return n / p * pageBytes[i] + (n % p > 0 ? partialPageBytes[i] : 0)
        }
        return (n + p - 1) / p * pageBytes[i]
    }

    /// The page slack bound for a tier assignment: one page per stored tier holding any token (the
    /// larger of its two layouts).
    public func slackBound(tiers: [Tier]) -> Int {
        Tier.stored.filter { t in tiers.contains(t) }.reduce(0) { $0 + max(pageByteCount($1), partialPageByteCount($1)) }
    }

    /// Σ per-token costs of `tiers`.
    public func byteCount(tiers: [Tier]) -> Int { tiers.reduce(0) { $0 + byteCount($1) } }

    /// Bytes the whole pages of an assignment take: Σ over tiers of `pagedByteCount`, with
    /// `extraFP16TokenCount` more slots of the FP16 tier (decode headroom).
    public func pagedByteCount(tiers: [Tier], extraFP16TokenCount: Int = 0) -> Int {
        var counts = [Int](repeating: 0, count: Tier.allCases.count)
        for t in tiers { counts[t.rawValue] += 1 }
        counts[Tier.fp16.rawValue] += extraFP16TokenCount
        return pagedByteCount(counts: counts)
    }

    /// Bytes of the pages for `counts[t.rawValue]` tokens per tier.
    public func pagedByteCount(counts: [Int]) -> Int {
        var total = 0
        for t in Tier.stored { total += pagedByteCount(t, tokenCount: counts[t.rawValue]) }
        return total
    }

    /// `pagedByteCount(counts:)` with the counts in lanes `Tier.rawValue` of a vector (no allocation).
    public func pagedByteCount(counts: SIMD8<Int>) -> Int {
        // The stored tiers are raw values 0 ..< dropped's, in `Tier.stored` order.
        var total = 0
        for i in 0..<Tier.dropped.rawValue { total += pagedByteCount(storedTier: i, tokenCount: counts[i]) }
        return total
    }
}
