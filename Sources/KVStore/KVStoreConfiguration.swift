import KVQuantization

/// The shape of a model's cache and how the store keeps it.
///
/// Grouped-query attention: query head `h` reads KV head `h / (queryHeadCount / kvHeadCount)`;
/// multi-head attention (`kvHeadCount == queryHeadCount`) and multi-query attention
/// (`kvHeadCount == 1`) are the edge cases.
public struct KVStoreConfiguration: Sendable, Hashable {
    /// Transformer layers.
    public var layerCount: Int
    /// Attention (query) heads per layer.
    public var queryHeadCount: Int
    /// KV heads per layer; must divide `queryHeadCount`.
    public var kvHeadCount: Int
    /// Elements of one head vector.
    public var headDim: Int
    /// Token slots per page of every tier whose formats name no page capacity
    /// (`TierFormats.pageCapacities`).
    public var pageCapacity: Int
    /// Storage format of each tier, keys and values separately, and optionally each tier's page
    /// capacity: of every layer, unless `layerTierFormats` gives the layer its own. `.fp16` must be
    /// FP16; keys of any other tier may be `.channelwise` (values may not: they are never scored in
    /// code space across tokens).
    public var tierFormats: TierFormats
    /// Per layer (`layerCount` of them), that layer's tier formats (e.g. (K, V) formats calibrated per
    /// layer, KVTuner style), or `nil` for `tierFormats` in every layer. Each follows the rules of
    /// `tierFormats`.
    public var layerTierFormats: [TierFormats]?
    /// Upper bound on the bytes of all pages in use, or `nil` for no limit. The page pool also keeps
    /// its footprint (its slabs, with the free slots it holds for streams to grow into) within this
    /// limit (pages rounded to 64 bytes) plus at most 20 MiB per page layout: past the limit,
    /// streams share blocks rather than reserve more (`PagePool`'s reservation limit).
    public var byteLimit: Int?
    /// Scale applied to query·key scores; `nil` means 1/√headDim.
    public var attentionScale: Float?
    /// Which layers keep their quantised tiers' keys or values rotated (default: none). Only
    /// power-of-two head dims rotate (`isRotationSupported`); `rotatesKeys(layer:)` and
    /// `rotatesValues(layer:)` say what the store does.
    public var rotation: RotationSettings
    /// Per layer (`layerCount` of them), that layer's sliding attention window W, or `nil` for full
    /// causal attention; `nil` for no window in any layer (the default).
    ///
    /// A query at position p of a windowed layer sees only the keys at positions p − W + 1 … p (W
    /// keys, itself included: llama.cpp's and Hugging Face's sliding window, e.g. Gemma 3's local
    /// layers with W = 512), and the store *evicts* what no later query can see: before an append
    /// whose first position is f, every page whose tokens all lie at or before f − W is released
    /// (`KVStore.append`). So a windowed layer's streams stay bounded however long the sequence.
    public var layerSlidingWindows: [Int?]?

    public init(layerCount: Int, queryHeadCount: Int, kvHeadCount: Int, headDim: Int, pageCapacity: Int = 32,
                tierFormats: TierFormats = .standard, layerTierFormats: [TierFormats]? = nil, byteLimit: Int? = nil,
                attentionScale: Float? = nil, rotation: RotationSettings = .none, layerSlidingWindows: [Int?]? = nil) {
        self.layerCount = layerCount
        self.queryHeadCount = queryHeadCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim
        self.pageCapacity = pageCapacity
        self.tierFormats = tierFormats
        self.layerTierFormats = layerTierFormats
        self.byteLimit = byteLimit
        self.attentionScale = attentionScale
        self.rotation = rotation
        self.layerSlidingWindows = layerSlidingWindows
    }

    /// The sliding window of `layer` (`layerSlidingWindows[layer]`), `nil` for full causal attention.
    public func slidingWindow(layer: Int) -> Int? {
        guard let windows = layerSlidingWindows else { return nil }
        precondition(0 <= layer && layer < windows.count, "KVStoreConfiguration.slidingWindow: layer \(layer) outside 0..<\(windows.count)")
        return windows[layer]
    }

    /// The tier formats of `layer`: `layerTierFormats[layer]`, else `tierFormats`. (Planners cost a
    /// layer's tokens with these: `TierCosts(formats: tierFormats(layer: l), headDim:, pageCapacity:)`.)
    public func tierFormats(layer: Int) -> TierFormats {
        guard let perLayer = layerTierFormats else { return tierFormats }
        precondition(0 <= layer && layer < perLayer.count, "KVStoreConfiguration.tierFormats: layer \(layer) outside 0..<\(perLayer.count)")
        return perLayer[layer]
    }

    /// Token slots per page of `tier` in `layer`.
    public func pageCapacity(_ tier: Tier, layer: Int) -> Int {
        tierFormats(layer: layer).pageCapacity(tier, default: pageCapacity)
    }

    /// The largest page capacity of any stored tier of `layer`.
    public func maxPageCapacity(layer: Int) -> Int {
        Tier.stored.map { pageCapacity($0, layer: layer) }.max()!
    }
    /// Whether this head dim has a rotation (a power of two): if not, `rotation` is ignored and every
    /// tier stays unrotated.
    public var isRotationSupported: Bool { HadamardRotation.isSupported(dimension: headDim) }

    /// Whether the quantised tiers of `layer` keep rotated keys: asked for in `rotation` and supported.
    public func rotatesKeys(layer: Int) -> Bool { isRotationSupported && rotation.keys.contains(layer) }

