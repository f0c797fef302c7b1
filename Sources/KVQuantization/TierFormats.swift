/// The storage format of each stored tier, for keys and values separately, and optionally the
/// page capacity of each tier.
///
/// Page capacities: a tier named in `pageCapacities` keeps its tokens in pages of that many slots;
/// the others use the store's `KVStoreConfiguration.pageCapacity`. Small pages bound a tier's slack
/// (one partly filled page per stream: small FP16 pages suit a decoding stream's FP16 tail); large
/// pages spread the per-page costs over more tokens (a per-channel key page's `4·d` bytes of
/// parameters cost `4·d/P` bytes per token; the position block's base and padding, see
/// `PagePositions`, `≤ 20/P`).
public struct TierFormats: Sendable, Hashable {
    public var keys: [Tier: StorageFormat]
    public var values: [Tier: StorageFormat]
    /// Token slots per page of the tiers named (1...65536 each); tiers not named use the store's
    /// default page capacity.
    public var pageCapacities: [Tier: Int]

    /// The package defaults, chosen from the measured reconstruction error on real SmolLM2 keys and
    /// values (README, `kvcrush formats`): keys per channel across each page (KIVI), 2.5–3× lower
    /// error than groups of 32 at the same bytes (with 32-token pages); values in groups of 64 at
    /// INT8 (error already ~0.5%) and 32 at INT4 and INT2 (~20% lower error than 64 for ~11% more
    /// bytes).
    public static let standard = TierFormats(
        keys: [.fp16: .fp16, .int8: .channelwise(.int8), .int4: .channelwise(.int4), .int2: .channelwise(.int2)],
        values: [.fp16: .fp16, .int8: .int8, .int4: .int4, .int2: .int2])

    /// Every tier grouped per token (`StorageFormat.int8/.int4/.int2`) for keys and values: no
    /// page-wise parameters, so no staging page.
    public static let grouped = TierFormats(
        keys: [.fp16: .fp16, .int8: .int8, .int4: .int4, .int2: .int2],
        values: [.fp16: .fp16, .int8: .int8, .int4: .int4, .int2: .int2])

    public init(keys: [Tier: StorageFormat], values: [Tier: StorageFormat], pageCapacities: [Tier: Int] = [:]) {
        self.keys = keys
        self.values = values
        self.pageCapacities = pageCapacities
    }

    /// These formats with `capacities` as the page capacities of the tiers named (others keep theirs).
    public func withPageCapacities(_ capacities: [Tier: Int]) -> TierFormats {
        var f = self
        f.pageCapacities.merge(capacities) { _, new in new }
        return f
    }

    /// The page capacity of `tier`: `pageCapacities[tier]`, else `defaultCapacity`.
    public func pageCapacity(_ tier: Tier, default defaultCapacity: Int) -> Int {
        pageCapacities[tier] ?? defaultCapacity
    }

    /// The key format of a stored tier. Traps for `.dropped` or an unconfigured tier.
    public func keyFormat(_ tier: Tier) -> StorageFormat {
        guard let f = keys[tier] else { preconditionFailure("TierFormats: no key format for tier \(tier)") }
        return f
    }

    /// The value format of a stored tier. Traps for `.dropped` or an unconfigured tier.
    public func valueFormat(_ tier: Tier) -> StorageFormat {
        guard let f = values[tier] else { preconditionFailure("TierFormats: no value format for tier \(tier)") }
        return f
    }

    /// Bytes one token slot costs in `tier` for one stream: key row + value row + its 2-byte
    /// position offset, excluding what each page costs once (`pageOverheadByteCount`) and page
    /// slack; 0 for `.dropped`.
    public func tokenByteCount(_ tier: Tier, headDim: Int) -> Int {
        guard tier != .dropped else { return 0 }
        return keyFormat(tier).rowByteCount(headDim: headDim)
            + valueFormat(tier).rowByteCount(headDim: headDim) + 2
    }

    /// Bytes each page of `tier` costs once, whatever its fill: page-wise key and value parameters
    /// (`4·d` for per-channel keys) and the position block's base and padding
    /// (`PagePositions.overheadByteCount`); 0 for `.dropped`.
    public func pageOverheadByteCount(_ tier: Tier, headDim: Int, pageCapacity: Int) -> Int {
        guard tier != .dropped else { return 0 }
        return keyFormat(tier).pageParameterByteCount(headDim: headDim) + valueFormat(tier).pageParameterByteCount(headDim: headDim)
            + PagePositions.overheadByteCount(pageCapacity: pageCapacity)
    }

    /// Bytes of one page of `tier` with `pageCapacity` slots, exactly as a store allocates it
    /// (`PageLayout.byteCount`): `pageCapacity · tokenByteCount + pageOverheadByteCount`.
    ///
    /// E.g. d = 64, 32 slots: FP16 32·258 + 16 = 8,272 bytes (258.5 per slot); the default INT4
    /// tier (per-channel keys, values in groups of 32) 32·(32 + 40 + 2) + 256 + 16 = 2,640 (82.5 per
    /// slot; 76.1 with 128 slots).
    public func pageByteCount(_ tier: Tier, headDim: Int, pageCapacity: Int) -> Int {
        guard tier != .dropped else { return 0 }
        return pageCapacity * tokenByteCount(tier, headDim: headDim) + pageOverheadByteCount(tier, headDim: headDim, pageCapacity: pageCapacity)
    }
}
