import KVQuantization

/// What one token costs a stream in each tier, as every planner counts it.
///
/// `byteCount(t)` is `TierFormats.tokenByteCount(t, headDim:)` (key row + value row + 4-byte
/// position) plus page-wise parameters amortised per token and rounded up
/// (`⌈(keyParams + valueParams) / pageCapacity⌉`, non-zero only for channelwise formats); 0 for
/// `.dropped`.
///
/// **Page slack.** A store keeps each tier's tokens in pages of `pageCapacity` slots, so a stream
/// holding `c_t` tokens in tier `t` occupies `⌈c_t / P⌉` pages. Because the amortised parameter cost
/// is rounded up, `⌈c_t/P⌉ · pageByteCount(t) ≤ c_t · byteCount(t) + pageByteCount(t)`: the paged
/// memory exceeds the planned byte count by less than one page per stored tier in use
/// (`slackBound`).
public struct TierCosts: Sendable, Hashable {
    /// The formats costed.
    public let formats: TierFormats
    /// Elements per head vector.
    public let headDim: Int
    /// Token slots per page in the store.
    public let pageCapacity: Int
    private let perToken: [Int]  // indexed by Tier.rawValue

    /// Costs for `formats` at `headDim` with pages of `pageCapacity` tokens.
    ///
    /// - Precondition: every stored tier has key and value formats, `headDim > 0`,
    ///   `pageCapacity > 0`, and costs do not increase down the tiers
    ///   (fp16 ≥ int8 ≥ int4 ≥ int2 ≥ dropped), which the planners' "move down only" rule relies on.
    public init(formats: TierFormats, headDim: Int, pageCapacity: Int) {
        precondition(headDim > 0 && pageCapacity > 0, "TierCosts: headDim and pageCapacity must be positive")
        self.formats = formats
        self.headDim = headDim
        self.pageCapacity = pageCapacity
        perToken = Tier.allCases.map { t in
            guard t != .dropped else { return 0 }
            let params = formats.keyFormat(t).pageParameterByteCount(headDim: headDim)
                + formats.valueFormat(t).pageParameterByteCount(headDim: headDim)
            return formats.tokenByteCount(t, headDim: headDim) + (params + pageCapacity - 1) / pageCapacity
        }
        for i in 1..<perToken.count {
            precondition(perToken[i] <= perToken[i - 1],
                         "TierCosts: \(Tier.allCases[i]) costs more than \(Tier.allCases[i - 1]); tiers must get cheaper downwards")
        }
    }

    /// Bytes one token costs in `tier` (0 for `.dropped`).
    @inlinable public func byteCount(_ tier: Tier) -> Int { perTokenCost(tier) }

    @usableFromInline func perTokenCost(_ tier: Tier) -> Int { perToken[tier.rawValue] }

    /// Bytes of one page of `tier` in a store (rows, positions and page-wise parameters).
    public func pageByteCount(_ tier: Tier) -> Int {
        guard tier != .dropped else { return 0 }
        return formats.keyFormat(tier).pageByteCount(headDim: headDim, pageCapacity: pageCapacity)
            + formats.valueFormat(tier).pageByteCount(headDim: headDim, pageCapacity: pageCapacity)
            + 4 * pageCapacity
    }

    /// Bytes a store's whole pages take for `tokenCount` tokens of `tier`.
    public func pagedByteCount(_ tier: Tier, tokenCount: Int) -> Int {
        (tokenCount + pageCapacity - 1) / pageCapacity * pageByteCount(tier)
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
