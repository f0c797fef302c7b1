import KVQuantization

/// The reference signature KVCrush measures every candidate's distance to.
///
/// For a signature of `N` bits (`N = H` per token, `P·H` per page):
///
/// | anchor | bit i |
/// |---|---|
/// | `random(seed:)` | Bernoulli(½): the top bit of the (i+1)-th output of `SplitMix64(seed:)` |
/// | `zeros` | 0 |
/// | `ones` | 1 |
/// | `mean` | 1 iff strictly more than half of the candidates have bit i set |
/// | `alternate` | `h mod 2`, where `h = i mod bitsPerToken` is the head the bit belongs to (for head-summed signatures, where a token has one bit, `i mod 2`) |
///
/// Seed 0 gives random bits `1, 0, 0, 1, 0, 0, …`.
public enum Anchor: Sendable, Hashable {
    /// Seeded Bernoulli(½) bits, reproducible on every platform.
    case random(seed: UInt64)
    /// All zeros.
    case zeros
    /// All ones.
    case ones
    /// The candidates' per-bit majority (ties to 0).
    case mean
    /// `0101…` by head.
    case alternate

    /// The anchor's bits for `signatures`, given the candidate units (used by `mean`).
    ///
    /// - Complexity: O(N) for fixed anchors, O(|candidates| · N) for `mean`.
    public func bits(for signatures: BitSignatures, candidates: [Int]) -> BitVector {
        let n = signatures.bitCount
        var a = BitVector(bitCount: n)
        switch self {
        case .random(let seed):
            var g = SplitMix64(seed: seed)
            for i in 0..<n where g.nextBit() { a[i] = true }
        case .zeros:
            break
        case .ones:
            for i in 0..<n { a[i] = true }
        case .mean:
            var counts = [Int](repeating: 0, count: n)
            for c in candidates {
                for i in 0..<n where signatures.bit(unit: c, index: i) { counts[i] += 1 }
            }
            for i in 0..<n where 2 * counts[i] > candidates.count { a[i] = true }
        case .alternate:
            let period = signatures.bitsPerToken == 1 ? n : signatures.bitsPerToken
            for i in 0..<n where (i % max(period, 1)) % 2 == 1 { a[i] = true }
        }
        return a
    }
}
