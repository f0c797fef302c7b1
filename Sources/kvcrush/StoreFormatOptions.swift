import KVCrush

/// `--formats` and `--rotate`: the store's tier formats and rotation for `run` and `bench`.
enum StoreFormatOptions {
    static let help = """
        --formats TIER=KEY:VALUE[,…] sets the key and value format of a quantised tier (int8, int4,
        int2); unnamed tiers keep the defaults (per-channel keys; values in groups of 64 at INT8, 32
        below). Format names: int8/g64, int4/g32, int3/g32, int2/g32, … (groups), int4/channel,
        int3/channel, … (keys per channel across a page), lm4, lm3, lm2 (Lloyd–Max levels with one
        FP16 norm per vector; meant for rotated tiers), fp16. Example: --formats int4=int4/channel:lm3.
        --rotate keys|values|keys+values|none (default none) keeps the quantised tiers of every layer
        rotated by a randomised Walsh–Hadamard transform (signs from --rotation-seed, default 0);
        head dims that are not powers of two are never rotated.
        """

    /// Reads `--formats`, `--rotate` and `--rotation-seed`.
    static func parse(_ args: inout CommandLineArguments) throws(UsageError) -> (formats: TierFormats, rotation: RotationSettings) {
        var formats = TierFormats.standard
        let command = args.command
        if let spec = args.string("formats") {
            for item in spec.split(separator: ",") {
                let parts = item.split(separator: "=", maxSplits: 1)
                let pair = parts.count == 2 ? parts[1].split(separator: ":", omittingEmptySubsequences: false) : []
                guard parts.count == 2, let tier = Tier(name: String(parts[0])), tier != .fp16, tier != .dropped, pair.count == 2,
                      let key = StorageFormat(name: String(pair[0])), let value = StorageFormat(name: String(pair[1])) else {
                    throw UsageError(message: "bad item '\(item)' in --formats: expected TIER=KEY:VALUE with TIER int8, int4 or int2 and format names such as int4/channel, int4/g32, lm3", command: command)
                }
                formats.keys[tier] = key
                formats.values[tier] = value
            }
        }
        let rotate = try args.value("rotate", default: "none", expected: "keys, values, keys+values or none") {
            ["keys", "values", "keys+values", "none"].contains($0) ? $0 : nil
        }
        let seed = try args.value("rotation-seed", default: UInt64(0), expected: "an unsigned integer") { UInt64($0) }
        let rotation = RotationSettings(keys: rotate.contains("keys") ? .all : .none, values: rotate.contains("values") ? .all : .none, seed: seed)
        return (formats, rotation)
    }

    /// `configuration` with the formats and rotation, validated.
    static func apply(_ options: (formats: TierFormats, rotation: RotationSettings), to configuration: KVStoreConfiguration,
                      command: String) throws(UsageError) -> KVStoreConfiguration {
        var c = configuration
        c.tierFormats = options.formats
        c.rotation = options.rotation
        do { try c.validate() } catch { throw UsageError(message: "--formats: \(error)", command: command) }
        return c
    }
}
