import KVQuantization
import KVSelection
import KVStore

/// A named operating point: how the store keeps its INT4 tier (page capacity, key and value
/// formats, rotation) together with the policy that compresses to a fraction of the FP16 cache.
///
/// A preset has two halves because formats are fixed when a store is made and the policy is
/// chosen per sequence: make the store from `configure(_:)`, then apply `policy` to each prompt
/// (with a decode session to keep the budget while generating).
///
/// Every preset uses the plain plan (`PlainPlanner`: SnapKV scores from the prompt's last 32
/// queries, the top 2% of the middle at INT8, the next at INT4 until the budget is spent, the rest
/// dropped; sinks 4 and recent window 32 at INT8 — per-token rows in pages of 16 — once anything
/// has to move; FP16 where budget is left over), re-planned during decode every 16 new tokens, the
/// tokens since the last plan at FP16 (pages of 16). INT8 instead of FP16 for the protected tokens
/// (`protecting(at: .fp16)` restores it) measured better at every preset (SmolLM2-135M, prompt
/// 1536 + 512; README).
/// The INT4 tier keeps keys per channel (KIVI style) and values as rotated Lloyd–Max codes with one
/// FP16 norm per vector (the store rotates them by a randomised Walsh–Hadamard transform; head
/// dims that are not powers of two are left unrotated, where the codes fit worse).
///
/// | name | budget | page | INT4 tier (key : value) | bytes per INT4 token at head dim 64 (codes + key params + value row + positions) |
/// |------|--------|------|-------------------------|------------------------------------|
/// | `2x` | 0.5    | 32   | int4/channel : lm4      | 32 + 8 + 34 + 2.5 = 76.5 |
/// | `4x` | 0.25   | 64   | int4/channel : lm3      | 32 + 4 + 26 + 2.25 = 64.25 |
/// | `6x` | 1/6    | 64   | int4/channel : lm3      | 64.25 |
/// | `8x` | 0.125  | 64   | int4/channel : lm3      | 64.25 |
///
/// The formats and page sizes were chosen on one text (`heapq-2048.txt`, SmolLM2-135M, prompt
/// 1536 + 512) from `kvcrush formats` and `kvcrush run --formats`; the README reports them on
/// another (`pydoc-topics-12k.txt`).
///
/// **Calibrated presets** (`calibrated(with:expectedTokenCount:)`): the INT4 tier's formats are
/// chosen per layer from a model's `SensitivityProfile` (`kvcrush calibrate`) instead, and each
/// layer's budget scaled by what its formats cost; the name becomes `4x+cal`.
public struct CompressionPreset: Sendable, Hashable, CustomStringConvertible {
    /// The preset's name (`2x`, `4x`, `6x`, `8x`).
    public let name: String
    /// Bytes each stream may keep, as a fraction of its FP16 bytes.
    public let budget: Double
    /// Token slots per page of the store.
    public let pageCapacity: Int
    /// The INT4 tier's key and value formats (the other tiers keep `TierFormats.standard`).
    public let int4Key: StorageFormat, int4Value: StorageFormat
    /// During decode, new tokens between two plans of a layer.
    public let decodeReplanInterval: Int
    /// The tier sinks, recent window and the plain plan's top share are kept at (`StreamRegions.tier`):
    /// `.fp16`, or `.int8` (per-token INT8 rows in pages of 16, with FP16 pages of 16 for the decode
    /// headroom, so neither small tier leaves a large page's slack).
    public private(set) var protectedTier: Tier
    /// Per-layer INT4 formats and budget factors from a model's `SensitivityProfile`
    /// (`calibrated(with:expectedTokenCount:)`), or `nil` for the same formats in every layer.
    public private(set) var allocation: SensitivityProfile.Allocation?
    /// The rotation the profile was measured with (used with `allocation`).
    public private(set) var calibratedRotation: RotationSettings?

    /// The name, with `+cal` when calibrated: `4x`, `4x+cal`.
    public var description: String { allocation == nil ? name : name + "+cal" }

    init(name: String, budget: Double, pageCapacity: Int, int4Key: StorageFormat, int4Value: StorageFormat, decodeReplanInterval: Int,
         protectedTier: Tier) {
        self.name = name
        self.budget = budget
        self.pageCapacity = pageCapacity
        self.int4Key = int4Key
        self.int4Value = int4Value
        self.decodeReplanInterval = decodeReplanInterval
        self.protectedTier = protectedTier
    }

    /// This preset with its protected regions at `tier` (`.fp16` or `.int8`).
    public func protecting(at tier: Tier) -> CompressionPreset {
        precondition(tier == .fp16 || tier == .int8, "CompressionPreset.protecting: the protected tier must be fp16 or int8, got \(tier)")
        precondition(allocation == nil, "CompressionPreset.protecting: choose the protected tier before calibrating")
        var p = self
        p.protectedTier = tier
        return p
    }

