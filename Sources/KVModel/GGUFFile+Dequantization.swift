import KVQuantization

extension GGUFFile {
    /// The tensor called `name`, dequantised to FP32 in file order (rows of `shape[0]` values).
    ///
    /// Exact for F32 and F16; for the block formats the result is computed in FP32 as ggml's
    /// reference `dequantize_row_*` does (see `GGUFDequantizer`).
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

/// Thirty-two consecutive values of a block-quantised row: their integer codes and the scale and
/// offset that map the codes to values (the view the integer decode product works on).
///
/// Value j is `fl(a_j·q_j)`, then `fl(… + c)` for the affine types: the FP32 operations of ggml's
/// `dequantize_row_*`, so `value(j)` equals the element `GGUFFile.floats` returns.
public struct WeightPiece: Sendable, Equatable {
    /// q_j: the code minus the type's offset for the symmetric types (Q8_0, Q4_0 −8, Q5_0 −16,
    /// Q6_K −32, so |q| ≤ 128), the unsigned code for the affine ones (Q4_1, Q5_1, Q4_K, Q5_K: 0…31).
    public var codes: SIMD32<Int32>
    /// a for values 0..<16 (`d`, or `d·sc` of the sub-block).
    public var lowScale: Float
    /// a for values 16..<32 (differs from `lowScale` only in Q6_K, whose sub-blocks hold 16 values).
    public var highScale: Float
    /// c, the affine offset (`m`; `−dmin·m_s` for Q4_K/Q5_K), `nil` for the symmetric types.
    public var offset: Float?

    /// The scale of value j.
    @inline(__always) public func scale(_ j: Int) -> Float { j < 16 ? lowScale : highScale }

    /// Value j, dequantised.
    @inline(__always) public func value(_ j: Int) -> Float {
        let p = scale(j) * Float(codes[j])
        return offset.map { p + $0 } ?? p
    }
}

/// Reference dequantisation of ggml blocks (scalar): the definition every weight kernel is held to.
public enum GGUFDequantizer {
    /// Dequantises `count` values of `type` from `raw` (which must hold them) into `out`.
    ///
    /// - Precondition: `count` is a multiple of the block size and `raw` holds its blocks.
    public static func dequantize(_ raw: UnsafeRawBufferPointer, type: GGMLType, count: Int, into out: UnsafeMutablePointer<Float>) {
        let blocks = count / type.blockSize
        precondition(count % type.blockSize == 0 && raw.count >= blocks * type.blockByteCount,
                     "GGUFDequantizer: \(raw.count) bytes cannot hold \(count) values of \(type)")
        switch type {
        case .f32:
            for i in 0..<count { out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .f16:
            for i in 0..<count { out[i] = half(raw, 2 * i) }
        default:
            for p in 0..<(count / 32) {
                let piece = piece(raw, type: type, index: p), o = out + 32 * p
                for j in 0..<32 { o[j] = piece.value(j) }
            }
        }
    }

    /// Piece `p` (values 32p ..< 32p + 32) of the blocks of `type` at the start of `raw`.
    ///
    /// - Precondition: `type` is block-quantised and `raw` holds the piece's block.
    public static func piece(_ raw: UnsafeRawBufferPointer, type: GGMLType, index p: Int) -> WeightPiece {
        precondition(type.isBlockQuantized, "GGUFDequantizer.piece: \(type) has no blocks")
        let perBlock = type.blockSize / 32, b = p / perBlock * type.blockByteCount
        precondition(p >= 0 && b + type.blockByteCount <= raw.count, "GGUFDequantizer.piece: piece \(p) of \(type) outside \(raw.count) bytes")
        var q = SIMD32<Int32>()
        func byte(_ o: Int) -> Int32 { Int32(raw[b + o]) }
        /// Low nibbles of 16 bytes at `o` as values 0..<16, high nibbles as 16..<32.
        func nibbles16(_ o: Int) {
            for j in 0..<16 { q[j] = byte(o + j) & 0xF; q[j + 16] = byte(o + j) >> 4 }
        }
        switch type {
        case .q8_0:
            for j in 0..<32 { q[j] = Int32(Int8(bitPattern: raw[b + 2 + j])) }
            let d = half(raw, b)
            return WeightPiece(codes: q, lowScale: d, highScale: d, offset: nil)
        case .q4_0:
            nibbles16(2)
            let d = half(raw, b)
            return WeightPiece(codes: q &- 8, lowScale: d, highScale: d, offset: nil)
        case .q4_1:
            nibbles16(4)
            let d = half(raw, b)
            return WeightPiece(codes: q, lowScale: d, highScale: d, offset: half(raw, b + 2))
        case .q5_0, .q5_1:
            let affine = type == .q5_1, h = affine ? 4 : 2
            nibbles16(h + 4)
            let bits = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: b + h, as: UInt32.self))
            for j in 0..<32 { q[j] |= Int32((bits >> UInt32(j)) & 1) << 4 }
            let d = half(raw, b)
            return affine ? WeightPiece(codes: q, lowScale: d, highScale: d, offset: half(raw, b + 2))
                          : WeightPiece(codes: q &- 16, lowScale: d, highScale: d, offset: nil)
        case .q4_K, .q5_K:
            let s = p % 8, k5 = type == .q5_K
            let codes = (k5 ? 48 : 16) + 32 * (s / 2), shift = Int32(4 * (s % 2))
            for j in 0..<32 { q[j] = (byte(codes + j) >> shift) & 0xF }
            if k5 { for j in 0..<32 { q[j] |= ((byte(16 + j) >> Int32(s)) & 1) << 4 } }
            let (sc, m) = scaleAndMinimum(raw, scalesAt: b + 4, subBlock: s)
            let a = half(raw, b) * Float(sc)
            return WeightPiece(codes: q, lowScale: a, highScale: a, offset: -(half(raw, b + 2) * Float(m)))
        case .q6_K:
            let c = p % 8, h = c / 4, k = c % 4
            let low = 64 * h + 32 * (k % 2), nibbleShift = Int32(4 * (k / 2)), high = 128 + 32 * h, pairShift = Int32(2 * k)
            for j in 0..<32 { q[j] = ((byte(low + j) >> nibbleShift) & 0xF) | ((byte(high + j) >> pairShift) & 3) << 4 }
            let d = half(raw, b + 208)
            let s0 = Int8(bitPattern: raw[b + 192 + 8 * h + 2 * k]), s1 = Int8(bitPattern: raw[b + 192 + 8 * h + 2 * k + 1])
            return WeightPiece(codes: q &- 32, lowScale: d * Float(s0), highScale: d * Float(s1), offset: nil)
        case .f32, .f16:
            preconditionFailure("unreachable")
        }
    }

    /// The 6-bit scale and minimum of sub-block `s` (0..<8) of a Q4_K/Q5_K super-block (ggml's
    /// `get_scale_min_k4`; the layout is in `GGMLType`).
    static func scaleAndMinimum(_ raw: UnsafeRawBufferPointer, scalesAt o: Int, subBlock s: Int) -> (scale: Int, minimum: Int) {
        let q = { (i: Int) in Int(raw[o + i]) }
        if s < 4 { return (q(s) & 63, q(s + 4) & 63) }
        return ((q(s + 4) & 0xF) | (q(s - 4) >> 6) << 4, (q(s + 4) >> 4) | (q(s) >> 6) << 4)
    }

    @inline(__always) static func half(_ raw: UnsafeRawBufferPointer, _ o: Int) -> Float {
        Float16Bits.halfToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: o, as: UInt16.self)))
    }
}