    /// Whether the quantised tiers of `layer` keep rotated values: asked for in `rotation` and supported.
    public func rotatesValues(layer: Int) -> Bool { isRotationSupported && rotation.values.contains(layer) }

    /// Query heads sharing one KV head.
    public var groupSize: Int { queryHeadCount / kvHeadCount }

    /// The scale applied to scores.
    public var effectiveAttentionScale: Float { attentionScale ?? 1 / Float(headDim).squareRoot() }

    /// The largest L1 norm a query row may have: stored keys are at most 65504 in magnitude, so
    /// |scale · q·k| ≤ scale · ‖q‖₁ · √d · 65504 in every tier (a rotation keeps ‖q‖₂, and
    /// ‖Rq‖₁ ≤ √d‖q‖₂ ≤ √d‖q‖₁), and below this norm that stays under a quarter of
    /// `Float.greatestFiniteMagnitude` (room for reordered sums): no score overflows FP32. `attend`
    /// traps on larger or non-finite queries; the C ABI refuses them with a status.
    public var maximumQueryL1Norm: Double {
        Double(Float.greatestFiniteMagnitude) / 4 / (Double(effectiveAttentionScale) * Double(headDim).squareRoot() * 65504)
    }

    /// Checks every field.
    ///
    /// - Throws: `KVStoreConfigurationError` naming the first invalid field.
    public func validate() throws(KVStoreConfigurationError) {
        func bad(_ field: String, _ rule: String) -> KVStoreConfigurationError { .invalidField(field, rule) }
        // Upper bounds keep every product of shape fields (buffer sizes, stream counts) far from
        // overflow, whatever a configuration read from a file says.
        guard layerCount > 0, layerCount <= 65536 else { throw bad("layerCount", "must be in 1...65536, got \(layerCount)") }
        guard queryHeadCount > 0, queryHeadCount <= 65536 else {
            throw bad("queryHeadCount", "must be in 1...65536, got \(queryHeadCount)")
        }
        guard kvHeadCount > 0, queryHeadCount % kvHeadCount == 0 else {
            throw bad("kvHeadCount", "must be positive and divide queryHeadCount \(queryHeadCount), got \(kvHeadCount)")
        }
        guard headDim > 0, headDim <= 4096 else { throw bad("headDim", "must be in 1...4096, got \(headDim)") }
        guard pageCapacity > 0, pageCapacity <= 65536 else { throw bad("pageCapacity", "must be in 1...65536, got \(pageCapacity)") }
        if let limit = byteLimit, limit < 0 { throw bad("byteLimit", "must not be negative, got \(limit)") }
        if let s = attentionScale, !(s.isFinite && s > 0) { throw bad("attentionScale", "must be finite and positive, got \(s)") }
        try Self.validate(tierFormats, named: "tierFormats", headDim: headDim, kvHeadCount: kvHeadCount)
        if let perLayer = layerTierFormats {
            guard perLayer.count == layerCount else {
                throw bad("layerTierFormats", "must have one entry per layer (\(layerCount)), got \(perLayer.count)")
            }
            for (l, f) in perLayer.enumerated() { try Self.validate(f, named: "layerTierFormats[\(l)]", headDim: headDim, kvHeadCount: kvHeadCount) }
        }
        if let windows = layerSlidingWindows {
            guard windows.count == layerCount else {
                throw bad("layerSlidingWindows", "must have one entry per layer (\(layerCount)), got \(windows.count)")
            }
            if let l = windows.firstIndex(where: { $0.map { $0 < 1 || $0 > Int(Int32.max) } ?? false }) {
                throw bad("layerSlidingWindows[\(l)]", "must be in 1...2^31 - 1, got \(windows[l]!)")
            }
        }
        for (name, layers) in [("rotation.keys", rotation.keys), ("rotation.values", rotation.values)] {
            if case .only(let set) = layers, let bad = set.first(where: { !(0..<layerCount).contains($0) }) {
                throw KVStoreConfigurationError.invalidField(name, "names layer \(bad), outside 0..<\(layerCount)")
            }
        }
    }

    private static func validate(_ formats: TierFormats, named name: String, headDim: Int, kvHeadCount: Int) throws(KVStoreConfigurationError) {
        func bad(_ field: String, _ rule: String) -> KVStoreConfigurationError { .invalidField(field, rule) }
        for tier in Tier.stored {
            guard let k = formats.keys[tier] else { throw bad("\(name).keys[\(tier)]", "is missing") }
            guard let v = formats.values[tier] else { throw bad("\(name).values[\(tier)]", "is missing") }
            do { try k.validate(headDim: headDim) } catch { throw bad("\(name).keys[\(tier)]", error.description) }
            do { try v.validate(headDim: headDim) } catch { throw bad("\(name).values[\(tier)]", error.description) }
            if tier == .fp16, k != .fp16 || v != .fp16 {
                throw bad("\(name)[fp16]", "the FP16 tier must store keys and values as .fp16")
            }
            if v.isPageWise { throw bad("\(name).values[\(tier)]", "values cannot be channelwise") }
            if case .mixedChannelwise(let m) = k, m.kvHeadCount != kvHeadCount {
                throw bad("\(name).keys[\(tier)]", "\(k) has widths for \(m.kvHeadCount) KV heads, not \(kvHeadCount)")
            }
        }
        for (tier, p) in formats.pageCapacities.sorted(by: { $0.key < $1.key }) {
            guard tier != .dropped else { throw bad("\(name).pageCapacities[dropped]", "names a tier that stores nothing") }
            guard p > 0, p <= 65536 else { throw bad("\(name).pageCapacities[\(tier)]", "must be in 1...65536, got \(p)") }
        }
    }
}

