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
        for i in 1..<perToken.count {
            precondition(perToken[i] <= perToken[i - 1],
                         "TierCosts: \(Tier.allCases[i]) costs more than \(Tier.allCases[i - 1]); tiers must get cheaper downwards")
        }
    }

    /// Bytes one token costs in `tier` (0 for `.dropped`).
    @inlinable public func byteCount(_ tier: Tier) -> Int { perTokenCost(tier) }

    @usableFromInline func perTokenCost(_ tier: Tier) -> Int { perToken[tier.rawValue] }

    /// Token slots per page of `tier`.
    public func pageCapacity(_ tier: Tier) -> Int { formats.pageCapacity(tier, default: pageCapacity) }

    /// Bytes of one page of `tier` in a store (rows, positions and page-wise parameters; exact).
    public func pageByteCount(_ tier: Tier) -> Int {
        formats.pageByteCount(tier, headDim: headDim, pageCapacity: pageCapacity(tier))
    }

    /// Bytes a store's whole pages take for `tokenCount` tokens of `tier` (spanning at most 65,535
    /// positions per page).
    public func pagedByteCount(_ tier: Tier, tokenCount: Int) -> Int {
        guard tier != .dropped else { return 0 }
        let p = pageCapacity(tier)
        return (tokenCount + p - 1) / p * pageByteCount(tier)
    }

    /// The page slack bound for a tier assignment: one page per stored tier holding any token.
    public func slackBound(tiers: [Tier]) -> Int {
        Tier.stored.filter { t in tiers.contains(t) }.reduce(0) { $0 + pageByteCount($1) }
    }

    /// Σ per-token costs of `tiers`.
    public func byteCount(tiers: [Tier]) -> Int { tiers.reduce(0) { $0 + byteCount($1) } }

    /// Bytes the whole pages of an assignment take: Σ over tiers of `pagedByteCount`.
    public func pagedByteCount(tiers: [Tier]) -> Int {
        var counts = [Int](repeating: 0, count: Tier.allCases.count)
        for t in tiers { counts[t.rawValue] += 1 }
        return Tier.stored.reduce(0) { $0 + pagedByteCount($1, tokenCount: counts[$1.rawValue]) }
    }
}
