import KVQuantization

/// Why a GGUF file cannot be read.
///
/// Every case says where in the file (byte offset, key or tensor name) and what was expected, so
/// its `description` names the problem exactly. Offsets are from the start of the file.
public enum GGUFError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file could not be opened or mapped.
    case unreadable(path: String, reason: String)
    /// The file does not start with the magic `GGUF`.
    case badMagic(found: [UInt8])
    /// A GGUF version other than 3.
    case unsupportedVersion(UInt32)
    /// The file ends inside the structure being read (`needed` bytes at `offset`).
    case truncated(offset: Int, needed: Int, what: String)
    /// A count (tensors, metadata entries, array elements, dimensions) is beyond what the file could hold.
    case implausibleCount(what: String, count: UInt64, offset: Int)
    /// A string is not valid UTF-8.
    case invalidString(offset: Int)
    /// A metadata value type id that GGUF does not define.
    case unknownValueType(key: String, type: UInt32)
    /// A key appears twice.
    case duplicateKey(String)
    /// A tensor name appears twice.
    case duplicateTensor(String)
    /// `general.alignment` is not a positive power of two (or not a UInt32).
    case invalidAlignment(String)
    /// A tensor's dimensions are zero, too many, or their product overflows.
    case invalidShape(tensor: String, shape: [UInt64])
    /// A tensor's ggml type id is unknown or unsupported here.
    case unsupportedTensorType(tensor: String, type: UInt32)
    /// A quantised tensor's row length is not a multiple of its block size.
    case misalignedBlocks(tensor: String, rowLength: Int, blockSize: Int)
    /// A tensor's data offset is not a multiple of the alignment, or its data runs past the file.
    case invalidTensorData(tensor: String, offset: UInt64, byteCount: Int, reason: String)
    /// A tensor the caller asked for is missing.
    case tensorNotFound(String)
    /// A metadata key the caller needs is missing or has another type.
    case missingKey(String, expected: String)
    /// A tensor's data contains a non-finite value where one was not allowed (reported by callers).
    case invalidValue(tensor: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let p, let r): "cannot read GGUF file \(p): \(r)"
        case .badMagic(let m): "not a GGUF file: magic bytes \(m) (expected \"GGUF\")"
        case .unsupportedVersion(let v): "GGUF version \(v) is not supported (only version 3)"
        case .truncated(let o, let n, let w): "file truncated: \(w) needs \(n) bytes at offset \(o)"
        case .implausibleCount(let w, let c, let o): "implausible \(w) count \(c) at offset \(o)"
        case .invalidString(let o): "string at offset \(o) is not valid UTF-8"
        case .unknownValueType(let k, let t): "metadata key \(k): unknown value type \(t)"
        case .duplicateKey(let k): "metadata key \(k) appears twice"
        case .duplicateTensor(let t): "tensor \(t) appears twice"
        case .invalidAlignment(let r): "general.alignment: \(r)"
        case .invalidShape(let t, let s): "tensor \(t): invalid shape \(s)"
        case .unsupportedTensorType(let t, let ty): "tensor \(t): unsupported ggml type \(ty)"
        case .misalignedBlocks(let t, let r, let b): "tensor \(t): row length \(r) is not a multiple of the block size \(b)"
        case .invalidTensorData(let t, let o, let n, let r): "tensor \(t): data at offset \(o) (\(n) bytes) \(r)"
        case .tensorNotFound(let t): "tensor \(t) not found"
        case .missingKey(let k, let e): "metadata key \(k) missing or not \(e)"
        case .invalidValue(let t, let r): "tensor \(t): \(r)"
        }
    }
}
