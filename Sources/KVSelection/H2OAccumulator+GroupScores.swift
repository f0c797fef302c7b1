/// One KV head's scores straight from the accumulator, for re-plans that need no per-query-head
/// scores (`SequencePlanner.planDecode` when the planner asks for no representatives).
extension H2OAccumulator {
    /// The scores of the tokens at `positions` (in that order) for KV head `kvHead`: the query heads
    /// `kvHead·groupSize ..< (kvHead + 1)·groupSize`, each normalised as `scores(at:normalization:)`
    /// does, reduced as `ImportanceScores.groupedByKVHead(kvHeadCount:reduction:)` reduces them.
    ///
    /// Bit for bit `scores(at: positions, normalization: normalization)
    /// .groupedByKVHead(kvHeadCount: headCount / groupSize, reduction: reduction).scores(head: kvHead)`
    /// (the same operations in the same order), without the other groups' heads.
    ///
    /// - Precondition: `groupSize` divides `headCount`, `kvHead < headCount / groupSize`, every
    ///   position is tracked.
    /// - Complexity: O(groupSize · positions.count).
    public func groupScores(kvHead: Int, groupSize: Int, at positions: [Int32], normalization: H2ONormalization = .none,
                            reduction: GroupReduction = .mean) -> [Float] {
        precondition(groupSize > 0 && headCount % groupSize == 0 && kvHead >= 0 && kvHead < headCount / groupSize,
                     "H2OAccumulator.groupScores: KV head \(kvHead) of groups of \(groupSize) among \(headCount) heads")
        for p in positions { precondition(p >= 0 && Int(p) < tokenCount, "H2OAccumulator: index out of range") }
        return [Float](unsafeUninitializedCapacity: positions.count) { out, initialized in
            for (t, p) in positions.enumerated() {
                let seen = visibleQueryCounts[Int(p)]
                var acc: Float = reduction == .mean ? 0 : -.infinity
                for g in 0..<groupSize {
                    let s = sums[(kvHead * groupSize + g) * capacity + Int(p)]
                    let v: Float
                    switch normalization {
                    case .none: v = s
                    case .visibleQueryCount: v = seen == 0 ? 0 : s / Float(seen)
                    }
                    switch reduction {
                    case .mean: acc += v
                    case .max: acc = Swift.max(acc, v)
                    }
                }
                out[t] = reduction == .mean ? acc / Float(groupSize) : acc
            }
            initialized = positions.count
        }
    }
}
