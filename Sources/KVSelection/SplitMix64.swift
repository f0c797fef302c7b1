import KVQuantization

/// A tiny seeded random generator (SplitMix64) that gives the same sequence on every platform.
///
/// Used for the `Random` policy's scores and the `random` KVCrush anchor, so that a seed names one
/// result everywhere. Output `k` (counting from 1) of `SplitMix64(seed: s)` is the SplitMix64
/// mix of `s + k·0x9E3779B97F4A7C15` (wrapping); seed 0 starts `0xE220A8397B1DCDAF,
/// 0x6E789E6AA1B965F4, 0x06C45D188009454F, …`.
///
/// - Complexity: O(1) per output.
public struct SplitMix64: RandomNumberGenerator, Sendable, Hashable {
    /// The running state; advances by the golden-ratio increment on every output.
    public private(set) var state: UInt64

    /// Starts the sequence at `seed`.
    public init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform value in `[0, 1)` built from the top 24 bits of the next output (exact in `Float`).
    public mutating func nextUnitFloat() -> Float {
        Float(next() >> 40) * 0x1p-24
    }

    /// A fair coin: the top bit of the next output.
    public mutating func nextBit() -> Bool {
        next() >> 63 == 1
    }
}