    /// This preset with its INT4 tier's key and value formats chosen per layer from `profile`
    /// (`SensitivityProfile.allocation` at the preset's budget and page capacity, the plain plan's
    /// FP16 share for streams of `expectedTokenCount` tokens, the decode headroom included) and each
    /// layer's budget scaled by what its formats cost, so the sequence's total stays the budget.
    ///
    /// When the budget can keep every middle token in the profile's cheapest formats, the formats
    /// spend it all (nothing planned to drop); when it cannot (6x and 8x on SmolLM2), the layers
    /// share the preset's own formats' mean cost per token instead (the sensitive ones finer) and
    /// the planner drops as much as the uncalibrated preset does: measured, keeping the cheapest
    /// formats everywhere and dropping less was worse.
    ///
    /// - Precondition: `profile` is valid.
    public func calibrated(with profile: SensitivityProfile, expectedTokenCount: Int) -> CompressionPreset {
        var p = self
        let base = tierFormats(TierFormats.standard), regions = StreamRegions(tier: protectedTier)
        var a = profile.allocation(budget: budget, base: base, pageCapacity: pageCapacity, regions: regions,
                                   headroomTokenCount: decodeReplanInterval, expectedTokenCount: expectedTokenCount)
        if a.targetTokenByteCount < Double(profile.cheapestTokenByteCount(pageCapacity: pageCapacity)) {
            let own = profile.tokenByteCount(key: int4Key, value: int4Value, pageCapacity: pageCapacity)
            a = profile.allocation(budget: budget, base: base, pageCapacity: pageCapacity, regions: regions,
                                   headroomTokenCount: decodeReplanInterval, expectedTokenCount: expectedTokenCount,
                                   targetTokenByteCount: Double(own))
        }
        p.allocation = a
        p.calibratedRotation = profile.rotation()
        return p
    }

    /// This preset on a store holding only some of the model's layers (`layers`: their model
    /// indices, e.g. a KV dump's `[1, 15, 29]`, in store order): a calibrated preset keeps those
    /// layers' formats and budget factors, so each store layer gets what it would have in the
    /// whole model (their mean need not be 1, so the subset's bytes need not be the preset's
    /// budget). An uncalibrated preset is returned unchanged.
    ///
    /// - Precondition: every index is a layer of the allocation.
    public func restricted(toLayers layers: [Int]) -> CompressionPreset {
        guard let a = allocation else { return self }
        precondition(layers.allSatisfy { a.keyFormats.indices.contains($0) },
                     "CompressionPreset.restricted: layers \(layers) outside the \(a.keyFormats.count) calibrated layers")
        var p = self
        var r = a
        r.keyFormats = layers.map { a.keyFormats[$0] }
        r.valueFormats = layers.map { a.valueFormats[$0] }
        r.keptShares = layers.map { a.keptShares[$0] }
        r.budgetScales = layers.map { a.budgetScales[$0] }
        p.allocation = r
        return p
    }

    /// The presets, least compression first.
    public static let all: [CompressionPreset] = [
        CompressionPreset(name: "2x", budget: 0.5, pageCapacity: 32, int4Key: .channelwise(.int4), int4Value: .lloydMax(.int4),
                          decodeReplanInterval: 16, protectedTier: .int8),
        CompressionPreset(name: "4x", budget: 0.25, pageCapacity: 64, int4Key: .channelwise(.int4), int4Value: .lloydMax(.int3),
                          decodeReplanInterval: 16, protectedTier: .int8),
        CompressionPreset(name: "6x", budget: 1.0 / 6, pageCapacity: 64, int4Key: .channelwise(.int4), int4Value: .lloydMax(.int3),
                          decodeReplanInterval: 16, protectedTier: .int8),
        CompressionPreset(name: "8x", budget: 0.125, pageCapacity: 64, int4Key: .channelwise(.int4), int4Value: .lloydMax(.int3),
                          decodeReplanInterval: 16, protectedTier: .int8),
    ]

    /// The preset called `name` (with or without a `preset:` prefix), or `nil`.
    public static func named(_ name: String) -> CompressionPreset? {
        let bare = name.hasPrefix("preset:") ? String(name.dropFirst("preset:".count)) : name
        return all.first { $0.name == bare }
    }

    /// `configuration` with the preset's page capacity, INT4 tier formats and value rotation (its
    /// other settings, shape and byte limit included, unchanged).
    public func configure(_ configuration: KVStoreConfiguration) -> KVStoreConfiguration {
        var c = configuration
        c.pageCapacity = pageCapacity
        c.tierFormats = tierFormats(c.tierFormats)
        c.rotation = RotationSettings(keys: .none, values: .all, seed: c.rotation.seed)
        if let allocation, let r = calibratedRotation {
            c.layerTierFormats = allocation.layerTierFormats(base: c.tierFormats)
            c.rotation = RotationSettings(keys: r.keys, values: r.values, seed: c.rotation.seed)
        }
        return c
    }

    /// `base` with the preset's INT4 tier formats and, when the protected tier is INT8, its INT8 tier.
    func tierFormats(_ base: TierFormats) -> TierFormats {
        var f = base
        f.keys[.int4] = int4Key
        f.values[.int4] = int4Value
        if protectedTier == .int8 {
            // Per-token rows (the recent window moves every re-plan) in small pages: the INT8 tier
            // holds the ~36 protected tokens and the top 2% of a stream, FP16 only the decode
            // headroom, so pages of the INT4 tier's size would leave most of their slots as slack.
            f.keys[.int8] = .int8
            f.values[.int8] = .int8
            f.pageCapacities[.int8] = 16
            f.pageCapacities[.fp16] = 16
        }
        return f
    }

    /// The policy: the plain plan at `budget`, named `preset:NAME`; `regions` sizes the sinks and
    /// window (their tier is the preset's `protectedTier`).
    public func policy(regions: StreamRegions = StreamRegions()) -> CachePolicy {
        let plain: PolicyName
        do { plain = try PolicyName(parsing: "plain") } catch { preconditionFailure("CompressionPreset: \(error)") }
        var r = regions
        r.tier = protectedTier
        var p = plain.cachePolicy(budget: budget, regions: r)
        guard case .compress(var s) = p.action else { preconditionFailure("CompressionPreset: plain compresses") }
        s.decodeReplanInterval = decodeReplanInterval
        s.layerBudgetScales = allocation?.budgetScales
        p.action = .compress(s)
        p.name = "preset:\(self)"
        return p
    }
}
