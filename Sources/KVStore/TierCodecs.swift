import KVQuantization

/// Everything needed to read and write one tier's pages: their layouts, codecs and read kernels.
///
/// A tier whose key format is page-wise (`.channelwise`, `.mixedChannelwise`) keeps full pages sealed
/// (quantised per channel once all `capacity` tokens are known) and the rest in one *staging* page whose keys are
/// FP16 (KIVI's residual): the staging page is that tier's page slack.
///
/// The kernels the read path uses for the tier are chosen here, once, when the store is created
/// (`keyScoring`, `stagingKeyScoring`, `valueAccumulation`, from `KernelSet.current`, the formats
/// and the head dim); `StreamAttention` calls `scoreKeys` and `accumulateValues` and decides nothing.
struct TierCodecs: Sendable {
    let tier: Tier
    /// Layout of the tier's (sealed) pages.
    let layout: PageLayout
    /// Layout of the staging page (page-wise keys only): FP16 keys, the tier's value format.
    let stagingLayout: PageLayout?
    /// Key codec for row-wise key formats.
    let keyRows: RowCodec?
    /// Key codec for page-wise key formats of one width.
    let keyChannels: ChannelwiseKeyCodec?
    /// Key codec for mixed-width per-channel keys (this KV head's widths): process-lifetime codecs
    /// (`MixedChannelwiseKeyCodec.shared`) referenced without counting, so that `TierCodecs` stays a
    /// trivial value the read path copies for free.
    unowned(unsafe) let mixedKeys: MixedChannelwiseKeyCodec.Shared?
    let values: RowCodec
    let fp16: RowCodec
    /// How keys of the tier's (sealed) pages are scored.
    let keyScoring: KeyScoring
    /// How keys of FP16 rows are scored: a staging page's (page-wise key formats).
    let stagingKeyScoring: KeyScoring
    /// How the tier's value rows are accumulated.
    let valueAccumulation: ValueAccumulation

    /// The codecs of `tier` in `layer` for KV head `kvHead` (formats `c.tierFormats(layer:)`, page
    /// capacity `c.pageCapacity(tier, layer:)`; only mixed-width keys differ between heads). The
    /// configuration must be valid.
    init(tier: Tier, layer: Int, kvHead: Int, configuration c: KVStoreConfiguration) {
        let formats = c.tierFormats(layer: layer), capacity = c.pageCapacity(tier, layer: layer)
        let kf = formats.keyFormat(tier), vf = formats.valueFormat(tier)
        self.tier = tier
        keyScoring = KeyScoring(keyFormat: kf, headDim: c.headDim)
        stagingKeyScoring = KeyScoring(keyFormat: .fp16, headDim: c.headDim)
        valueAccumulation = ValueAccumulation(valueFormat: vf, headDim: c.headDim)
        layout = PageLayout(keyFormat: kf, valueFormat: vf, headDim: c.headDim, capacity: capacity)
        // The configuration was validated: these cannot fail.
        values = try! RowCodec(vf, headDim: c.headDim)
        fp16 = try! RowCodec(.fp16, headDim: c.headDim)
        keyChannels = if case .channelwise(let w) = kf { try! ChannelwiseKeyCodec(w, headDim: c.headDim) } else { nil }
        mixedKeys = if case .mixedChannelwise(let m) = kf { MixedChannelwiseKeyCodec.shared(m, kvHead: kvHead) } else { nil }
        if kf.isPageWise {
            keyRows = nil
            stagingLayout = PageLayout(keyFormat: .fp16, valueFormat: vf, headDim: c.headDim, capacity: capacity)
        } else {
            keyRows = try! RowCodec(kf, headDim: c.headDim)
            stagingLayout = nil
        }
    }

    var isPageWise: Bool { keyRows == nil }

    /// Quantises the `tokenCount` keys `x` into a sealed page of this (page-wise) tier.
    func encodeSealedKeys(_ x: UnsafePointer<Float>, tokenCount n: Int, into page: Page) {
        if let m = mixedKeys?.codec { m.encodePageUnchecked(x, tokenCount: n, codes: page.keyRow(0), params: page.keyParameters) }
        else { keyChannels!.encodePageUnchecked(x, tokenCount: n, codes: page.keyRow(0), params: page.keyParameters) }
    }

    /// Decodes the key of `slot` in `page` (a sealed page of this tier, or its staging page).
    func decodeKey(_ page: Page, _ slot: Int, into out: UnsafeMutablePointer<Float>) {
        if page.layout == layout {
            if let k = keyRows { k.decode(page.keyRow(slot), into: out) }
            else if let m = mixedKeys?.codec { m.decode(slot: slot, tokenCount: page.count, codes: page.keyRow(0), params: page.keyParameters, into: out) }
            else { keyChannels!.decode(page.keyRow(slot), params: page.keyParameters, into: out) }
        } else {
            fp16.decode(page.keyRow(slot), into: out)
        }
    }

    /// Decodes the value of `slot` in `page`.
    func decodeValue(_ page: Page, _ slot: Int, into out: UnsafeMutablePointer<Float>) {
        values.decode(page.valueRow(slot), into: out)
    }

