import Foundation
import KVQuantization
import KVSelection

/// The attention of one KV head's query group over one stream.
struct StreamAttention {
    let configuration: KVStoreConfiguration
    let codecs: [TierCodecs]
    let stream: StreamState
    let kvHead: Int
    let queries: UnsafePointer<Float>
    let queryCount: Int
    let queryPositions: [Int32]
    let returnWeights: Bool

    /// Computes the group's outputs into `output` (`[queryHead][query][headDim]`, only this group's
    /// rows written) and returns the weights if asked.
    ///
    /// Per page: the scores of all the group's query rows (`g·queryCount` rows, contiguous in
    /// `queries`) against all the page's keys, one online-softmax step, then the weighted sum of the
    /// page's values, with `PageKernels` (each K/V row converted once per tile of up to four query
    /// rows) where the CPU and shape allow, else the per-row `RowCodec` kernels.
    func run(into output: UnsafeMutablePointer<Float>) -> KVHeadWeights? {
        let c = configuration, d = c.headDim, g = c.groupSize, rows = g * queryCount
        let scale = c.effectiveAttentionScale
        // Row r = (group head r / queryCount, query r % queryCount): rows are consecutive.
        let q0 = queries + kvHead * rows * d, o0 = output + kvHead * rows * d
        let qpos = (0..<rows).map { queryPositions[$0 % queryCount] }
        let minQueryPosition = qpos.min() ?? .max
        let cap = c.pageCapacity
        o0.initialize(repeating: 0, count: rows * d)
        let m = UnsafeMutablePointer<Float>.allocate(capacity: rows), l = UnsafeMutablePointer<Float>.allocate(capacity: rows)
        let S = UnsafeMutablePointer<Float>.allocate(capacity: rows * cap)
        let work = UnsafeMutablePointer<Float>.allocate(capacity: rows * (d + 1))
        defer { m.deallocate(); l.deallocate(); S.deallocate(); work.deallocate() }
        m.initialize(repeating: -.infinity, count: rows)
        l.initialize(repeating: 0, count: rows)
        // For weights: every visited token's position, tier and raw scores.
        var visitedPositions = [Int32](), visitedTiers = [Tier](), visitedScores = [Float]()
        let fastFP16Keys = PageKernels.supports(.fp16, headDim: d, asKeys: true)

        // Every page with its tier, in visiting order (a tier's pages in address order, mostly).
        var visit = [(page: Page, tier: Int)]()
        for (t, tier) in stream.tiers.enumerated() {
            for page in tier.pages where page.count > 0 { visit.append((page, t)) }
            if let st = tier.staging, st.count > 0 { visit.append((st, t)) }
        }
        let fast = (0..<codecs.count).map { t in
            (keys: PageKernels.supports(codecs[t].layout.keyFormat, headDim: d, asKeys: true),
             values: PageKernels.supports(codecs[t].values.format, headDim: d, asKeys: false),
             integerValues: PageKernels.prefersInteger(codecs[t].values.format, headDim: d))
        }
        // No software prefetch: a stream's pages are contiguous runs in the pool's slabs (see
        // `PagePool`), which the hardware prefetchers follow; prefetching measured slower.
        for (page, t) in visit {
            let tc = codecs[t], fastKeys = fast[t].keys, fastValues = fast[t].values
            do {
                let n = page.count
                let isStaging = page.layout != tc.layout
                // Scores.
                if isStaging || tc.keyRows?.format == .fp16 {
                    if fastFP16Keys {
                        PageKernels.scoresFP16(q0, rowCount: rows, headDim: d, keys: page.keyRow(0), tokenCount: n,
                                               scale: scale, into: S, stride: cap)
                    } else {
                        for j in 0..<n { for r in 0..<rows { S[r * cap + j] = tc.fp16.dot(q0 + r * d, page.keyRow(j)) * scale } }
                    }
                } else if let channels = tc.keyChannels {
                    if fastKeys && PageKernels.supportsVNNI(channels) {
                        PageKernels.scoresChannelwiseVNNI(channels, q0, rowCount: rows, codes: page.keyRow(0), params: page.keyParameters,
                                                          tokenCount: n, scale: scale, into: S, stride: cap, work: work)
                    } else if fastKeys {
                        PageKernels.scoresChannelwise(channels, q0, rowCount: rows, codes: page.keyRow(0), params: page.keyParameters,
                                                      tokenCount: n, scale: scale, into: S, stride: cap, work: work)
                    } else {
                        for r in 0..<rows {
                            let prepared = channels.prepare(q0 + r * d, params: page.keyParameters)
                            for j in 0..<n { S[r * cap + j] = channels.dot(prepared, page.keyRow(j)) * scale }
                        }
                    }
                } else {
                    let keys = tc.keyRows!
                    for j in 0..<n { for r in 0..<rows { S[r * cap + j] = keys.dot(q0 + r * d, page.keyRow(j)) * scale } }
                }
                // Causal mask, only where some token is after some query.
                var maxPosition = Int32.min
                for j in 0..<n { maxPosition = max(maxPosition, page.position(j)) }
                if maxPosition > minQueryPosition {
                    for j in 0..<n {
                        let p = page.position(j)
                        for r in 0..<rows where p > qpos[r] { S[r * cap + j] = -.infinity }
                    }
                }
                if returnWeights {
                    for j in 0..<n { visitedPositions.append(page.position(j)); visitedTiers.append(tc.tier) }
                    for j in 0..<n { for r in 0..<rows { visitedScores.append(S[r * cap + j]) } }
                }
                // Online softmax, one page at a time: S becomes the page's weights.
                PageKernels.softmaxPage(S, rowCount: rows, tokenCount: n, stride: cap, m: m, l: l, out: o0, headDim: d)
                if fast[t].integerValues {
                    PageKernels.accumulateInteger(tc.values, weights: S, rowCount: rows, stride: cap, rows: page.valueRow(0),
                                                  tokenCount: n, into: o0)
                } else if fastValues {
                    PageKernels.accumulate(tc.values, weights: S, rowCount: rows, stride: cap, rows: page.valueRow(0),
                                           tokenCount: n, into: o0)
                } else {
                    for j in 0..<n {
                        for r in 0..<rows where S[r * cap + j] != 0 {
                            tc.values.accumulate(S[r * cap + j], page.valueRow(j), into: o0 + r * d)
                        }
                    }
                }
            }
        }
        for r in 0..<rows where l[r] > 0 {
            let o = o0 + r * d, inv = 1 / l[r]
            for i in 0..<d { o[i] *= inv }
        }
        guard returnWeights else { return nil }
        let n = visitedPositions.count
        let order = (0..<n).sorted { visitedPositions[$0] < visitedPositions[$1] }
        var w = [Float](repeating: 0, count: rows * n)
        for (k, j) in order.enumerated() {
            for r in 0..<rows {
                let s = visitedScores[j * rows + r]
                if s > -.infinity, l[r] > 0 { w[r * n + k] = exp(s - m[r]) / l[r] }
            }
        }
        return KVHeadWeights(kvHead: kvHead, positions: order.map { visitedPositions[$0] },
                                tiers: order.map { visitedTiers[$0] }, weights: w, queryCount: queryCount)
    }
}
