import KVQuantization

/// Why a safetensors file cannot be read or written.
///
/// Every case carries enough context (tensor name, what was expected and what was found) for its
/// `description` to say exactly what is wrong. Offsets inside the data section are relative to its
/// start, as in the file's `data_offsets`; the data section starts at byte `8 + headerByteCount`.
///
/// The layout rules are those of the reference implementation (huggingface/safetensors): the header
/// is at most 100,000,000 bytes of UTF-8 JSON whose first non-whitespace character is `{`; the tensors cover the data section exactly,
/// without overlaps, holes or trailing bytes.
public enum SafetensorsError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file at `path` could not be opened or mapped.
    case unreadable(path: String, reason: String)
    /// The file is shorter than the 8-byte header length.
    case fileTooShort(byteCount: Int)
    /// The header length exceeds the limit (100 MB, as in the reference implementation).
    case headerTooLarge(headerByteCount: UInt64, limit: Int)
    /// The header length runs past the end of the file.
    case headerExceedsFile(headerByteCount: UInt64, available: Int)
    /// The header bytes are not valid UTF-8.
    case headerNotUTF8
    /// The header is not a JSON object (`found` describes what it starts with or is). Duplicate keys
    /// anywhere in the header are rejected too, even in `__metadata__` (which the reference
    /// implementation would accept, keeping one of them).
    case headerNotObject(found: String)
    /// The header is not well-formed JSON.
    case malformedHeader(reason: String)
    /// The same tensor name (or `__metadata__`) appears twice at the top level of the header.
    case duplicateName(String)
    /// The same key appears twice inside one nested JSON object of the header.
    case duplicateKey(key: String, inside: String)
    /// `__metadata__` is not an object of strings; `key` is `nil` when `__metadata__` itself is not
    /// an object, else the key whose value is not a string.
    case invalidMetadata(key: String?, found: String)
    /// A tensor's header entry is not a JSON object.
    case invalidTensorEntry(tensor: String, found: String)
    /// A tensor's header entry lacks `field` (`dtype`, `shape` or `data_offsets`).
    case missingField(tensor: String, field: String)
    /// A tensor's `field` has the wrong JSON type or form.
    case invalidField(tensor: String, field: String, expected: String, found: String)
    /// Dimension `axis` of a tensor's shape is not a non-negative integer.
    case invalidDimension(tensor: String, axis: Int, found: String)
    /// A tensor's dtype is unknown (at open) or cannot be converted (at conversion).
    case unsupportedDType(tensor: String, dtype: String)
    /// The product of a tensor's dimensions (or its byte count) overflows `Int`.
    case sizeOverflow(tensor: String, shape: [Int])
    /// A tensor's `data_offsets` span a different number of bytes than its dtype and shape need.
    case byteCountMismatch(tensor: String, expected: Int, found: Int)
    /// A tensor's `data_offsets` end before they begin.
    case invalidOffsets(tensor: String, begin: Int, end: Int)
    /// A tensor's `data_offsets` end past the data section.
    case offsetsBeyondData(tensor: String, end: Int, dataByteCount: Int)
    /// Two tensors share bytes.
    case overlappingTensors(String, String)
    /// Bytes `offset ..< offset + byteCount` of the data section belong to no tensor.
    case unusedBytes(offset: Int, byteCount: Int)
    /// The data section continues after the last tensor.
    case trailingBytes(offset: Int, byteCount: Int)
    /// No tensor of that name is in the file.
    case tensorNotFound(String)
    /// The tensor holds `found` but the accessor reads `expected`.
    case wrongDType(tensor: String, expected: String, found: SafetensorsDType)
    /// Writing the file at `path` failed.
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            "cannot read safetensors file '\(path)': \(reason)"
        case .fileTooShort(let n):
            "file is \(n) bytes long, shorter than the 8-byte header length"
        case .headerTooLarge(let n, let limit):
            "header length \(n) exceeds the limit of \(limit) bytes"
        case .headerExceedsFile(let n, let available):
            "header length \(n) runs past the end of the file (\(available) bytes after the length)"
        case .headerNotUTF8:
            "header is not valid UTF-8"
        case .headerNotObject(let found):
            "header must be a JSON object starting with '{', found \(found)"
        case .malformedHeader(let reason):
            "header is not valid JSON: \(reason)"
        case .duplicateName(let name):
            "header names '\(name)' twice"
        case .duplicateKey(let key, let inside):
            "header entry '\(inside)' has key '\(key)' twice"
        case .invalidMetadata(nil, let found):
            "__metadata__ must be an object of strings, found \(found)"
        case .invalidMetadata(let key?, let found):
            "__metadata__ value of '\(key)' must be a string, found \(found)"
        case .invalidTensorEntry(let t, let found):
            "tensor '\(t)': header entry must be an object, found \(found)"
        case .missingField(let t, let field):
            "tensor '\(t)': header entry has no '\(field)'"
        case .invalidField(let t, let field, let expected, let found):
            "tensor '\(t)': '\(field)' must be \(expected), found \(found)"
        case .invalidDimension(let t, let axis, let found):
            "tensor '\(t)': dimension \(axis) must be a non-negative integer, found \(found)"
        case .unsupportedDType(let t, let dtype):
            "tensor '\(t)': dtype '\(dtype)' is not supported (supported: F32, F16, BF16, I32)"
        case .sizeOverflow(let t, let shape):
            "tensor '\(t)': size of shape \(shape) overflows"
        case .byteCountMismatch(let t, let expected, let found):
            "tensor '\(t)': dtype and shape need \(expected) bytes but data_offsets span \(found)"
        case .invalidOffsets(let t, let begin, let end):
            "tensor '\(t)': data_offsets [\(begin), \(end)] end before they begin"
        case .offsetsBeyondData(let t, let end, let count):
            "tensor '\(t)': data ends at \(end), past the \(count)-byte data section"
        case .overlappingTensors(let a, let b):
            "tensors '\(a)' and '\(b)' overlap"
        case .unusedBytes(let offset, let count):
            "data bytes \(offset)..<\(offset + count) belong to no tensor"
        case .trailingBytes(let offset, let count):
            "\(count) trailing bytes after the last tensor (from data offset \(offset))"
        case .tensorNotFound(let name):
            "no tensor named '\(name)'"
        case .wrongDType(let t, let expected, let found):
            "tensor '\(t)' is \(found), expected \(expected)"
        case .writeFailed(let path, let reason):
            "cannot write safetensors file '\(path)': \(reason)"
        }
    }
}