    /// Decodes the keys of slots `slot ..< slot + count` of `page` (a sealed page of this tier, or its
    /// staging page) into `out` (`count · headDim` floats), exactly as `decodeKey` does each.
    func decodeKeys(_ page: Page, _ slot: Int, count: Int, into out: UnsafeMutablePointer<Float>) {
        if page.layout == layout {
            if let k = keyRows { k.decodeRows(page.keyRow(slot), count: count, into: out) }
            else if let m = mixedKeys?.codec {
                m.decodeRows(slot: slot, count: count, tokenCount: page.count, codes: page.keyRow(0), params: page.keyParameters, into: out)
            } else { keyChannels!.decodeRows(page.keyRow(slot), count: count, params: page.keyParameters, into: out) }
        } else {
            fp16.decodeRows(page.keyRow(slot), count: count, into: out)
        }
    }

    /// Whether keys decoded from `page` may lie beyond ±65504 (quantised ones: a top code decodes up
    /// to scale/2 above the range) and must be clamped before they are encoded again.
    func keysNeedClamping(_ page: Page) -> Bool { page.layout == layout && layout.keyFormat != .fp16 }
}

extension TierCodecs {
    /// Floats of scratch `scoreKeys` and `accumulateValues` need for `rowCount` query rows and
    /// pages of up to `pageCapacity` tokens (the larger of the key kernels' and the value kernels').
    func workCount(rowCount: Int, pageCapacity: Int) -> Int {
        let d = values.headDim
        let keys = mixedKeys?.codec.scoreWorkCount(rowCount: rowCount, pageCapacity: pageCapacity) ?? (rowCount + 1) * (d + 1)
        return max(keys, PageKernels.accumulateWorkCount(values, tokenCount: pageCapacity))
    }

    /// `scores[r·stride + j] = scale · (q_r · key_j)` for the `rowCount` query rows `q` (`headDim`
    /// each) and every token j of `page` (a sealed page of this tier or its staging page), by the
    /// tier's `keyScoring` (`stagingKeyScoring` on a staging page). `work` holds at least
    /// `workCount(rowCount:pageCapacity:)` floats.
    func scoreKeys(of page: Page, queries q: UnsafePointer<Float>, rowCount rows: Int, scale: Float,
                   into S: UnsafeMutablePointer<Float>, stride cap: Int, work: UnsafeMutablePointer<Float>) {
        let n = page.count, d = fp16.headDim
        let isStaging = page.layout != layout
        switch isStaging ? stagingKeyScoring : keyScoring {
        case .fp16:
            PageKernels.scoresFP16(q, rowCount: rows, headDim: d, keys: page.keyRow(0), tokenCount: n, scale: scale, into: S, stride: cap,
                                   work: work)
        case .channelwiseVNNI:
            PageKernels.scoresChannelwiseVNNI(keyChannels!, q, rowCount: rows, codes: page.keyRow(0), params: page.keyParameters,
                                              tokenCount: n, scale: scale, into: S, stride: cap, work: work)
        case .channelwise:
            PageKernels.scoresChannelwise(keyChannels!, q, rowCount: rows, codes: page.keyRow(0), params: page.keyParameters,
                                          tokenCount: n, scale: scale, into: S, stride: cap, work: work)
        case .channelwiseInt3:
            PageKernels.scoresChannelwiseInt3(keyChannels!, q, rowCount: rows, codes: page.keyRow(0), params: page.keyParameters,
                                              tokenCount: n, scale: scale, into: S, stride: cap, work: work)
        case .lloydMax:
            PageKernels.scoresLloydMax(keyRows!, q, rowCount: rows, keys: page.keyRow(0), tokenCount: n, scale: scale, into: S,
                                       stride: cap, work: work)
        case .mixedChannelwise:
            mixedKeys!.scores(q, rowCount: rows, codes: page.keyRow(0), params: page.keyParameters, tokenCount: n, scale: scale, into: S,
                             stride: cap, work: work)
        case .grouped:
            let keys = keyRows!
            for j in 0..<n { for r in 0..<rows { S[r * cap + j] = keys.dot(q + r * d, page.keyRow(j)) * scale } }
        }
    }

    /// `out[r·headDim + i] += w[r·stride + j] · x̂_ji` for every token j of `page` and the
    /// `rowCount` output rows, by the tier's `valueAccumulation`. `work` as for `scoreKeys`.
    func accumulateValues(of page: Page, weights S: UnsafePointer<Float>, rowCount rows: Int, stride cap: Int,
                          into out: UnsafeMutablePointer<Float>, work: UnsafeMutablePointer<Float>) {
        let n = page.count
        switch valueAccumulation {
        case .integer:
            PageKernels.accumulateInteger(values, weights: S, rowCount: rows, stride: cap, rows: page.valueRow(0), tokenCount: n, into: out)
        case .floatingPoint:
            PageKernels.accumulate(values, weights: S, rowCount: rows, stride: cap, rows: page.valueRow(0), tokenCount: n, into: out, work: work)
        case .tiled:
            PageKernels.accumulateTiled(values, weights: S, rowCount: rows, stride: cap, rows: page.valueRow(0), tokenCount: n, into: out)
        }
    }
}
