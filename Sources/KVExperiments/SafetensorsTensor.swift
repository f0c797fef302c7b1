import KVQuantization

/// One tensor ready to be written: dtype, shape and its little-endian bytes.
///
/// Build it with `float32(_:shape:)`, `float16(_:shape:)`, `bfloat16(_:shape:)` or
/// `int32(_:shape:)`; a shape whose element count differs from the values' is a caller bug and
/// traps.
public struct SafetensorsTensor: Sendable, Hashable {
    /// The element type written to the header.
    public let dtype: SafetensorsDType
    /// The dimensions, outermost first.
    public let shape: [Int]
    /// The data, little-endian, `elementCount × dtype.byteSize` bytes.
    public let bytes: [UInt8]

    /// A tensor of raw little-endian `bytes`.
    ///
    /// - Precondition: `dtype` is supported (F32, F16, BF16, I32), every dimension is non-negative,
    ///   and `bytes.count` equals the product of `shape` times `dtype.byteSize`.
    public init(dtype: SafetensorsDType, shape: [Int], bytes: [UInt8]) {
        precondition(dtype.isSupported, "SafetensorsTensor: dtype \(dtype) cannot be written")
        let count = Self.elementCount(shape)
        precondition(bytes.count == count * dtype.byteSize,
                     "SafetensorsTensor: \(bytes.count) bytes do not fit shape \(shape) of \(dtype)")
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// The product of `shape`.
    public var elementCount: Int { Self.elementCount(shape) }

    /// An `F32` tensor holding `values` exactly.
    public static func float32(_ values: [Float], shape: [Int]) -> SafetensorsTensor {
        checkCount(values.count, shape)
        return SafetensorsTensor(dtype: .f32, shape: shape, bytes: littleEndianBytes(values.map(\.bitPattern)))
    }

    /// An `F16` tensor of `values` rounded to nearest even.
    ///
    /// Finite values beyond ±65504 become ±infinity and NaN stays NaN, as in IEEE conversion; callers
    /// that need to reject them check first (see `KVQuantization.QuantizationError`).
    /// Relative error ≤ 2⁻¹¹ for values in the normal FP16 range (|x| ≥ 2⁻¹⁴).
    public static func float16(_ values: [Float], shape: [Int]) -> SafetensorsTensor {
        checkCount(values.count, shape)
        return SafetensorsTensor(dtype: .f16, shape: shape,
                                 bytes: littleEndianBytes(values.map { Float16($0).bitPattern }))
    }

    /// An `F16` tensor holding `values` exactly.
    public static func float16(_ values: [Float16], shape: [Int]) -> SafetensorsTensor {
        checkCount(values.count, shape)
        return SafetensorsTensor(dtype: .f16, shape: shape, bytes: littleEndianBytes(values.map(\.bitPattern)))
    }

    /// A `BF16` tensor of `values` rounded to nearest even (relative error ≤ 2⁻⁸ for normal values);
    /// NaN stays NaN (quiet), infinities stay infinite.
    public static func bfloat16(_ values: [Float], shape: [Int]) -> SafetensorsTensor {
        checkCount(values.count, shape)
        return SafetensorsTensor(dtype: .bf16, shape: shape, bytes: littleEndianBytes(values.map(bfloat16Bits)))
    }

    /// An `I32` tensor holding `values` exactly.
    public static func int32(_ values: [Int32], shape: [Int]) -> SafetensorsTensor {
        checkCount(values.count, shape)
        return SafetensorsTensor(dtype: .i32, shape: shape, bytes: littleEndianBytes(values.map { UInt32(bitPattern: $0) }))
    }

    /// The bfloat16 bits of `x`, rounded to nearest even.
    static func bfloat16Bits(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        // Adding 0x7FFF plus the lowest kept bit rounds to nearest even; a carry into the exponent
        // is the correct rounding (up to the next binade, or to infinity above bfloat16's maximum).
        let rounded = bits &+ 0x7FFF &+ ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }

    private static func elementCount(_ shape: [Int]) -> Int {
        var count = 1
        for d in shape {
            precondition(d >= 0, "SafetensorsTensor: negative dimension in shape \(shape)")
            let (product, overflow) = count.multipliedReportingOverflow(by: d)
            precondition(!overflow, "SafetensorsTensor: shape \(shape) overflows")
            count = product
        }
        return count
    }

    private static func checkCount(_ count: Int, _ shape: [Int]) {
        precondition(count == elementCount(shape),
                     "SafetensorsTensor: \(count) values do not fit shape \(shape)")
    }

    private static func littleEndianBytes<T: FixedWidthInteger>(_ words: [T]) -> [UInt8] {
        let size = T.bitWidth / 8
        return [UInt8](unsafeUninitializedCapacity: words.count * size) { buffer, count in
            for (i, w) in words.enumerated() {
                for b in 0..<size {  // least significant byte first, on any host
                    buffer[i * size + b] = UInt8(truncatingIfNeeded: w >> (8 * b))
                }
            }
            count = words.count * size
        }
    }
}
