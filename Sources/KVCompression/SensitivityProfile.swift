import Foundation
import KVQuantization
import KVSelection

/// What moving one layer's keys (or values) from FP16 to a format costs the model, measured end to
/// end (`kvcrush calibrate`, `SensitivityCalibration`), and the per-layer formats and budgets that
/// spend a byte budget where those measurements say it buys the most (KVTuner-style, arXiv
/// 2502.04420).
///
/// A measurement is the mean KL divergence (nats) of the model's next-token distributions, over a
/// teacher-forced continuation, between the FP16 cache and the cache whose layer `l` keeps its
/// middle tokens' keys (values unchanged) in format `f`, every other layer at FP16; and, for
/// dropping, the KLD when layer `l` keeps only the best-scored share `s` of its middle tokens (SnapKV
/// scores from the prompt's last queries, as the plain plan ranks them), at FP16. `allocation`
/// assumes these costs add up across layers, between keys and values, and between formats and
/// dropping (true to first order for small perturbations; `kvcrush run` measures the combination).
///
/// JSON form (what `kvcrush calibrate` writes and `run`, `eval` and the library read):
///
///     {"version": 1, "model": "…", "text": "…", "promptTokenCount": 1024, "continuationTokenCount": 128,
///      "layerCount": 30, "headDim": 64, "pageCapacity": 64, "rotatesKeys": false, "rotatesValues": true,
///      "keys": [{"format": "int4/channel", "kld": [… one per layer …]}, …],
///      "values": [{"format": "lm3", "kld": […]}, …],
///      "drops": [{"keptShare": 0.5, "kld": […]}, …],                     ("drops" may be absent)
///      "keyChannels": {"pageCapacity": 64, "queryEnergy": [[[…]]], "rangeRMS": [[[…]]], …}}  (may be absent)
///
/// A key candidate named `mixB/channel` (`mix4/channel`, `mix3.5/channel`) is the mixed-width
/// per-channel format at B bits per element whose widths each layer allocates from `keyChannels`
/// (`keyFormat(named:layer:)`).
public struct SensitivityProfile: Sendable, Hashable, Codable {
    /// One candidate format's measured cost in every layer.
    public struct Entry: Sendable, Hashable, Codable {
        /// The format's name (`StorageFormat(name:)`: `int4/channel`, `lm3`, …).
        public var format: String
        /// Per layer, the mean KLD when that layer alone stores its keys (or values) so.
        public var kld: [Double]

        public init(format: String, kld: [Double]) {
            self.format = format
            self.kld = kld
        }
    }

    /// One kept share's measured cost of dropping the rest of a layer's middle tokens.
    public struct Drop: Sendable, Hashable, Codable {
        /// The share of the middle tokens kept (0 < share < 1).
        public var keptShare: Double
        /// Per layer, the mean KLD when that layer alone keeps only that share.
        public var kld: [Double]

        public init(keptShare: Double, kld: [Double]) {
            self.keptShare = keptShare
            self.kld = kld
        }
    }

    /// The JSON layout's version.
    public var version = 1
    /// The model's file name and the calibration text's (provenance only).
    public var model: String, text: String
    /// Tokens of the prompt (prefilled at FP16) and of the scored continuation.
    public var promptTokenCount: Int, continuationTokenCount: Int
    /// The model's layers and head dim.
    public var layerCount: Int, headDim: Int
    /// The store's page capacity during calibration (per-channel key parameters are per page).
    public var pageCapacity: Int
    /// Whether the quantised keys (values) were rotated (`RotationSettings`); an allocation keeps
    /// the same.
    public var rotatesKeys: Bool, rotatesValues: Bool
    /// Candidate key formats and value formats with their measurements.
    public var keys: [Entry], values: [Entry]
    /// Kept shares with their measurements (empty: allocations never plan to drop).
    public var drops: [Drop]
    /// The keys' channel statistics on the calibration text, from which `mixB/channel` candidates
    /// take their widths (nil: no mixed candidates).
    public var keyChannels: KeyChannelStatistics?

