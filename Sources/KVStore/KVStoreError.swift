import KVQuantization

/// A store operation that could not be carried out; the store is unchanged.
public enum KVStoreError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The operation needs `requestedBytes` more than are in use, and that would exceed the byte
    /// limit (`availableBytes` remain). Free memory (remove or compress a sequence) and retry.
    case byteLimitExceeded(requestedBytes: Int, availableBytes: Int)
    /// An appended value cannot be stored.
    case invalidValue(layer: Int, kvHead: Int, token: Int, element: Int, QuantizationError)

    public var description: String {
        switch self {
        case .byteLimitExceeded(let r, let a):
            "the store's byte limit would be exceeded: the operation needs \(r) more bytes, \(a) are available"
        case .invalidValue(let l, let h, let t, let e, let q):
            "layer \(l), KV head \(h), token \(t), element \(e): \(q)"
        }
    }
}

