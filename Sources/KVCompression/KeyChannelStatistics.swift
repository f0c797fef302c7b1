import KVQuantization

/// What a model's keys look like channel by channel, measured over a text (`kvcrush calibrate`): per
/// layer, KV head and channel, the energy of the queries that read the channel and the typical range
/// of its keys over a page. Mixed-width per-channel keys (`StorageFormat.mixedChannelwise`) are
/// allocated from it: `widths(layer:averageBits:)`.
///
/// - `queryEnergy[l][h][c]`: E[q_c²] over the text's positions and the query heads of KV head h's group
///   (queries as attention reads them: after RoPE and any QK norm, before the 1/√d scale).
/// - `rangeRMS[l][h][c]`: the root mean square over the text's full pages of `pageCapacity` tokens
///   (after the first `skippedTokenCount` tokens, the attention sinks plans keep apart) of
///   max − min of the channel's keys within the page.
public struct KeyChannelStatistics: Sendable, Hashable, Codable {
    /// Tokens per page the ranges were measured over.
    public var pageCapacity: Int
    /// Leading tokens left out of the ranges.
    public var skippedTokenCount: Int
    /// Tokens of the text measured.
    public var tokenCount: Int
    /// `[layer][kvHead][channel]`.
    public var queryEnergy: [[[Double]]]
    /// `[layer][kvHead][channel]`.
    public var rangeRMS: [[[Double]]]

    public init(pageCapacity: Int, skippedTokenCount: Int, tokenCount: Int, queryEnergy: [[[Double]]], rangeRMS: [[[Double]]]) {
        self.pageCapacity = pageCapacity
        self.skippedTokenCount = skippedTokenCount
        self.tokenCount = tokenCount
        self.queryEnergy = queryEnergy
        self.rangeRMS = rangeRMS
    }

    /// A description of the first inconsistency for `layerCount` layers of `headDim` channels, or nil.
    public func problem(layerCount: Int, headDim: Int) -> String? {
        guard pageCapacity > 0, skippedTokenCount >= 0, tokenCount > 0 else { return "pageCapacity and tokenCount must be positive" }
        for (name, a) in [("queryEnergy", queryEnergy), ("rangeRMS", rangeRMS)] {
            guard a.count == layerCount else { return "\(name) has \(a.count) layers for \(layerCount)" }
            guard let heads = a.first?.count, heads > 0 else { return "\(name) has no KV heads" }
            for (l, layer) in a.enumerated() {
                guard layer.count == heads else { return "\(name)[\(l)] has \(layer.count) KV heads, layer 0 \(heads)" }
                for (h, v) in layer.enumerated() {
                    guard v.count == headDim else { return "\(name)[\(l)][\(h)] has \(v.count) channels for head dim \(headDim)" }
                    if let bad = v.first(where: { !($0.isFinite && $0 >= 0) }) { return "\(name)[\(l)][\(h)] holds \(bad), not finite and ≥ 0" }
                }
            }
        }
        guard queryEnergy[0].count == rangeRMS[0].count else { return "queryEnergy and rangeRMS disagree on the KV heads" }
        return nil
    }

    /// The mixed widths of `layer` at `averageBits` code bits per element (`ChannelWidths.allocate`
    /// with weights `queryEnergy` and ranges `rangeRMS`, widths 2, 3, 4 and 8, units of 8 channels
    /// where the head dim allows, else 1), or nil when `averageBits · headDim / 8` is not a whole
    /// number of bytes or is below 2 bits per element.
    ///
    /// - Complexity: O(kvHeads · (headDim/8)²).
    public func widths(layer: Int, averageBits: Double) -> ChannelWidths? {
        let d = queryEnergy[layer][0].count
        let bytes = averageBits * Double(d) / 8
        guard bytes == bytes.rounded(), averageBits >= 2, averageBits <= 8 else { return nil }
        return ChannelWidths.allocate(ranges: rangeRMS[layer], weights: queryEnergy[layer], rowByteCount: Int(bytes),
                                      granularity: d % 8 == 0 ? 8 : 1)
    }

    /// The average bits a format name `mixB/channel` asks for (`mix4/channel`, `mix3.5/channel`), or nil.
    public static func mixedBits(named name: String) -> Double? {
        guard name.hasPrefix("mix"), name.hasSuffix("/channel"),
              let b = Double(name.dropFirst(3).dropLast("/channel".count)), b.isFinite else { return nil }
        return b
    }
}
