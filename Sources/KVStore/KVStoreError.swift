import KVQuantization

/// A store operation that could not be carried out; the store is unchanged.
public enum KVStoreError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The operation needs `requestedBytes` more than are in use, and that would exceed the byte
    /// limit (`availableBytes` remain). Free memory (remove or compress a sequence) and retry.
    case byteLimitExceeded(requestedBytes: Int, availableBytes: Int)
    /// An appended value cannot be stored.
    case invalidValue(layer: Int, kvHead: Int, token: Int, element: Int, QuantizationError)
    /// A query row is not finite, or so large (L1 norm above
    /// `KVStoreConfiguration.maximumQueryL1Norm`) that a score could overflow FP32: thrown by
    /// `KVStore.validateQueries` (`attend` itself traps on such a row).
    case invalidQuery(layer: Int, head: Int, token: Int, l1Norm: Double)

    public var description: String {
        switch self {
        case .byteLimitExceeded(let r, let a):
            "the store's byte limit would be exceeded: the operation needs \(r) more bytes, \(a) are available"
        case .invalidValue(let l, let h, let t, let e, let q):
            "layer \(l), KV head \(h), token \(t), element \(e): \(q)"
        case .invalidQuery(let l, let h, let t, let n):
            "layer \(l), query head \(h), query \(t): L1 norm \(n) is not finite, or so large that q·k can overflow FP32"
        }
    }
}