    public init(model: String, text: String, promptTokenCount: Int, continuationTokenCount: Int, layerCount: Int, headDim: Int,
                pageCapacity: Int, rotatesKeys: Bool, rotatesValues: Bool, keys: [Entry], values: [Entry], drops: [Drop] = [],
                keyChannels: KeyChannelStatistics? = nil) {
        self.model = model
        self.text = text
        self.promptTokenCount = promptTokenCount
        self.continuationTokenCount = continuationTokenCount
        self.layerCount = layerCount
        self.headDim = headDim
        self.pageCapacity = pageCapacity
        self.rotatesKeys = rotatesKeys
        self.rotatesValues = rotatesValues
        self.keys = keys
        self.values = values
        self.drops = drops
        self.keyChannels = keyChannels
    }

    enum CodingKeys: String, CodingKey {
        case version, model, text, promptTokenCount, continuationTokenCount, layerCount, headDim, pageCapacity, rotatesKeys, rotatesValues
        case keys, values, drops, keyChannels
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        version = try c.decode(Int.self, forKey: .version)
        model = try c.decode(String.self, forKey: .model)
        text = try c.decode(String.self, forKey: .text)
        promptTokenCount = try c.decode(Int.self, forKey: .promptTokenCount)
        continuationTokenCount = try c.decode(Int.self, forKey: .continuationTokenCount)
        layerCount = try c.decode(Int.self, forKey: .layerCount)
        headDim = try c.decode(Int.self, forKey: .headDim)
        pageCapacity = try c.decode(Int.self, forKey: .pageCapacity)
        rotatesKeys = try c.decode(Bool.self, forKey: .rotatesKeys)
        rotatesValues = try c.decode(Bool.self, forKey: .rotatesValues)
        keys = try c.decode([Entry].self, forKey: .keys)
        values = try c.decode([Entry].self, forKey: .values)
        drops = try c.decodeIfPresent([Drop].self, forKey: .drops) ?? []
        keyChannels = try c.decodeIfPresent(KeyChannelStatistics.self, forKey: .keyChannels)
    }

    /// The format key candidate `name` stands for in `layer`: `StorageFormat(name:)`, or for
    /// `mixB/channel` the mixed widths `keyChannels` allocates to the layer at B bits (nil without
    /// `keyChannels` or for a bit count that is not a whole number of bytes per row).
    public func keyFormat(named name: String, layer: Int) -> StorageFormat? {
        if let b = KeyChannelStatistics.mixedBits(named: name) {
            return keyChannels?.widths(layer: layer, averageBits: b).map { .mixedChannelwise($0) }
        }
        return StorageFormat(name: name)
    }

    /// Checks what a file could get wrong: the version, positive shape fields, at least one key and
    /// one value candidate, format names that parse and suit their role and head dim, one finite,
    /// non-negative measurement per layer.
    public func validate() throws(SensitivityProfileError) {
        guard version == 1 else { throw .invalid("version must be 1, got \(version)") }
        guard layerCount > 0, layerCount <= 65536 else { throw .invalid("layerCount must be in 1...65536, got \(layerCount)") }
        guard headDim > 0, headDim <= 4096 else { throw .invalid("headDim must be in 1...4096, got \(headDim)") }
        guard pageCapacity > 0, pageCapacity <= 65536 else { throw .invalid("pageCapacity must be in 1...65536, got \(pageCapacity)") }
        guard promptTokenCount > 0, continuationTokenCount > 0 else { throw .invalid("token counts must be positive") }
        if let k = keyChannels, let why = k.problem(layerCount: layerCount, headDim: headDim) { throw .invalid("keyChannels: \(why)") }
        for (role, entries) in [("keys", keys), ("values", values)] {
            guard !entries.isEmpty else { throw .invalid("\(role) has no candidate formats") }
            var seen = Set<String>()
            for e in entries {
                let parsed = role == "keys" ? keyFormat(named: e.format, layer: 0) : StorageFormat(name: e.format)
                guard let f = parsed else {
                    if KeyChannelStatistics.mixedBits(named: e.format) != nil {
                        throw .invalid("\(role): \(e.format) needs keyChannels and a whole number of code bytes per row")
                    }
                    throw .invalid("\(role): unknown format '\(e.format)'")
                }
                guard f != .fp16 else { throw .invalid("\(role): fp16 is not a candidate (it is the reference)") }
                do { try f.validate(headDim: headDim) } catch { throw .invalid("\(role): \(e.format): \(error)") }
                guard role == "keys" || !f.isPageWise else { throw .invalid("values: \(e.format) is per channel (keys only)") }
                guard seen.insert(f.description).inserted else { throw .invalid("\(role): \(e.format) appears twice") }
                guard e.kld.count == layerCount else {
                    throw .invalid("\(role): \(e.format) has \(e.kld.count) measurements for \(layerCount) layers")
                }
                if let bad = e.kld.first(where: { !($0.isFinite && $0 >= 0) }) {
                    throw .invalid("\(role): \(e.format) has a measurement that is not finite and non-negative (\(bad))")
                }
            }
        }
        try validateDrops()
    }

