import KVQuantization

/// Everything needed to read and write one tier's pages: their layouts and codecs.
///
/// A tier whose key format is page-wise (`.channelwise`) keeps full pages sealed (quantised per
/// channel once all `capacity` tokens are known) and the rest in one *staging* page whose keys are
/// FP16 (KIVI's residual): the staging page is that tier's page slack.
struct TierCodecs: Sendable {
    let tier: Tier
    /// Layout of the tier's (sealed) pages.
    let layout: PageLayout
    /// Layout of the staging page (page-wise keys only): FP16 keys, the tier's value format.
    let stagingLayout: PageLayout?
    /// Key codec for row-wise key formats.
    let keyRows: RowCodec?
    /// Key codec for page-wise key formats.
    let keyChannels: ChannelwiseKeyCodec?
    let values: RowCodec
    let fp16: RowCodec

    init(tier: Tier, configuration c: KVStoreConfiguration) {
        let kf = c.tierFormats.keyFormat(tier), vf = c.tierFormats.valueFormat(tier)
        self.tier = tier
        layout = PageLayout(keyFormat: kf, valueFormat: vf, headDim: c.headDim, capacity: c.pageCapacity)
        // The configuration was validated: these cannot fail.
        values = try! RowCodec(vf, headDim: c.headDim)
        fp16 = try! RowCodec(.fp16, headDim: c.headDim)
        if case .channelwise(let w) = kf {
            keyChannels = try! ChannelwiseKeyCodec(w, headDim: c.headDim)
            keyRows = nil
            stagingLayout = PageLayout(keyFormat: .fp16, valueFormat: vf, headDim: c.headDim, capacity: c.pageCapacity)
        } else {
            keyRows = try! RowCodec(kf, headDim: c.headDim)
            keyChannels = nil
            stagingLayout = nil
        }
    }

    var isPageWise: Bool { keyChannels != nil }

    /// Decodes the key of `slot` in `page` (a sealed page of this tier, or its staging page).
    func decodeKey(_ page: Page, _ slot: Int, into out: UnsafeMutablePointer<Float>) {
        if page.layout == layout {
            if let k = keyRows { k.decode(page.keyRow(slot), into: out) }
            else { keyChannels!.decode(page.keyRow(slot), params: page.keyParameters, into: out) }
        } else {
            fp16.decode(page.keyRow(slot), into: out)
        }
    }

    /// Decodes the value of `slot` in `page`.
    func decodeValue(_ page: Page, _ slot: Int, into out: UnsafeMutablePointer<Float>) {
        values.decode(page.valueRow(slot), into: out)
    }
}
