import KVQuantization

/// The element types of GGUF tensors that this reader can dequantise (ggml's `ggml_type` ids).
///
/// Block layouts (little-endian, from ggml's `ggml-common.h`); `d`, `m`, `dmin` are FP16, q the
/// unsigned integer code of each value; "lo"/"hi" mean the low and high nibbles of a byte:
///
///     Q8_0 (34 B / 32):   | d | qs: 32 × Int8 |                                      x_j = d·q_j
///     Q4_0 (18 B / 32):   | d | qs: 16 B (x_j: lo of byte j, x_{16+j}: hi of byte j) | x = d·(q − 8)
///     Q4_1 (20 B / 32):   | d | m | qs: 16 B (same packing) |                        x = d·q + m
///     Q5_0 (22 B / 32):   | d | qh: UInt32 | qs: 16 B | q_j = nibble | bit j of qh << 4, x = d·(q − 16)
///     Q5_1 (24 B / 32):   | d | m | qh: UInt32 | qs: 16 B | (same codes) |          x = d·q + m
///
/// The K-quants pack 256 values in a super-block of sub-blocks with 6- or 8-bit scales:
///
///     Q4_K (144 B / 256): | d | dmin | scales: 12 B | qs: 128 B |
///     Q5_K (176 B / 256): | d | dmin | scales: 12 B | qh: 32 B | qs: 128 B |
///         8 sub-blocks of 32; sub-block s takes the lo (s even) or hi (s odd) nibbles of
///         qs[32·(s/2) ..< +32]; Q5_K adds bit s of qh[l] as bit 4 of value l. Sub-block s has a
///         6-bit scale sc_s and minimum m_s: for s < 4 the low 6 bits of scales[s] and scales[s+4];
///         for s ≥ 4, sc = lo(scales[s+4]) | (scales[s−4] >> 6) << 4, m = hi(scales[s+4]) | (scales[s] >> 6) << 4.
///         x = (d·sc_s)·q − dmin·m_s.
///     Q6_K (210 B / 256): | ql: 128 B | qh: 64 B | scales: 16 × Int8 | d |
///         two halves of 128; value 32·k + l of half h (k < 4, l < 32) has the lo (k < 2) or hi
///         (k ≥ 2) nibble of ql[64h + 32·(k mod 2) + l] and bits 2k, 2k+1 of qh[32h + l] as bits 4, 5;
///         16 sub-blocks of 16 with one scale each: x_i = (d·scales[i / 16])·(q − 32).
///
/// Dequantisation rounds each operation to FP32 in the order written, as ggml's `dequantize_row_*`
/// does (products before sums, `d·sc` before the code): see `GGUFDequantizer`.
public enum GGMLType: UInt32, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// IEEE single precision.
    case f32 = 0
    /// IEEE half precision.
    case f16 = 1
    /// 4-bit symmetric blocks of 32.
    case q4_0 = 2
    /// 4-bit affine blocks of 32 (scale and minimum).
    case q4_1 = 3
    /// 5-bit symmetric blocks of 32.
    case q5_0 = 6
    /// 5-bit affine blocks of 32.
    case q5_1 = 7
    /// 8-bit symmetric blocks of 32.
    case q8_0 = 8
    /// 4-bit super-blocks of 256 (eight affine sub-blocks of 32, 6-bit scales and minima).
    case q4_K = 12
    /// 5-bit super-blocks of 256 (as Q4_K with a fifth bit).
    case q5_K = 13
    /// 6-bit super-blocks of 256 (sixteen symmetric sub-blocks of 16, 8-bit scales).
    case q6_K = 14

    /// Values per block (1 for the float types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16: 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0: 32
        case .q4_K, .q5_K, .q6_K: 256
        }
    }

    /// Bytes per block.
    public var blockByteCount: Int {
        switch self {
        case .f32: 4
        case .f16: 2
        case .q4_0: 18
        case .q4_1: 20
        case .q5_0: 22
        case .q5_1: 24
        case .q8_0: 34
        case .q4_K: 144
        case .q5_K: 176
        case .q6_K: 210
        }
    }

    /// Whether values are blocks of integer codes with scales (every type but F32 and F16).
    public var isBlockQuantized: Bool { blockSize > 1 }

    public var description: String {
        switch self {
        case .f32: "F32"
        case .f16: "F16"
        case .q4_0: "Q4_0"
        case .q4_1: "Q4_1"
        case .q5_0: "Q5_0"
        case .q5_1: "Q5_1"
        case .q8_0: "Q8_0"
        case .q4_K: "Q4_K"
        case .q5_K: "Q5_K"
        case .q6_K: "Q6_K"
        }
    }
}
