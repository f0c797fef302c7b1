import KVQuantization

/// The element types of GGUF tensors that this reader can dequantise (ggml's `ggml_type` ids).
///
/// Block layouts (little-endian, from ggml's `ggml-common.h`), `d` and `m` FP16:
///
///     Q8_0 (34 B / 32 values):  | d | qs: 32 × Int8 |                      x = d·q
///     Q4_0 (18 B / 32 values):  | d | qs: 16 × UInt8 (low nibbles 0..<16, high 16..<32) |   x = d·(q − 8)
///     Q4_1 (20 B / 32 values):  | d | m | qs: 16 × UInt8 (same packing) |  x = d·q + m
public enum GGMLType: UInt32, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// IEEE single precision.
    case f32 = 0
    /// IEEE half precision.
    case f16 = 1
    /// 4-bit symmetric blocks of 32.
    case q4_0 = 2
    /// 4-bit affine blocks of 32 (scale and minimum).
    case q4_1 = 3
    /// 8-bit symmetric blocks of 32.
    case q8_0 = 8

    /// Values per block (1 for the float types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16: 1
        case .q4_0, .q4_1, .q8_0: 32
        }
    }

    /// Bytes per block.
    public var blockByteCount: Int {
        switch self {
        case .f32: 4
        case .f16: 2
        case .q4_0: 18
        case .q4_1: 20
        case .q8_0: 34
        }
    }

    public var description: String {
        switch self {
        case .f32: "F32"
        case .f16: "F16"
        case .q4_0: "Q4_0"
        case .q4_1: "Q4_1"
        case .q8_0: "Q8_0"
        }
    }
}
