import KVCrush

/// `--formats` and `--rotate`: the store's tier formats and rotation for `run` and `bench`.
enum StoreFormatOptions {
    static let help = """
        --formats TIER=KEY:VALUE[,…] sets the key and value format of a quantised tier (int8, int4,
        int2); unnamed tiers keep the defaults (per-channel keys; values in groups of 64 at INT8, 32
        below). Format names: int8/g64, int4/g32, int3/g32, int2/g32, … (groups), int4/channel,
        int3/channel, … (keys per channel across a page), lm4, lm3, lm2 (Lloyd–Max levels with one
        FP16 norm per vector; meant for rotated tiers), fp16, and mixB/channel keys (a width per channel
        and KV head at B bits per element: in run, allocated per layer from --profile's key statistics,
        `kvcrush calibrate --keys mix4/channel`; in bench, a seeded synthetic allocation). Example: --formats int4=int4/channel:lm3.
        --rotate keys|values|keys+values|none (default none) keeps the quantised tiers of every layer
        rotated by a randomised Walsh–Hadamard transform (signs from --rotation-seed, default 0);
        head dims that are not powers of two are never rotated.
        """

    /// What `--formats`, `--rotate` and `--rotation-seed` say.
    struct Options {
        var formats: TierFormats, rotation: RotationSettings
        /// Tiers whose keys are `mixB/channel` (name per tier), resolved per layer from a profile.
        var mixedKeys: [Tier: String] = [:]
    }

    /// Reads `--formats`, `--rotate` and `--rotation-seed`.
    static func parse(_ args: inout CommandLineArguments) throws(UsageError) -> Options {
        var formats = TierFormats.standard, mixed = [Tier: String]()
        let command = args.command
        if let spec = args.string("formats") {
            for item in spec.split(separator: ",") {
                let parts = item.split(separator: "=", maxSplits: 1)
                let pair = parts.count == 2 ? parts[1].split(separator: ":", omittingEmptySubsequences: false) : []
                let isMixed = pair.count == 2 && KeyChannelStatistics.mixedBits(named: String(pair[0])) != nil
                guard parts.count == 2, let tier = Tier(name: String(parts[0])), tier != .fp16, tier != .dropped, pair.count == 2,
                      let key = isMixed ? StorageFormat.channelwise(.int4) : StorageFormat(name: String(pair[0])),
                      let value = StorageFormat(name: String(pair[1])) else {
                    throw UsageError(message: "bad item '\(item)' in --formats: expected TIER=KEY:VALUE with TIER int8, int4 or int2 and format names such as int4/channel, int4/g32, lm3", command: command)
                }
                formats.keys[tier] = key
                formats.values[tier] = value
                mixed[tier] = isMixed ? String(pair[0]) : nil
            }
        }
        let rotate = try args.value("rotate", default: "none", expected: "keys, values, keys+values or none") {
            ["keys", "values", "keys+values", "none"].contains($0) ? $0 : nil
        }
        let seed = try args.value("rotation-seed", default: UInt64(0), expected: "an unsigned integer") { UInt64($0) }
        let rotation = RotationSettings(keys: rotate.contains("keys") ? .all : .none, values: rotate.contains("values") ? .all : .none, seed: seed)
        return Options(formats: formats, rotation: rotation, mixedKeys: mixed)
    }

    /// `configuration` with the formats and rotation, validated; mixed keys per layer from `profile`
    /// (`SensitivityProfile.keyFormat(named:layer:)`), which they need.
    static func apply(_ options: Options, to configuration: KVStoreConfiguration, profile: SensitivityProfile? = nil,
                      command: String) throws(UsageError) -> KVStoreConfiguration {
        var c = configuration
        c.tierFormats = options.formats
        c.rotation = options.rotation
        if !options.mixedKeys.isEmpty {
            guard let profile, profile.keyChannels != nil else {
                throw UsageError(message: "--formats \(options.mixedKeys.values.sorted().joined(separator: ", ")): mixed keys take their widths from a profile with key statistics (--profile P.json from kvcrush calibrate --keys mix…)", command: command)
            }
            var layers = [TierFormats]()
            for l in 0..<c.layerCount {
                var f = options.formats
                for (tier, name) in options.mixedKeys {
                    guard let k = profile.keyFormat(named: name, layer: l) else {
                        throw UsageError(message: "--formats: \(name) is not a whole number of code bytes per row of head dim \(c.headDim)", command: command)
                    }
                    f.keys[tier] = k
                }
                layers.append(f)
            }
            c.layerTierFormats = layers
        }
        do { try c.validate() } catch { throw UsageError(message: "--formats: \(error)", command: command) }
        return c
    }
}