    private func validateDrops() throws(SensitivityProfileError) {
        var seen = Set<Double>()
        for d in drops {
            guard d.keptShare.isFinite, d.keptShare > 0, d.keptShare < 1 else { throw .invalid("drops: keptShare must be in (0, 1), got \(d.keptShare)") }
            guard seen.insert(d.keptShare).inserted else { throw .invalid("drops: keptShare \(d.keptShare) appears twice") }
            guard d.kld.count == layerCount else { throw .invalid("drops: share \(d.keptShare) has \(d.kld.count) measurements for \(layerCount) layers") }
            if let bad = d.kld.first(where: { !($0.isFinite && $0 >= 0) }) {
                throw .invalid("drops: share \(d.keptShare) has a measurement that is not finite and non-negative (\(bad))")
            }
        }
    }

    /// The profile in a JSON file.
    ///
    /// - Throws: `SensitivityProfileError` (unreadable, not JSON of this layout, or invalid).
    public init(contentsOf url: URL) throws(SensitivityProfileError) {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw .unreadable(url.path, "\(error.localizedDescription)") }
        try self.init(json: data)
    }

    /// The profile in JSON `data`.
    ///
    /// - Throws: `SensitivityProfileError`.
    public init(json data: Data) throws(SensitivityProfileError) {
        do { self = try JSONDecoder().decode(SensitivityProfile.self, from: data) } catch {
            throw .invalid("not a sensitivity profile: \(error)")
        }
        try validate()
    }

    /// The profile as pretty-printed JSON.
    public func json() -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        do { return try e.encode(self) } catch { preconditionFailure("SensitivityProfile.json: \(error)") }
    }

    /// Per-layer formats, kept shares and budget factors for one budget.
    public struct Allocation: Sendable, Hashable {
        /// Per layer, the INT4 tier's key and value formats.
        public var keyFormats: [StorageFormat], valueFormats: [StorageFormat]
        /// Per layer, the share of its middle tokens the allocation plans to keep (1, or one of the
        /// profile's measured `drops`); the plain plan realises it through the layer's budget.
        public var keptShares: [Double]
        /// Per layer, the factor on the sequence's budget (`CompressionSettings.layerBudgetScales`):
        /// proportional to what the layer's kept tokens cost, mean 1.
        public var budgetScales: [Double]
        /// Σ of the chosen options' measured KLDs (the additive prediction).
        public var predictedKLD: Double
        /// Mean bytes per middle token over the layers (kept share × `TierCosts.byteCount(.int4)`),
        /// and the target it was chosen under.
        public var meanTokenByteCount: Double, targetTokenByteCount: Double

        /// `base` per layer with the INT4 tier's formats replaced.
        public func layerTierFormats(base: TierFormats) -> [TierFormats] {
            zip(keyFormats, valueFormats).map { k, v in
                var f = base
                f.keys[.int4] = k
                f.values[.int4] = v
                return f
            }
        }
    }

    /// What one layer may do: keep `keptShare` of its middle tokens with these INT4 formats.
    struct Option {
        var key: Int, value: Int, drop: Int?
        var keptShare: Double
        /// Bytes per middle token (kept share × the INT4 token's cost, rounded up).
        var cost: Int
    }

    /// Every (key, value, kept share) option, costed with `base`'s other tiers and `pageCapacity`.
    func options(base: TierFormats, pageCapacity: Int) -> [Option] {
        var out = [Option]()
        let shares: [(Int?, Double)] = [(nil, 1)] + drops.enumerated().map { ($0.offset, $0.element.keptShare) }
        for ki in keys.indices {
            for vi in values.indices {
                // Every layer's mixed widths take the same bytes: layer 0's stand for all.
                let cost = tokenByteCount(key: keyFormat(named: keys[ki].format, layer: 0)!, value: StorageFormat(name: values[vi].format)!,
                                          base: base, pageCapacity: pageCapacity)
                for (di, share) in shares {
                    out.append(Option(key: ki, value: vi, drop: di, keptShare: share, cost: Int((share * Double(cost)).rounded(.up))))
                }
            }
        }
        return out
    }

    /// The cost per INT4 token of `key` and `value` formats (`TierCosts.byteCount(.int4)` of `base`
    /// with them, without its ladder check).
    public func tokenByteCount(key: StorageFormat, value: StorageFormat, base: TierFormats = .standard, pageCapacity: Int) -> Int {
        var f = base
        f.keys[.int4] = key
        f.values[.int4] = value
        let p = f.pageCapacity(.int4, default: pageCapacity)
        return f.tokenByteCount(.int4, headDim: headDim) + (f.pageOverheadByteCount(.int4, headDim: headDim, pageCapacity: p) + p - 1) / p
    }

    /// The cost per INT4 token of the profile's cheapest (key, value) candidates.
    public func cheapestTokenByteCount(base: TierFormats = .standard, pageCapacity: Int) -> Int {
        options(base: base, pageCapacity: pageCapacity).filter { $0.drop == nil }.map(\.cost).min()!
    }

    /// The measured KLD of `o` in `layer` (formats plus dropping, added).
    func kld(_ o: Option, layer l: Int) -> Double {
        keys[o.key].kld[l] + values[o.value].kld[l] + (o.drop.map { drops[$0].kld[l] } ?? 0)
    }

    /// The per-layer INT4 (key, value) formats and kept shares that minimise the summed measured KLD
    /// while the mean cost per middle token fits the budget, exactly (a multiple-choice knapsack
    /// solved by dynamic programming over whole bytes).
    ///
    /// The middle tokens' share of the budget: a stream of `n = expectedTokenCount` tokens keeps
    /// `h·n` tokens outside the allocated formats (the decode headroom at FP16; sinks, recent window
    /// and `topShare` of the middle, the plain plan's, at `regions.tier`), costing `f` bytes per
    /// stream token together, so the rest may cost on average `q = (budget·F − f) / (1 − h)` bytes
    /// per token, F the FP16 token's cost (`q = (budget − h)·F / (1 − h)` when all of them are FP16); an option keeping a
    /// share `s` with formats costing `c` per INT4 token costs `⌈s·c⌉`. If even the cheapest option
    /// exceeds `q`, every layer gets it (the planner then drops the lowest-scored tokens).
    ///
    /// - Parameters:
    ///   - budget: the fraction of FP16 bytes (0 < budget).
    ///   - base: the other tiers' formats (and page capacities).
    ///   - pageCapacity: the store's default page capacity.
    ///   - regions, headroomTokenCount, topShare, expectedTokenCount: what fixes `h` (above).
    ///   - usingDrops: whether options may keep a measured share below 1 (default false: on SmolLM2
    ///     the drop costs a short calibration continuation measures proved too optimistic for long
    ///     decodes; see the README).
    ///   - targetTokenByteCount: spend this many bytes per middle token on average instead of `q`
    ///     (e.g. the uniform formats' cost, when `q` is below every option and the planner will drop).
    /// - Complexity: O(L · O · L · F) time for O options per layer (|keys| · |values| · (1 + |drops|)),
    ///   O(L · L · F) memory: small, L·F is a few thousand for every model this targets.
    /// - Precondition: the profile is valid and `budget` is finite and positive.
    public func allocation(budget: Double, base: TierFormats = .standard, pageCapacity: Int, regions: StreamRegions = StreamRegions(),
                           headroomTokenCount: Int = 0, topShare: Double = 0.02, expectedTokenCount: Int = 2048,
                           usingDrops: Bool = false, targetTokenByteCount: Double? = nil) -> Allocation {
        precondition(budget.isFinite && budget > 0, "SensitivityProfile.allocation: budget must be finite and positive")
        precondition(targetTokenByteCount.map { $0.isFinite && $0 >= 0 } ?? true, "SensitivityProfile.allocation: bad target")
        do { try validate() } catch { preconditionFailure("SensitivityProfile.allocation: \(error)") }
        let options = options(base: base, pageCapacity: pageCapacity).filter { usingDrops || $0.drop == nil }
        let costs = TierCosts(formats: base, headDim: headDim, pageCapacity: pageCapacity)
        let fp16Cost = Double(costs.byteCount(.fp16)), protectedCost = Double(costs.byteCount(regions.tier))
        let n = Double(max(expectedTokenCount, 1))
        // Per token of the stream: the headroom's FP16 slots, the sinks, window and top share at the
        // protected tier (`regions.tier`), the rest (share 1 − h) at the allocated formats.
        let headroom = Double(min(headroomTokenCount, expectedTokenCount))
        let regionCount = min(Double(regions.sinkTokenCount + regions.recentTokenCount), max(0, n - headroom))
        let topCount = topShare * max(0, n - headroom - regionCount)
        let h = min(1, (headroom + regionCount + topCount) / n)
        let fixed = (headroom * fp16Cost + (regionCount + topCount) * protectedCost) / n
        let target = targetTokenByteCount ?? (h >= 1 ? 0 : max(0, budget * fp16Cost - fixed) / (1 - h))
        let L = layerCount
        let capacity = Int((target * Double(L)).rounded(.down))
        let minCost = options.map(\.cost).min()!
        var chosen = [Int](repeating: 0, count: L)
        if capacity >= minCost * L {
            // best[b]: the least Σ KLD of the layers so far costing exactly b bytes (per token, summed);
            // choice[l][b]: the option layer l took to get there.
            let inf = Double.infinity
            var best = [Double](repeating: inf, count: capacity + 1)
            best[0] = 0
            var choice = [[Int32]]()
            choice.reserveCapacity(L)
            for l in 0..<L {
                var next = [Double](repeating: inf, count: capacity + 1)
                var pick = [Int32](repeating: -1, count: capacity + 1)
                let klds = options.map { kld($0, layer: l) }
                for b in 0...capacity where best[b] < inf {
                    for (oi, o) in options.enumerated() where b + o.cost <= capacity {
                        let k = best[b] + klds[oi]
                        if k < next[b + o.cost] {
                            next[b + o.cost] = k
                            pick[b + o.cost] = Int32(oi)
                        }
                    }
                }
                choice.append(pick)
                best = next
            }
            var b = best.indices.min { best[$0] < best[$1] }!
            for l in stride(from: L - 1, through: 0, by: -1) {
                chosen[l] = Int(choice[l][b])
                b -= options[chosen[l]].cost
            }
        } else {
            // Not even the cheapest option fits: the cheapest everywhere, the least KLD among equals.
            let cheapest = options.indices.filter { options[$0].cost == minCost }
            for l in 0..<L { chosen[l] = cheapest.min { kld(options[$0], layer: l) < kld(options[$1], layer: l) }! }
        }
        let picked = chosen.map { options[$0] }
        let layerCosts = picked.map { fixed + (1 - h) * Double($0.cost) }
        let mean = layerCosts.reduce(0, +) / Double(L)
        return Allocation(keyFormats: picked.enumerated().map { keyFormat(named: keys[$1.key].format, layer: $0)! },
                          valueFormats: picked.map { StorageFormat(name: values[$0.value].format)! },
                          keptShares: picked.map(\.keptShare), budgetScales: layerCosts.map { $0 / mean },
                          predictedKLD: (0..<L).reduce(0) { $0 + kld(picked[$1], layer: $1) },
                          meanTokenByteCount: Double(picked.reduce(0) { $0 + $1.cost }) / Double(L), targetTokenByteCount: target)
    }

    /// The rotation an allocation's store keeps (what calibration measured).
    public func rotation(seed: UInt64 = 0) -> RotationSettings {
        RotationSettings(keys: rotatesKeys ? .all : .none, values: rotatesValues ? .all : .none, seed: seed)
    }
}

/// Why a sensitivity profile could not be read.
public enum SensitivityProfileError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The file could not be read.
    case unreadable(String, String)
    /// The contents are not a valid profile (the reason).
    case invalid(String)

    public var description: String {
        switch self {
        case .unreadable(let path, let why): "cannot read sensitivity profile \(path): \(why)"
        case .invalid(let why): "invalid sensitivity profile: \(why)"
        }
    }
}
