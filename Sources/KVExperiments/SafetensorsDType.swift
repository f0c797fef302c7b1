import KVQuantization

/// The element type of one tensor in a safetensors file, spelled as in the file's header.
///
/// Every byte-sized dtype of the reference implementation is known, so a file that holds, say, an
/// `I64` tensor beside `F32` ones still opens and validates; only `F32`, `F16`, `BF16` and `I32`
/// can be converted (`SafetensorsFile.floats(_:)`, `SafetensorsFile.int32s(_:)`) and written
/// (`SafetensorsTensor`). A dtype string not listed here (including the sub-byte `F4`/`F6_*` types)
/// makes the file fail to open with `SafetensorsError.unsupportedDType`, because its byte size, and
/// so the file's layout, cannot be checked.
///
/// All multi-byte values are little-endian.
public enum SafetensorsDType: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// One byte per boolean (not convertible).
    case bool = "BOOL"
    /// Unsigned 8-bit integer (not convertible).
    case u8 = "U8"
    /// Signed 8-bit integer (not convertible).
    case i8 = "I8"
    /// 8-bit float, 5 exponent and 2 mantissa bits (not convertible).
    case f8E5M2 = "F8_E5M2"
    /// 8-bit float, 4 exponent and 3 mantissa bits (not convertible).
    case f8E4M3 = "F8_E4M3"
    /// Signed 16-bit integer (not convertible).
    case i16 = "I16"
    /// Unsigned 16-bit integer (not convertible).
    case u16 = "U16"
    /// IEEE 754 half precision.
    case f16 = "F16"
    /// bfloat16: the top 16 bits of an IEEE 754 single.
    case bf16 = "BF16"
    /// Two's-complement 32-bit integer.
    case i32 = "I32"
    /// Unsigned 32-bit integer (not convertible).
    case u32 = "U32"
    /// IEEE 754 single precision.
    case f32 = "F32"
    /// IEEE 754 double precision (not convertible).
    case f64 = "F64"
    /// Signed 64-bit integer (not convertible).
    case i64 = "I64"
    /// Unsigned 64-bit integer (not convertible).
    case u64 = "U64"

    /// Bytes per element (1, 2, 4 or 8).
    public var byteSize: Int {
        switch self {
        case .bool, .u8, .i8, .f8E5M2, .f8E4M3: 1
        case .i16, .u16, .f16, .bf16: 2
        case .i32, .u32, .f32: 4
        case .f64, .i64, .u64: 8
        }
    }

    /// True for the dtypes `SafetensorsFile.floats(_:)` converts: `F32`, `F16` and `BF16`.
    public var isConvertibleToFloat: Bool {
        switch self {
        case .f32, .f16, .bf16: true
        default: false
        }
    }

    /// True for the four dtypes this package reads and writes: `F32`, `F16`, `BF16`, `I32`.
    public var isSupported: Bool { isConvertibleToFloat || self == .i32 }

    /// The header spelling, e.g. `"BF16"`.
    public var description: String { rawValue }
}
