import KVQuantization

/// Why a safetensors file is not a usable `kv-dump/1` KV dump.
///
/// The convention is described in `../shared/docs/evaluation.md` ("KV dump files") and in `KVDump`.
public enum KVDumpError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file is not a valid safetensors file, or a tensor could not be read.
    case file(SafetensorsError)
    /// `__metadata__.format` is missing (`nil`) or not `kv-dump/1`.
    case unsupportedFormat(found: String?)
    /// A required metadata key is missing.
    case missingMetadata(key: String)
    /// A metadata value does not parse or is out of range.
    case invalidMetadata(key: String, value: String, expected: String)
    /// `num_heads` is not a multiple of `num_kv_heads`, so grouped-query attention is undefined.
    case headsNotDivisible(heads: Int, kvHeads: Int)
    /// A tensor the convention requires is missing.
    case missingTensor(String)
    /// A tensor of the convention (`layers.{L}.*`) belongs to a layer that `layers` does not list.
    case unlistedTensor(String)
    /// A tensor's shape disagrees with the metadata.
    case shapeMismatch(tensor: String, expected: [Int], found: [Int])
    /// A tensor has a dtype the convention does not allow there.
    case wrongDType(tensor: String, expected: String, found: SafetensorsDType)
    /// Element `index` (flat, row-major) of a tensor is NaN or infinite.
    case nonFinite(tensor: String, index: Int, value: Float)
    /// A layer was asked for that the dump does not hold.
    case layerNotInDump(requested: Int, available: [Int])

    public var description: String {
        switch self {
        case .file(let error):
            "not a readable safetensors file: \(error)"
        case .unsupportedFormat(nil):
            "metadata has no 'format'; a KV dump needs format = kv-dump/1"
        case .unsupportedFormat(let found?):
            "metadata format is '\(found)', expected 'kv-dump/1'"
        case .missingMetadata(let key):
            "metadata has no '\(key)'"
        case .invalidMetadata(let key, let value, let expected):
            "metadata '\(key)' is '\(value)', expected \(expected)"
        case .headsNotDivisible(let heads, let kvHeads):
            "num_heads \(heads) is not a multiple of num_kv_heads \(kvHeads)"
        case .missingTensor(let name):
            "missing tensor '\(name)'"
        case .unlistedTensor(let name):
            "tensor '\(name)' belongs to a layer not listed in metadata 'layers'"
        case .shapeMismatch(let t, let expected, let found):
            "tensor '\(t)' has shape \(found), expected \(expected) from the metadata"
        case .wrongDType(let t, let expected, let found):
            "tensor '\(t)' is \(found), expected \(expected)"
        case .nonFinite(let t, let index, let value):
            "tensor '\(t)' element \(index) is \(value); a KV dump must be finite"
        case .layerNotInDump(let requested, let available):
            "layer \(requested) is not in the dump (it has layers \(available.map(String.init).joined(separator: ",")))"
        }
    }
}
