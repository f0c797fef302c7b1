import KVQuantization

extension GGUFFile {
    /// The tensor called `name`, dequantised to FP32 in file order (rows of `shape[0]` values).
    ///
    /// Exact for F32 and F16; for the block formats the result is `d·q (+ m)` computed in FP32,
    /// as ggml's reference `dequantize_row_*` does.
    ///
    /// - Throws: `GGUFError.tensorNotFound`.
    /// - Complexity: O(elements).
    public func floats(_ name: String) throws(GGUFError) -> [Float] {
        guard let info = tensor(name) else { throw .tensorNotFound(name) }
        return floats(info)
    }

    /// The tensor `info` (from this file's `tensors`) dequantised to FP32.
    public func floats(_ info: GGUFTensorInfo) -> [Float] {
        let n = info.elementCount
        return [Float](unsafeUninitializedCapacity: n) { out, count in
            withUnsafeBytes(of: info) { raw in
                GGUFDequantizer.dequantize(raw, type: info.type, count: n, into: out.baseAddress!)
            }
            count = n
        }
    }
}

/// Reference dequantisation of ggml blocks (scalar; fast enough at load time).
public enum GGUFDequantizer {
    /// Dequantises `count` values of `type` from `raw` (which must hold them) into `out`.
    ///
    /// - Precondition: `count` is a multiple of the block size and `raw` holds its blocks.
    public static func dequantize(_ raw: UnsafeRawBufferPointer, type: GGMLType, count: Int, into out: UnsafeMutablePointer<Float>) {
        let blocks = count / type.blockSize
        precondition(count % type.blockSize == 0 && raw.count >= blocks * type.blockByteCount,
                     "GGUFDequantizer: \(raw.count) bytes cannot hold \(count) values of \(type)")
        func half(_ o: Int) -> Float { Float16Bits.halfToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: o, as: UInt16.self))) }
        switch type {
        case .f32:
            for i in 0..<count { out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .f16:
            for i in 0..<count { out[i] = half(2 * i) }
        case .q8_0:
            for b in 0..<blocks {
                let base = b * 34, d = half(base), o = out + b * 32
                for j in 0..<32 { o[j] = d * Float(Int8(bitPattern: raw[base + 2 + j])) }
            }
        case .q4_0:
            for b in 0..<blocks {
                let base = b * 18, d = half(base), o = out + b * 32
                for j in 0..<16 {
                    let q = raw[base + 2 + j]
                    o[j] = d * Float(Int(q & 0xF) - 8)
                    o[j + 16] = d * Float(Int(q >> 4) - 8)
                }
            }
        case .q4_1:
            for b in 0..<blocks {
                let base = b * 20, d = half(base), m = half(base + 2), o = out + b * 32
                for j in 0..<16 {
                    let q = raw[base + 4 + j]
                    o[j] = d * Float(q & 0xF) + m
                    o[j + 16] = d * Float(q >> 4) + m
                }
            }
        }
    }
}
