import KVQuantization

/// Running H2O scores during decode: the attention each position has received so far, per query
/// head, added one query at a time.
///
/// Positions are the sequence's token positions `0 ..< tokenCount` (dense, whether or not a stream
/// still holds the token). A query's weights arrive over the keys a stream currently holds, named by
/// their positions; dropped positions simply stop accumulating.
///
///     sums[head · capacity + position]    visibleQueryCounts[position]
public struct H2OAccumulator: Sendable, Hashable {
    /// Number of query heads.
    public let headCount: Int
    /// Number of positions tracked (`0 ..< tokenCount`).
    public private(set) var tokenCount: Int = 0
    /// Accumulated attention per head and position, `[heads][positions]` with row stride `capacity`.
    private(set) var sums: [Float] = []
    private(set) var capacity: Int = 0
    /// Number of queries whose weights covered each position.
    public private(set) var visibleQueryCounts: [Int] = []
    /// Per position, the `add(streamCount:…)` call that last counted it (so a position several
    /// streams hold counts once), and that call's number.
    private var countedAt: [Int] = []
    private var lastCounted = 0

    /// An empty accumulator for `headCount` query heads.
    public init(headCount: Int) {
        precondition(headCount > 0, "H2OAccumulator: headCount must be positive")
        self.headCount = headCount
    }

    /// Starts tracking `count` more positions (with zero scores).
    ///
    /// - Complexity: amortised O(headCount · count).
    public mutating func appendPositions(count: Int) {
        precondition(count >= 0, "H2OAccumulator: count must be non-negative")
        let needed = tokenCount + count
        if needed > capacity {
            let newCapacity = max(needed, capacity * 2, 16)
            var grown = [Float](repeating: 0, count: headCount * newCapacity)
            for h in 0..<headCount {
                for p in 0..<tokenCount { grown[h * newCapacity + p] = sums[h * capacity + p] }
            }
            sums = grown
            capacity = newCapacity
        }
        visibleQueryCounts.append(contentsOf: repeatElement(0, count: count))
        countedAt.append(contentsOf: repeatElement(0, count: count))
        tokenCount = needed
    }

    /// Adds one query's weights: `weights[head · keyPositions.count + k]` is the weight query head
    /// `head` gave the token at `keyPositions[k]`.
    ///
    /// - Throws: `SelectionError.weightCountMismatch` or `.invalidWeight` for bad weights (nothing is
    ///   added then).
    /// - Precondition: every key position is tracked.
    /// - Complexity: O(headCount · keyPositions.count).
    public mutating func add(queryWeights weights: [Float], keyPositions: [Int32]) throws(SelectionError) {
        let n = keyPositions.count
        guard weights.count == headCount * n else {
            throw .weightCountMismatch(expected: headCount * n, actual: weights.count)
        }
        for (i, v) in weights.enumerated() where !(v.isFinite && v >= 0) {
            throw .invalidWeight(index: i, value: v)
        }
        for p in keyPositions {
            precondition(p >= 0 && Int(p) < tokenCount, "H2OAccumulator: position \(p) is not tracked")
        }
        for h in 0..<headCount {
            for k in 0..<n { sums[h * capacity + Int(keyPositions[k])] += weights[h * n + k] }
        }
        for p in keyPositions { visibleQueryCounts[Int(p)] += 1 }
    }

