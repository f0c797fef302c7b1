/// The storage format of each stored tier, for keys and values separately.
public struct TierFormats: Sendable, Hashable {
    public var keys: [Tier: StorageFormat]
    public var values: [Tier: StorageFormat]

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

    public init(keys: [Tier: StorageFormat], values: [Tier: StorageFormat]) {
        self.keys = keys
        self.values = values
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

    /// Bytes one token costs in `tier` for one stream (key row + value row + 4-byte position),
    /// ignoring page-wise parameters and page slack; 0 for `.dropped`.
    public func tokenByteCount(_ tier: Tier, headDim: Int) -> Int {
        guard tier != .dropped else { return 0 }
        return keyFormat(tier).rowByteCount(headDim: headDim)
            + valueFormat(tier).rowByteCount(headDim: headDim) + 4
    }
}
