import KVQuantization

/// How H2O's accumulated attention is normalised.
public enum H2ONormalization: Sendable, Hashable {
    /// The plain sum of the attention a token received (the H2O paper).
    case none
    /// The sum divided by the number of queries that could causally see the token (OpenVINO's
    /// `NORM_SUM`), so early tokens are not favoured merely for having been seen more often.
    /// A token no query could see scores 0.
    case visibleQueryCount
}

/// How SnapKV smooths the observation-window scores along positions.
public enum PoolingKind: Sendable, Hashable {
    /// Maximum over the window.
    case max
    /// Mean over the window (the divisor is the number of positions actually in the window).
    case average
}

/// SnapKV's knobs.
public struct SnapKVOptions: Sendable, Hashable {
    /// Number of final prompt queries whose attention is summed (the observation window, W).
    public var observationQueryCount: Int
    /// Pooling along positions.
    public var pooling: PoolingKind
    /// Width of the centred pooling window (odd; 1 disables pooling).
    public var poolWidth: Int

    /// W = 32, max-pooling of width 7 (the SnapKV defaults).
    public init(observationQueryCount: Int = 32, pooling: PoolingKind = .max, poolWidth: Int = 7) {
        precondition(observationQueryCount > 0, "SnapKVOptions: observationQueryCount must be positive")
        precondition(poolWidth > 0 && poolWidth % 2 == 1, "SnapKVOptions: poolWidth must be odd and positive")
        self.observationQueryCount = observationQueryCount
        self.pooling = pooling
        self.poolWidth = poolWidth
    }
}

extension ImportanceScores {
    /// H2O scores: for each query head, the attention each key received, summed over all queries of
    /// `weights`, optionally divided by the number of those queries that could see the key.
    ///
    /// - Complexity: O(headCount · queryCount · keyCount).
    public static func h2o(_ weights: AttentionWeights, normalization: H2ONormalization = .none) -> ImportanceScores {
        let (h, q, k) = (weights.headCount, weights.queryCount, weights.keyCount)
        var out = [Float](repeating: 0, count: h * k)
        let w = weights.values
        for head in 0..<h {
            for query in 0..<q {
                let row = (head * q + query) * k
                for key in 0..<k { out[head * k + key] += w[row + key] }
            }
        }
        if normalization == .visibleQueryCount {
            for key in 0..<k {
                let seen = weights.visibleQueryCount(key: key)
                for head in 0..<h {
                    out[head * k + key] = seen == 0 ? 0 : out[head * k + key] / Float(seen)
                }
            }
        }
        return ImportanceScores(headCount: h, tokenCount: k, values: out)
    }

    /// SnapKV scores: for each query head, the attention each key received from the last
    /// `options.observationQueryCount` queries of `weights` (all of them when there are fewer),
    /// then pooled along key positions.
    ///
    /// Pooling is centred: key `j`'s pooled score is the max (or mean) of the raw scores at keys
    /// `j − w/2 ... j + w/2` (`w = poolWidth`). At the edges the window shrinks to the keys that
    /// exist (no padding), and the mean divides by the keys actually in it.
    ///
    /// - Complexity: O(headCount · keyCount · (W + poolWidth)).
    public static func snapKV(_ weights: AttentionWeights, options: SnapKVOptions = SnapKVOptions()) -> ImportanceScores {
        let (h, q, k) = (weights.headCount, weights.queryCount, weights.keyCount)
        let firstQuery = max(0, q - options.observationQueryCount)
        var raw = [Float](repeating: 0, count: h * k)
        for head in 0..<h {
            for query in firstQuery..<q {
                let row = (head * q + query) * k
                for key in 0..<k { raw[head * k + key] += weights.values[row + key] }
            }
        }
        let half = options.poolWidth / 2
        guard half > 0 else { return ImportanceScores(headCount: h, tokenCount: k, values: raw) }
        var out = [Float](repeating: 0, count: h * k)
        for head in 0..<h {
            for j in 0..<k {
                let lo = max(0, j - half), hi = min(k - 1, j + half)
                var acc: Float = 0  // scores are non-negative, so 0 is the identity for max too
                for i in lo...hi {
                    let v = raw[head * k + i]
                    switch options.pooling {
                    case .max: acc = Swift.max(acc, v)
                    case .average: acc += v
                    }
                }
                out[head * k + j] = options.pooling == .max ? acc : acc / Float(hi - lo + 1)
            }
        }
        return ImportanceScores(headCount: h, tokenCount: k, values: out)
    }

    /// TOVA scores: for each query head, the attention each key received from the last query of
    /// `weights` (all zeros when there are no queries).
    ///
    /// - Complexity: O(headCount · keyCount).
    public static func tova(_ weights: AttentionWeights) -> ImportanceScores {
        let (h, q, k) = (weights.headCount, weights.queryCount, weights.keyCount)
        guard q > 0 else { return ImportanceScores(headCount: h, tokenCount: k, values: .init(repeating: 0, count: h * k)) }
        var out: [Float] = []
        out.reserveCapacity(h * k)
        for head in 0..<h {
            let row = (head * q + q - 1) * k
            out.append(contentsOf: weights.values[row ..< row + k])
        }
        return ImportanceScores(headCount: h, tokenCount: k, values: out)
    }

    /// Seeded uniform scores in `[0, 1)`: value `i` (in `[heads][tokens]` order) is the `i`-th
    /// `SplitMix64(seed:).nextUnitFloat()`. The same seed gives the same scores on every platform.
    ///
    /// - Complexity: O(headCount · tokenCount).
    public static func random(headCount: Int, tokenCount: Int, seed: UInt64) -> ImportanceScores {
        var g = SplitMix64(seed: seed)
        let values = (0 ..< headCount * tokenCount).map { _ in g.nextUnitFloat() }
        return ImportanceScores(headCount: headCount, tokenCount: tokenCount, values: values)
    }
}