    /// Adds the weights `queryCount` queries gave the tokens of `streamCount` streams at once (one
    /// layer's KV heads during decode), straight from each stream's weights: stream `s` holds the
    /// tokens at `positions(s)` (ascending) and is read by query heads `s·groupSize ..< (s+1)·groupSize`,
    /// whose weights are `weights(s)[(g · queryCount + query) · n + k]` for its token `k` (n tokens;
    /// `KVHeadWeights`' layout). Each position any stream holds counts every query as having seen it.
    ///
    /// The same sums, bit for bit, as `add(queryWeights:keyPositions:)` query by query over the union
    /// of the streams' positions (with 0 where a stream lacks one), without building that union:
    /// each (head, position) receives the same additions in the same (query) order.
    ///
    /// - Throws: `SelectionError.weightCountMismatch` or `.invalidWeight` (index within that stream's
    ///   weights) for bad weights; nothing is added then.
    /// - Precondition: `streamCount · groupSize == headCount`; each stream's positions ascend and are tracked.
    /// - Complexity: O(headCount · queryCount · n) for n tokens per stream; no allocation.
    public mutating func add(streamCount: Int, groupSize: Int, queryCount: Int,
                             positions: (Int) -> [Int32], weights: (Int) -> [Float]) throws(SelectionError) {
        precondition(streamCount * groupSize == headCount, "H2OAccumulator: \(streamCount) streams of \(groupSize) heads, expected \(headCount) heads")
        precondition(queryCount >= 0, "H2OAccumulator: queryCount must be non-negative")
        for s in 0..<streamCount {
            let p = positions(s), w = weights(s)
            guard w.count == groupSize * queryCount * p.count else {
                throw .weightCountMismatch(expected: groupSize * queryCount * p.count, actual: w.count)
            }
            // One branch-free pass (v ≥ 0 and ≤ the largest finite: false for NaN and ±∞), then the
            // first bad index only when there is one.
            let bad = w.withUnsafeBufferPointer { w in
                var bad: UInt8 = 0
                for v in w { bad |= v >= 0 && v <= .greatestFiniteMagnitude ? 0 : 1 }
                return bad != 0
            }
            if bad, let i = w.firstIndex(where: { !($0.isFinite && $0 >= 0) }) { throw .invalidWeight(index: i, value: w[i]) }
            let ascending = p.withUnsafeBufferPointer { p in
                var ok = true
                for k in p.indices.dropFirst() where !(p[k - 1] < p[k]) { ok = false }
                return ok
            }
            if !ascending { preconditionFailure("H2OAccumulator: stream positions must ascend") }
            precondition(p.first.map { $0 >= 0 } ?? true && Int(p.last ?? -1) < tokenCount, "H2OAccumulator: a position is not tracked")
        }
        guard queryCount > 0 else { return }
        let capacity = capacity
        sums.withUnsafeMutableBufferPointer { sums in
            for s in 0..<streamCount {
                let p = positions(s), w = weights(s), n = p.count
                p.withUnsafeBufferPointer { p in
                    w.withUnsafeBufferPointer { w in
                        for g in 0..<groupSize {
                            let row = sums.baseAddress! + (s * groupSize + g) * capacity
                            for q in 0..<queryCount {
                                let wr = w.baseAddress! + (g * queryCount + q) * n
                                // Positions ascend and are distinct, so p[k + 7] − p[k] = 7 means eight
                                // consecutive ones: one SIMD8 add (the same eight additions).
                                var k = 0
                                while k + 8 <= n {
                                    let first = Int(p[k])
                                    if Int(p[k + 7]) - first == 7 {
                                        let at = UnsafeMutableRawPointer(row + first)
                                        let sum = at.loadUnaligned(as: SIMD8<Float>.self)
                                            + UnsafeRawPointer(wr + k).loadUnaligned(as: SIMD8<Float>.self)
                                        at.storeBytes(of: sum, as: SIMD8<Float>.self)
                                    } else {
                                        for j in k..<(k + 8) { row[Int(p[j])] += wr[j] }
                                    }
                                    k += 8
                                }
                                while k < n { row[Int(p[k])] += wr[k]; k += 1 }
                            }
                        }
                    }
                }
            }
        }
        // Visible counts over the union: each position once per call, however many streams hold it.
        lastCounted += 1
        let mark = lastCounted
        countedAt.withUnsafeMutableBufferPointer { counted in
            visibleQueryCounts.withUnsafeMutableBufferPointer { counts in
                for s in 0..<streamCount {
                    for p in positions(s) where counted[Int(p)] != mark {
                        counted[Int(p)] = mark
                        counts[Int(p)] += queryCount
                    }
                }
            }
        }
    }

    /// Adds every query of a block of weights (e.g. the prefill), with key `k` at position `k`.
    ///
    /// Positions are appended first if `weights.keyCount` exceeds `tokenCount`. Each key's visible
    /// count grows by the number of the block's queries that can causally see it.
    ///
    /// - Precondition: `weights.headCount == headCount`.
    /// - Complexity: O(headCount · queryCount · keyCount).
    public mutating func add(_ weights: AttentionWeights) {
        precondition(weights.headCount == headCount, "H2OAccumulator: \(weights.headCount) heads, expected \(headCount)")
        if weights.keyCount > tokenCount { appendPositions(count: weights.keyCount - tokenCount) }
        let block = ImportanceScores.h2o(weights, normalization: .none)
        for h in 0..<headCount {
            for k in 0..<weights.keyCount { sums[h * capacity + k] += block.values[h * weights.keyCount + k] }
        }
        for k in 0..<weights.keyCount { visibleQueryCounts[k] += weights.visibleQueryCount(key: k) }
    }

    /// The accumulated score of `position` for query head `head`.
    ///
    /// - Complexity: O(1).
    public func sum(head: Int, position: Int32) -> Float {
        precondition(head >= 0 && head < headCount && position >= 0 && Int(position) < tokenCount,
                     "H2OAccumulator: index out of range")
        return sums[head * capacity + Int(position)]
    }

    /// The scores of the tokens at `positions` (in that order), per query head.
    ///
    /// - Complexity: O(headCount · positions.count).
    public func scores(at positions: [Int32], normalization: H2ONormalization = .none) -> ImportanceScores {
        var out: [Float] = []
        out.reserveCapacity(headCount * positions.count)
        for h in 0..<headCount {
            for p in positions {
                let s = sum(head: h, position: p)
                switch normalization {
                case .none: out.append(s)
                case .visibleQueryCount:
                    let seen = visibleQueryCounts[Int(p)]
                    out.append(seen == 0 ? 0 : s / Float(seen))
                }
            }
        }
        return ImportanceScores(headCount: headCount, tokenCount: positions.count, values: out)
    }
}

extension H2OAccumulator {
    /// Equal when they track the same heads and positions with the same sums and visible counts
    /// (whatever their capacity or bookkeeping).
    public static func == (a: H2OAccumulator, b: H2OAccumulator) -> Bool {
        guard a.headCount == b.headCount, a.tokenCount == b.tokenCount, a.visibleQueryCounts == b.visibleQueryCounts else { return false }
        for h in 0..<a.headCount {
            for p in 0..<a.tokenCount where a.sums[h * a.capacity + p] != b.sums[h * b.capacity + p] { return false }
        }
        return true
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(headCount)
        hasher.combine(visibleQueryCounts)
        for h in 0..<headCount { for p in 0..<tokenCount { hasher.combine(sums[h * capacity + p]) } }
    }
}
