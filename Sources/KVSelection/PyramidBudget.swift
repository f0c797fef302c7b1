import KVQuantization

/// PyramidKV's per-layer budgets: a linear ramp from the first layer down to the last, with the
/// same total as a uniform split.
///
/// With `L` layers, a mean budget `b = total / L` and `β ≥ 1` (`pyramidBeta`):
///
///     last  = b / β
///     first = 2b − last
///     w_l   = first − l · (first − last) / (L − 1)        l = 0 … L−1   (w_0 = total when L = 1)
///
/// The real-valued `w_l` sum to `total` exactly; integer budgets are `⌊w_l⌋` plus one for the
/// layers with the largest fractional parts (ties to the earlier layer) until the sum is `total`.
/// β = 1 gives a uniform split; PyramidKV's published default is β = 20.
public enum PyramidBudget {
    /// The default β of PyramidKV.
    public static let defaultBeta: Double = 20

    /// Integer budgets per layer summing exactly to `total`, falling linearly with depth.
    ///
    /// - Precondition: `total ≥ 0`, `layerCount > 0`, `beta ≥ 1`.
    /// - Complexity: O(L log L).
    public static func layerBudgets(total: Int, layerCount: Int, beta: Double = defaultBeta) -> [Int] {
        precondition(total >= 0 && layerCount > 0, "PyramidBudget: total ≥ 0 and layerCount > 0 required")
        precondition(beta >= 1 && beta.isFinite, "PyramidBudget: beta must be finite and ≥ 1")
        if layerCount == 1 { return [total] }
        let b = Double(total) / Double(layerCount)
        let last = b / beta
        let first = 2 * b - last
        let step = (first - last) / Double(layerCount - 1)
        let exact = (0..<layerCount).map { first - Double($0) * step }
        var budgets = exact.map { max(0, Int(max(0, $0))) }  // ⌊·⌋ of non-negative values
        var remainder = total - budgets.reduce(0, +)
        // Largest fractional part first, ties to the earlier layer.
        let order = (0..<layerCount).sorted { a, c in
            let fa = exact[a] - Double(budgets[a]), fc = exact[c] - Double(budgets[c])
            return fa != fc ? fa > fc : a < c
        }
        var i = 0
        while remainder > 0 {
            budgets[order[i % layerCount]] += 1
            remainder -= 1
            i += 1
        }
        while remainder < 0 {  // floating-point excess: take from the layers with the most
            let j = budgets.indices.max { budgets[$0] < budgets[$1] }!
            budgets[j] -= 1
            remainder += 1
        }
        return budgets
    }
}
