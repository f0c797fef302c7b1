/// An invalid configuration: which field, and the rule it breaks.
public enum KVStoreConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidField(String, String)

    /// The name of the offending field.
    public var field: String { switch self { case .invalidField(let f, _): f } }

    public var description: String {
        switch self { case .invalidField(let f, let rule): "invalid configuration: \(f) \(rule)" }
    }
}

