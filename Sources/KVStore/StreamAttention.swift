import Foundation
import KVQuantization

/// The attention of one KV head's query group over one stream.
struct StreamAttention {
    let configuration: KVStoreConfiguration
    let codecs: [TierCodecs]
    /// The layer's rotations: queries are rotated once for tiers with rotated keys, and rotated
    /// tiers' values are accumulated apart and un-rotated once per query row.
    let rotations: LayerRotations
    let stream: StreamState
    let kvHead: Int
    /// Rows `rows` of the group's query rows, consecutive `headDim`-float rows (the group's rows are
    /// `[groupHead][query]`, `groupSize · queryCount` of them; row `r` is query `r % queryCount`).
    let queries: UnsafePointer<Float>
    let queryCount: Int
    /// The position of each of the group's `queryCount` queries (all of them, whichever `rows` are computed).
    let queryPositions: [Int32]
    /// Which of the group's rows to compute: all of them, or (no weights asked) a run of them that
    /// `KVStore.attend` gives one thread. Which pages are visited and masked is decided from all the
    /// queries' positions, so a run starting on a multiple of `PageKernels.rowTile` gets the same
    /// bits as within the whole group.
    let rows: Range<Int>
    let returnWeights: Bool
    /// The layer (for its sliding window).
    let layer: Int

    /// Computes the outputs of `rows` into `output` (consecutive `headDim`-float rows, in the order
    /// of `queries`) and returns the weights if asked.
    ///
    /// - Precondition: weights are asked only for the whole group.
    ///
    /// Per page: the scores of all the group's query rows (`g·queryCount` rows, contiguous in
    /// `queries`) against all the page's keys, one online-softmax step, then the weighted sum of the
    /// page's values, by the kernels the tier's codecs chose (`TierCodecs.scoreKeys`,
    /// `accumulateValues`: `PageKernels`, each K/V row converted once per tile of up to four query
    /// rows, where the kernel set and shape allow, else the per-row `RowCodec` kernels).
    ///
    /// Rotated tiers (`rotations`): their keys are scored against R·q (q·k = Rq·Rk), rotated once per
    /// query row; their values are accumulated into a second set of outputs, rescaled with the
    /// plain ones at every online-softmax step (the same factor exp(m_old − m_new)), and un-rotated
    /// once per query row at the end: o = o_plain/l + Rᵀ(o_rot/l).
    ///
    /// Scratch (scores, softmax state, kernel work, row positions) is one temporary allocation per
    /// stream: on the stack at decode sizes, so a decode step allocates nothing here unless it asks
    /// for weights or the layer rotates a tier.
    func run(into output: UnsafeMutablePointer<Float>) -> KVHeadWeights? {
        precondition(!returnWeights || rows == 0 ..< configuration.groupSize * queryCount,
                     "StreamAttention: weights are computed for a whole query group, not rows \(rows)")
        let rows = rows.count
        // Scores of a page: `rows` rows of `cap` (the largest page capacity of the layer's tiers).
        let cap = codecs.reduce(0) { max($0, $1.layout.capacity) }
        let workCount = codecs.reduce(0) { max($0, $1.workCount(rowCount: rows, pageCapacity: cap)) }
        // Floats, each part starting on a 64-byte boundary: m, l, S, work, then the Int32 positions.
        func rounded(_ n: Int) -> Int { (n + 15) / 16 * 16 }
        let mAt = 0, lAt = rounded(rows), sAt = lAt + rounded(rows), workAt = sAt + rounded(rows * cap), qposAt = workAt + rounded(workCount)
        return withUnsafeTemporaryAllocation(byteCount: 4 * (qposAt + rows), alignment: 64) { raw in
            let f = raw.baseAddress!.bindMemory(to: Float.self, capacity: qposAt)
            let qpos = (raw.baseAddress! + 4 * qposAt).bindMemory(to: Int32.self, capacity: rows)
            return run(into: output, cap: cap, qpos: qpos, m: f + mAt, l: f + lAt, S: f + sAt, work: f + workAt)
        }
    }

