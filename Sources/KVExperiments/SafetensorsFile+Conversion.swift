import KVQuantization

extension SafetensorsFile {
    /// The elements of a floating-point tensor as `Float`, flattened row-major.
    ///
    /// `F32` is copied; `F16` (through `Float16`) and `BF16` (by shifting into the top half of a
    /// `Float`) widen exactly, so every value, including infinities and NaN, is preserved.
    ///
    /// - Throws: `tensorNotFound`; `wrongDType` for an `I32` tensor; `unsupportedDType` for any dtype
    ///   other than `F32`, `F16`, `BF16`, `I32`.
    /// - Complexity: O(elements); only this tensor's bytes are touched.
    public func floats(_ name: String) throws(SafetensorsError) -> [Float] {
        guard let info = info(name) else { throw .tensorNotFound(name) }
        let n = info.elementCount
        switch info.dtype {
        case .f32:
            return try withUnsafeBytes(of: info) { bytes in
                [Float](unsafeUninitializedCapacity: n) { buffer, count in
                    for i in 0..<n {
                        let bits = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
                        buffer[i] = Float(bitPattern: bits)
                    }
                    count = n
                }
            }
        case .f16:
            return try withUnsafeBytes(of: info) { bytes in
                [Float](unsafeUninitializedCapacity: n) { buffer, count in
                    for i in 0..<n {
                        let bits = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                        buffer[i] = Float(Float16(bitPattern: bits))
                    }
                    count = n
                }
            }
        case .bf16:
            return try withUnsafeBytes(of: info) { bytes in
                [Float](unsafeUninitializedCapacity: n) { buffer, count in
                    for i in 0..<n {
                        let bits = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                        buffer[i] = Float(bitPattern: UInt32(bits) << 16)
                    }
                    count = n
                }
            }
        case .i32:
            throw .wrongDType(tensor: name, expected: "a floating-point dtype (F32, F16, BF16)", found: .i32)
        default:
            throw .unsupportedDType(tensor: name, dtype: info.dtype.rawValue)
        }
    }

    /// The elements of an `I32` tensor, flattened row-major.
    ///
    /// - Throws: `tensorNotFound`; `wrongDType` for an `F32`, `F16` or `BF16` tensor;
    ///   `unsupportedDType` for any other dtype.
    /// - Complexity: O(elements).
    public func int32s(_ name: String) throws(SafetensorsError) -> [Int32] {
        guard let info = info(name) else { throw .tensorNotFound(name) }
        guard info.dtype == .i32 else {
            if info.dtype.isConvertibleToFloat {
                throw .wrongDType(tensor: name, expected: "I32", found: info.dtype)
            }
            throw .unsupportedDType(tensor: name, dtype: info.dtype.rawValue)
        }
        let n = info.elementCount
        return try withUnsafeBytes(of: info) { bytes in
            [Int32](unsafeUninitializedCapacity: n) { buffer, count in
                for i in 0..<n {
                    buffer[i] = Int32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))
                }
                count = n
            }
        }
    }
}
