import KVQuantization

/// The rotations of one layer's quantised tiers (`KVStoreConfiguration.rotation`): `nil` where
/// unrotated. Tier 0 (FP16) is never rotated; every quantised tier of a layer shares its rotation,
/// so only a move out of FP16 changes space.
///
/// Made when needed (once per `attend`, `apply` of a stream or row read: O(headDim) to draw the
/// signs), not kept per layer: a configuration read from a file may name 65,536 layers of 4,096
/// elements.
struct LayerRotations: Sendable {
    /// R for keys, if the layer's quantised tiers keep rotated keys.
    let keys: HadamardRotation?
    /// R for values, if the layer's quantised tiers keep rotated values.
    let values: HadamardRotation?

    init(layer: Int, configuration c: KVStoreConfiguration) {
        keys = c.rotatesKeys(layer: layer) ? c.rotation.rotation(layer: layer, values: false, headDim: c.headDim) : nil
        values = c.rotatesValues(layer: layer) ? c.rotation.rotation(layer: layer, values: true, headDim: c.headDim) : nil
    }

    var isEmpty: Bool { keys == nil && values == nil }

    /// The rotation tier `tier` stores keys (`values == false`) or values under, if any.
    func rotation(tier: Int, values: Bool) -> HadamardRotation? {
        tier == 0 ? nil : values ? self.values : keys
    }

    /// Moves `count` decoded rows (`headDim` values each, back to back) from the space of tier `from`
    /// into that of tier `to`; true if that changed them (the tiers' rotations differ).
    @discardableResult
    func convert(_ x: UnsafeMutablePointer<Float>, count: Int, headDim: Int, values: Bool, from: Int, to: Int) -> Bool {
        guard rotation(tier: from, values: values) != rotation(tier: to, values: values) else { return false }
        for r in 0..<count { convert(x + r * headDim, values: values, from: from, to: to) }
        return true
    }

    /// Moves a decoded row (`headDim` values) from the space of tier `from` into that of tier `to`.
    func convert(_ x: UnsafeMutablePointer<Float>, values: Bool, from: Int, to: Int) {
        let a = rotation(tier: from, values: values), b = rotation(tier: to, values: values)
        guard a != b else { return }
        a?.unrotate(x)
        b?.rotate(x)
    }
}
