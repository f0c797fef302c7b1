/// Which layers' quantised tiers a store keeps rotated (`HadamardRotation`), for keys and values
/// separately, and the seed of the rotations' signs.
///
/// A rotated layer keeps the keys (or values) of its INT8, INT4 and INT2 tiers as R·x, with
/// R = (1/√d)·H_d·diag(s) and s drawn from `HadamardRotation.derivedSeed(seed, index: 2·layer)`
/// for keys and `…(seed, index: 2·layer + 1)` for values; the FP16 tier is never rotated (appends
/// stay a copy). Rotation is invisible to callers: attention rotates the query instead of the keys
/// and un-rotates the rotated tiers' weighted values once per query row, and the row reader
/// returns un-rotated rows. Only power-of-two head dims rotate; a store with another head dim keeps
/// every tier unrotated whatever these settings say (`KVStoreConfiguration.rotatesKeys(layer:)`
/// reports what it does).
public struct RotationSettings: Sendable, Hashable {
    /// A set of layers.
    public enum Layers: Sendable, Hashable {
        case none
        case all
        case only(Set<Int>)

        /// Whether `layer` is in the set.
        public func contains(_ layer: Int) -> Bool {
            switch self {
            case .none: false
            case .all: true
            case .only(let s): s.contains(layer)
            }
        }
    }

    /// The layers whose quantised tiers keep rotated keys.
    public var keys: Layers
    /// The layers whose quantised tiers keep rotated values.
    public var values: Layers
    /// The seed of every rotation's signs.
    public var seed: UInt64

    /// No rotation (the default).
    public static let none = RotationSettings()

    public init(keys: Layers = .none, values: Layers = .none, seed: UInt64 = 0) {
        self.keys = keys
        self.values = values
        self.seed = seed
    }

    /// Whether any layer is rotated.
    public var isEmpty: Bool { keys == .none && values == .none }

    /// The rotation of `layer`'s keys (or values) for head vectors of `headDim` elements, or `nil`
    /// if they are not rotated (not asked for, or `headDim` not a power of two).
    public func rotation(layer: Int, values: Bool, headDim: Int) -> HadamardRotation? {
        guard (values ? self.values : keys).contains(layer) else { return nil }
        return HadamardRotation(dimension: headDim, seed: HadamardRotation.derivedSeed(seed, index: 2 * UInt64(layer) + (values ? 1 : 0)))
    }
}
