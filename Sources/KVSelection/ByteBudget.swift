import KVQuantization

/// How much memory one stream may use, and how it is shared between the host policy's FP16 tokens
/// and KVCrush representatives.
///
/// The amount is a fraction of the stream's full FP16 bytes (`n · tokenByteCount(.fp16)`, rounded
/// down) or an absolute byte count. Sinks, the recent window and any decode headroom are paid first;
/// of what remains (the *available* bytes), `representativeShare` goes to representatives at
/// `representativeTier` and the rest to the host (or, in `TieredPlanner`, to the greedy tiers).
/// Tokens neither kept nor chosen go to `restTier`: `.dropped` by default, or a stored low-bit tier
/// (`.int2`, MiKV's "no token left behind"), in which case every middle token's rest-tier cost is
/// paid before anything else; when that floor itself does not fit, the best-scored middle tokens that
/// fit stay at the rest tier and the others are dropped.
public struct ByteBudget: Sendable, Hashable {
    /// The size of a budget.
    public enum Amount: Sendable, Hashable {
        /// A fraction of the stream's full FP16 bytes (finite, ≥ 0; above 1 simply keeps everything).
        case fractionOfFP16(Double)
        /// An absolute number of bytes (≥ 0).
        case byteCount(Int)
    }

    /// Where the representatives' bytes come from.
    public enum RepresentativePlacement: Sendable, Hashable {
        /// Carved out of the budget: the total never exceeds it (default).
        case insideBudget
        /// OpenVINO compatibility: the host gets the whole available budget and the representatives'
        /// share comes on top, so the stream may exceed the budget by up to that share.
        case openVINOAddedOnTop
    }

    /// The budget's size.
    public var amount: Amount
    /// Fraction of the available bytes given to KVCrush representatives (0 = KVCrush off).
    public var representativeShare: Double
    /// The tier representatives are stored at (default `.int4`).
    public var representativeTier: Tier
    /// Where tokens go that are neither kept nor representatives (default `.dropped`).
    public var restTier: Tier
    /// Representatives inside the budget (default) or on top (OpenVINO).
    public var representativePlacement: RepresentativePlacement

    /// A budget of `amount` with the given representative share, tiers and placement.
    public init(_ amount: Amount, representativeShare: Double = 0, representativeTier: Tier = .int4,
                restTier: Tier = .dropped, representativePlacement: RepresentativePlacement = .insideBudget) {
        self.amount = amount
        self.representativeShare = representativeShare
        self.representativeTier = representativeTier
        self.restTier = restTier
        self.representativePlacement = representativePlacement
    }

    /// A budget that is `fraction` of the stream's FP16 bytes.
    public static func fraction(_ fraction: Double, representativeShare: Double = 0, representativeTier: Tier = .int4,
                                restTier: Tier = .dropped) -> ByteBudget {
        ByteBudget(.fractionOfFP16(fraction), representativeShare: representativeShare,
                   representativeTier: representativeTier, restTier: restTier)
    }

    /// A budget of `byteCount` bytes.
    public static func bytes(_ byteCount: Int, representativeShare: Double = 0, representativeTier: Tier = .int4,
                             restTier: Tier = .dropped) -> ByteBudget {
        ByteBudget(.byteCount(byteCount), representativeShare: representativeShare,
                   representativeTier: representativeTier, restTier: restTier)
    }

    /// Checks the budget's values.
    ///
    /// - Throws: `.invalidBudgetFraction` (NaN, infinite, negative), `.invalidBudgetByteCount`
    ///   (negative), `.invalidRepresentativeShare` (NaN or outside 0...1), `.invalidTier` (an FP16
    ///   rest tier, or a representative tier that is `.dropped` or not more precise than the rest tier, while the
    ///   share is positive).
    public func validate() throws(SelectionError) {
        switch amount {
        case .fractionOfFP16(let f): guard f.isFinite && f >= 0 else { throw .invalidBudgetFraction(f) }
        case .byteCount(let b): guard b >= 0 else { throw .invalidBudgetByteCount(b) }
        }
        guard representativeShare >= 0 && representativeShare <= 1 else {
            throw .invalidRepresentativeShare(representativeShare)
        }
        guard restTier != .fp16 else { throw .invalidTier(.fp16, role: "rest tier") }
        if representativeShare > 0 {
            guard representativeTier != .dropped, representativeTier < restTier else {
                throw .invalidTier(representativeTier, role: "representative tier (rest tier is \(restTier))")
            }
        }
    }

    /// The budget in bytes for a stream whose full FP16 size is `fp16ByteCount`.
    ///
    /// - Throws: as `validate()`.
    public func byteCount(fp16ByteCount: Int) throws(SelectionError) -> Int {
        try validate()
        switch amount {
        case .fractionOfFP16(let f):
            // Int(_:) truncates, which is ⌊·⌋ for the non-negative product (no libm needed).
            let b = f * Double(fp16ByteCount)
            return b >= Double(Int.max) ? Int.max : Int(b)
        case .byteCount(let b):
            return b
        }
    }

    /// This budget with its amount multiplied by `scale` (a fraction stays a fraction; a byte count
    /// is rounded down): how per-layer budget weights (`CompressionSettings.layerBudgetScales`) give
    /// a layer more or less than the sequence's budget.
    ///
    /// - Precondition: `scale` is finite and non-negative.
    public func scaled(by scale: Double) -> ByteBudget {
        precondition(scale.isFinite && scale >= 0, "ByteBudget.scaled: scale must be finite and non-negative, got \(scale)")
        var b = self
        switch amount {
        case .fractionOfFP16(let f): b.amount = .fractionOfFP16(f * scale)
        case .byteCount(let n):
            let x = Double(n) * scale
            b.amount = .byteCount(x >= Double(Int.max) ? Int.max : Int(x))
        }
        return b
    }
}
