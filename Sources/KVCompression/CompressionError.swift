import KVQuantization
import KVSelection
import KVStore

/// Compression failed: the budget is invalid or too small, or applying the plan hit the store's
/// byte limit. The sequence is unchanged.
public enum CompressionError: Error, Equatable, Sendable, CustomStringConvertible {
    case selection(SelectionError)
    case store(KVStoreError)

    public var description: String {
        switch self {
        case .selection(let e): "compression: \(e)"
        case .store(let e): "compression: \(e)"
        }
    }
}