    private func run(into output: UnsafeMutablePointer<Float>, cap: Int, qpos: UnsafeMutablePointer<Int32>, m: UnsafeMutablePointer<Float>,
                     l: UnsafeMutablePointer<Float>, S: UnsafeMutablePointer<Float>, work: UnsafeMutablePointer<Float>) -> KVHeadWeights? {
        let c = configuration, d = c.headDim, first = self.rows.lowerBound, rows = self.rows.count
        let scale = c.effectiveAttentionScale
        // Row r = the group's row first + r (group head (first + r) / queryCount, query (first + r) % queryCount).
        let q0 = queries, o0 = output
        for r in 0..<rows { qpos[r] = queryPositions[(first + r) % queryCount] }
        let minQueryPosition = queryPositions.min() ?? .max
        // Sliding window W: a query at p sees p − W + 1 … p; pages entirely before every row's window are skipped.
        let window = c.slidingWindow(layer: layer).map(Int32.init)
        let oldestVisible = window.map { (queryPositions.min() ?? .max) - $0 + 1 } ?? .min
        let newestWindowStart = window.map { (queryPositions.max() ?? .min) - $0 + 1 } ?? .min
        o0.initialize(repeating: 0, count: rows * d)
        m.initialize(repeating: -.infinity, count: rows)
        l.initialize(repeating: 0, count: rows)
        // Rotated queries and the rotated tiers' outputs, when the layer has them.
        let rotatedQueries = rotations.keys.map { r in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: rows * d)
            p.initialize(from: q0, count: rows * d)
            for row in 0..<rows { r.rotate(p + row * d) }
            return p
        }
        let rotatedOutput = rotations.values.map { _ in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: rows * d)
            p.initialize(repeating: 0, count: rows * d)
            return p
        }
        let previousMaxima = rotatedOutput.map { _ in UnsafeMutablePointer<Float>.allocate(capacity: rows) }
        defer { rotatedQueries?.deallocate(); rotatedOutput?.deallocate(); previousMaxima?.deallocate() }
        // For weights: every visited token's position and tier, and its raw score per row
        // (`[row][token]`, row stride `visitedCount`), in visiting order; one allocation.
        let visitedCount = returnWeights
            ? stream.tiers.reduce(0) { sum, tier in sum + tier.pages.reduce(0) { $0 + $1.count } + (tier.staging?.count ?? 0) } : 0
        let visitedScores = UnsafeMutableRawPointer.allocate(byteCount: visitedCount * (4 * rows + 4 + MemoryLayout<Tier>.stride), alignment: 64)
        defer { visitedScores.deallocate() }
        let scoresOfVisited = visitedScores.bindMemory(to: Float.self, capacity: rows * visitedCount)
        let visitedPositions = (visitedScores + 4 * rows * visitedCount).bindMemory(to: Int32.self, capacity: visitedCount)
        let visitedTiers = (visitedScores + (4 * rows + 4) * visitedCount).bindMemory(to: Tier.self, capacity: visitedCount)
        var visited = 0, lowestVisited = Int32.max, highestVisited = Int32.min
        // No software prefetch: a stream's pages are contiguous runs in the pool's slabs (see
        // `PagePool`), which the hardware prefetchers follow; prefetching measured slower.
        // Pages are visited tier by tier, a tier's pages (in address order, mostly) then its staging page.
        func visit(_ page: Page, _ t: Int) {
            if page.lastPosition < oldestVisible, !returnWeights { return }  // no row sees any of it (weights list every stored token)
            let tc = codecs[t]
            let n = page.count
            // Scores, by the tier's chosen kernel (against R·q where the tier's keys are rotated).
            let queriesOfTier = t > 0 ? rotatedQueries.map { UnsafePointer($0) } ?? q0 : q0
            tc.scoreKeys(of: page, queries: queriesOfTier, rowCount: rows, scale: scale, into: S, stride: cap, work: work)
            // Causal mask, only where some token is after some query.
            if page.lastPosition > minQueryPosition {  // positions ascend within a page
                for j in 0..<n {
                    let p = page.position(j)
                    for r in 0..<rows where p > qpos[r] { S[r * cap + j] = -.infinity }
                }
            }
            // Window mask, only where some token is before some row's window (positions ascend).
            if let window, page.position(0) < newestWindowStart {
                for j in 0..<n {
                    let p = page.position(j)
                    for r in 0..<rows where p <= qpos[r] - window { S[r * cap + j] = -.infinity }
                }
            }
            if returnWeights {
                let base = page.basePosition, offsets = page.offsets
                for j in 0..<n { visitedPositions[visited + j] = base + Int32(offsets[j]) }
                (visitedTiers + visited).initialize(repeating: tc.tier, count: n)
                for r in 0..<rows { (scoresOfVisited + r * visitedCount + visited).initialize(from: S + r * cap, count: n) }
                lowestVisited = min(lowestVisited, base)
                highestVisited = max(highestVisited, visitedPositions[visited + n - 1])
                visited += n
            }
            // Online softmax, one page at a time: S becomes the page's weights.
            if let previousMaxima { previousMaxima.update(from: m, count: rows) }
            PageKernels.softmaxPage(S, rowCount: rows, tokenCount: n, stride: cap, m: m, l: l, out: o0, headDim: d)
            if let rotatedOutput, let previousMaxima {
                // The rescaling softmaxPage applied to o0, applied to the rotated outputs too.
                for r in 0..<rows where m[r] != previousMaxima[r] {
                    let c = PageKernels.softmaxExp(previousMaxima[r] - m[r])
                    if c != 1 { for i in 0..<d { rotatedOutput[r * d + i] *= c } }
                }
            }
            let outputOfTier = t > 0 ? rotatedOutput ?? o0 : o0
            tc.accumulateValues(of: page, weights: S, rowCount: rows, stride: cap, into: outputOfTier, work: work)
        }
        for (t, tier) in stream.tiers.enumerated() {
            for page in tier.pages where page.count > 0 { visit(page, t) }
            if let st = tier.staging, st.count > 0 { visit(st, t) }
        }
        for r in 0..<rows where l[r] > 0 {
            let o = o0 + r * d, inv = 1 / l[r]
            for i in 0..<d { o[i] *= inv }
            if let rotatedOutput, let rv = rotations.values {
                let ro = rotatedOutput + r * d
                for i in 0..<d { ro[i] *= inv }
                rv.unrotate(ro)
                for i in 0..<d { o[i] += ro[i] }
            }
        }
        guard returnWeights else { return nil }
        // Visiting order to position order: a stream holds each position once, so a slot per
        // position between the lowest and the highest orders them in O(tokens + span).
        let n = visitedCount
        let low = lowestVisited, span = n == 0 ? 0 : Int(highestVisited - low) + 1
        let order = UnsafeMutablePointer<Int32>.allocate(capacity: span)
        defer { order.deallocate() }
        order.initialize(repeating: -1, count: span)
        for j in 0..<n {
            let s = Int(visitedPositions[j] - low)
            precondition(order[s] < 0, "StreamAttention: position \(visitedPositions[j]) stored twice in one stream")
            order[s] = Int32(j)
        }
        // Compacted: order[k] is the visit index of the k-th position.
        var k = 0
        for s in 0..<span where order[s] >= 0 {
            order[k] = order[s]
            k += 1
        }
        let positions = [Int32](unsafeUninitializedCapacity: n) { p, initialized in
            for k in 0..<n { p[k] = visitedPositions[Int(order[k])] }
            initialized = n
        }
        let tiers = [Tier](unsafeUninitializedCapacity: n) { t, initialized in
            for k in 0..<n { t[k] = visitedTiers[Int(order[k])] }
            initialized = n
        }
        // exp(s − m) / l per weight (`PageKernels.normalizedWeights`: eight at a time on the C paths,
        // the same bits as the scalar loop).
        let w = [Float](unsafeUninitializedCapacity: rows * n) { w, initialized in
            for r in 0..<rows {
                let out = w.baseAddress! + r * n
                guard l[r] > 0 else { out.initialize(repeating: 0, count: n); continue }
                PageKernels.normalizedWeights(scores: scoresOfVisited + r * n, order: order, count: n, max: m[r], sum: l[r], into: out)
            }
            initialized = rows * n
        }
        return KVHeadWeights(kvHead: kvHead, positions: positions, tiers: tiers, weights: w, queryCount: queryCount)
    }
}
