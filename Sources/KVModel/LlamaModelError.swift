import KVQuantization

/// Why a GGUF file cannot be loaded as a Llama model, or a tokenizer built from it.
public enum LlamaModelError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file itself is malformed.
    case file(GGUFError)
    /// `general.architecture` is not `llama`.
    case unsupportedArchitecture(String)
    /// A hyperparameter is missing or out of range.
    case invalidHyperparameter(key: String, reason: String)
    /// A tensor is missing.
    case missingTensor(String)
    /// A tensor's shape is not what the hyperparameters imply.
    case shapeMismatch(tensor: String, expected: [Int], found: [Int])
    /// A weight is NaN or infinite.
    case nonFiniteWeight(tensor: String, index: Int)
    /// The tokenizer data (`tokenizer.ggml.*`) is missing or inconsistent.
    case invalidTokenizer(String)

    public var description: String {
        switch self {
        case .file(let e): "\(e)"
        case .unsupportedArchitecture(let a): "architecture \(a) is not supported (only llama)"
        case .invalidHyperparameter(let k, let r): "hyperparameter \(k): \(r)"
        case .missingTensor(let t): "tensor \(t) is missing"
        case .shapeMismatch(let t, let e, let f): "tensor \(t) has shape \(f), expected \(e)"
        case .nonFiniteWeight(let t, let i): "tensor \(t): element \(i) is not finite"
        case .invalidTokenizer(let r): "tokenizer: \(r)"
        }
    }
}
