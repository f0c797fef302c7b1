import KVQuantization
import TestSupport
@testable import KVStore

extension KVStore {
    /// Per stored token of one stream (position order, as `rows`), the bound on the score error that
    /// the integer-domain VNNI kernel adds for query row `q` (`PageKernels.channelwiseVNNIErrorBound`)
    /// where the read path uses it (sealed pages of a tier whose codecs chose
    /// `KeyScoring.channelwiseVNNI`; sealed pages of mixed-width keys: the whole bound of their
    /// segment sum, `MixedChannelwiseKeyCodec.scoreErrorBound`), else 0: the `scoreErrors` of
    /// `ReferenceAttention`. Tiers with
    /// rotated keys are scored against R·q, so their bound is evaluated for R·q.
    func vnniScoreErrors(_ id: SequenceID, layer: Int, kvHead: Int, query q: [Float]) -> [Double] {
        let d = configuration.headDim, scale = configuration.effectiveAttentionScale
        precondition(q.count == d)
        let entries = withStream(id, layer, kvHead, "vnniScoreErrors") { $0.entriesByPosition() }
        let rq = LayerRotations(layer: layer, configuration: configuration).keys.map { $0.rotated(q) } ?? q
        return entries.map { e in
            let tc = codecs[layer][kvHead][e.tier]
            if let mixed = tc.mixedKeys?.codec, e.page.layout == tc.layout {
                // Mixed-width keys: the whole bound of the segment sum (every segment's kernel bound
                // and the additions), on top of the reference's FP32 term.
                return (e.tier > 0 ? rq : q).withUnsafeBufferPointer { qp in
                    mixed.scoreErrorBound(qp.baseAddress!, slot: e.slot, tokenCount: e.page.count, codes: e.page.keyRow(0),
                                          params: e.page.keyParameters, scale: scale)
                }
            }
            guard let channels = tc.keyChannels, e.page.layout == tc.layout, tc.keyScoring == .channelwiseVNNI else { return 0 }
            return (e.tier > 0 ? rq : q).withUnsafeBufferPointer { qp in
                PageKernels.channelwiseVNNIErrorBound(channels, qp.baseAddress!, row: e.page.keyRow(e.slot),
                                                      params: e.page.keyParameters, scale: scale)
            }
        }
    }
}
