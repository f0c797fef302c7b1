import Foundation
import KVQuantization

/// Writes GGUF (version 3) files: metadata of any type and tensors in any `GGMLType`.
///
/// Used by the tests to build small synthetic models, and by tools that want to save one. The
/// block formats are quantised with ggml's reference rounding (`quantize_row_*_ref`).
package struct GGUFWriter: Sendable {
    private var metadata: [(String, GGUFValue)] = []
    private var tensors: [(name: String, shape: [Int], type: GGMLType, bytes: [UInt8])] = []
    /// The alignment of tensor data; written as `general.alignment` when not 32.
    public var alignment: Int

    public init(alignment: Int = 32) {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "GGUFWriter: alignment must be a power of two")
        self.alignment = alignment
    }

    /// Adds a metadata entry.
    public mutating func set(_ key: String, _ value: GGUFValue) { metadata.append((key, value)) }

    /// Adds a tensor of `shape` (innermost first, as ggml's `ne`) holding `values` encoded as `type`.
    ///
    /// - Precondition: `values.count` is the product of `shape` and `shape[0]` a multiple of the
    ///   block size.
    public mutating func addTensor(_ name: String, shape: [Int], type: GGMLType, values: [Float]) {
        precondition(values.count == shape.reduce(1, *), "GGUFWriter.addTensor: \(values.count) values for shape \(shape)")
        precondition(shape[0] % type.blockSize == 0, "GGUFWriter.addTensor: row length \(shape[0]) not a multiple of \(type.blockSize)")
        tensors.append((name, shape, type, Self.encode(values, as: type)))
    }

    /// Adds a tensor from raw bytes (not checked: lets tests write malformed files).
    public mutating func addRawTensor(_ name: String, shape: [Int], type: GGMLType, bytes: [UInt8]) {
        tensors.append((name, shape, type, bytes))
    }

    /// The file's bytes.
    public func serialized() -> [UInt8] {
        var out = [UInt8]()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func str(_ s: String) { u64(UInt64(s.utf8.count)); out += s.utf8 }
        func value(_ v: GGUFValue) {
            switch v {
            case .uint8(let x): out.append(x)
            case .int8(let x): out.append(UInt8(bitPattern: x))
            case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { out += $0 }
            case .int16(let x): withUnsafeBytes(of: x.littleEndian) { out += $0 }
            case .uint32(let x): u32(x)
            case .int32(let x): u32(UInt32(bitPattern: x))
            case .float32(let x): u32(x.bitPattern)
            case .bool(let x): out.append(x ? 1 : 0)
            case .string(let s): str(s)
            case .uint64(let x): u64(x)
            case .int64(let x): u64(UInt64(bitPattern: x))
            case .float64(let x): u64(x.bitPattern)
            case .array(let t, let a):
                u32(t.rawValue)
                u64(UInt64(a.count))
                for e in a { value(e) }
            }
        }
        var entries = metadata
        if alignment != 32, !entries.contains(where: { $0.0 == "general.alignment" }) {
            entries.insert(("general.alignment", .uint32(UInt32(alignment))), at: 0)
        }
        out += Array("GGUF".utf8)
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(entries.count))
        for (k, v) in entries {
            str(k)
            u32(Self.type(of: v).rawValue)
            value(v)
        }
        var offset = 0
        var offsets = [Int]()
        for t in tensors {
            offsets.append(offset)
            offset = (offset + t.bytes.count + alignment - 1) / alignment * alignment
        }
        for (t, o) in zip(tensors, offsets) {
            str(t.name)
            u32(UInt32(t.shape.count))
            for d in t.shape { u64(UInt64(d)) }
            u32(t.type.rawValue)
            u64(UInt64(o))
        }
        while out.count % alignment != 0 { out.append(0) }
        let start = out.count
        for (t, o) in zip(tensors, offsets) {
            while out.count < start + o { out.append(0) }
            out += t.bytes
        }
        while out.count % alignment != 0 { out.append(0) }
        return out
    }

    /// Writes the file to `url`.
    public func write(to url: URL) throws {
        try Data(serialized()).write(to: url, options: .atomic)
    }

    static func type(of v: GGUFValue) -> GGUFValueType {
        switch v {
        case .uint8: .uint8
        case .int8: .int8
        case .uint16: .uint16
        case .int16: .int16
        case .uint32: .uint32
        case .int32: .int32
        case .float32: .float32
        case .bool: .bool
        case .string: .string
        case .uint64: .uint64
        case .int64: .int64
        case .float64: .float64
        case .array: .array
        }
    }

    /// Encodes `values` as `type`: the 32-value formats with ggml's reference rounding
    /// (`quantize_row_*_ref`), the K-quants with a plain version of its scheme (each sub-block's
    /// scale from its range, no search for the best scale; the codes then rounded to nearest with
    /// the stored scales, as ggml's last pass does).
    public static func encode(_ values: [Float], as type: GGMLType) -> [UInt8] {
        var out = [UInt8]()
        func half(_ x: Float) { withUnsafeBytes(of: Float16Bits.floatToHalf(x).littleEndian) { out += $0 } }
        func u32(_ x: UInt32) { withUnsafeBytes(of: x.littleEndian) { out += $0 } }
        /// The value of largest magnitude (the first of equal ones), as ggml's `max`.
        func signedMax(_ block: ArraySlice<Float>) -> Float {
            var amax: Float = 0, maxv: Float = 0
            for v in block where abs(v) > amax { amax = abs(v); maxv = v }
            return maxv
        }
        func nearest(_ x: Float) -> Int { Int(max(-1e9, min(1e9, x)).rounded(.toNearestOrEven)) }
        switch type {
        case .f32: for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
        case .f16: for v in values { half(v) }
        case .q8_0:
            for b in stride(from: 0, to: values.count, by: 32) {
                let block = values[b..<(b + 32)]
                let amax = block.map(abs).max()!
                let d = amax / 127, id: Float = d != 0 ? 1 / d : 0
                half(d)
                for v in block { out.append(UInt8(bitPattern: Int8((v * id).rounded()))) }
            }
        case .q4_0:
            for b in stride(from: 0, to: values.count, by: 32) {
                let block = Array(values[b..<(b + 32)])
                let d = signedMax(block[...]) / -8, id: Float = d != 0 ? 1 / d : 0
                half(d)
                func q(_ x: Float) -> UInt8 { UInt8(min(15, Int8(x * id + 8.5))) }
                for j in 0..<16 { out.append(q(block[j]) | q(block[j + 16]) << 4) }
            }
        case .q4_1:
            for b in stride(from: 0, to: values.count, by: 32) {
                let block = Array(values[b..<(b + 32)])
                let lo = block.min()!, hi = block.max()!
                let d = (hi - lo) / 15, id: Float = d != 0 ? 1 / d : 0
                half(d)
                half(lo)
                func q(_ x: Float) -> UInt8 { UInt8(min(15, Int8((x - lo) * id + 0.5))) }
                for j in 0..<16 { out.append(q(block[j]) | q(block[j + 16]) << 4) }
            }
        case .q5_0, .q5_1:
            for b in stride(from: 0, to: values.count, by: 32) {
                let block = Array(values[b..<(b + 32)])
                var codes = [UInt8](repeating: 0, count: 32)
                if type == .q5_0 {
                    let d = signedMax(block[...]) / -16, id: Float = d != 0 ? 1 / d : 0
                    half(d)
                    for j in 0..<32 { codes[j] = UInt8(min(31, Int8(block[j] * id + 16.5))) }
                } else {
                    let lo = block.min()!, hi = block.max()!
                    let d = (hi - lo) / 31, id: Float = d != 0 ? 1 / d : 0
                    half(d)
                    half(lo)
                    for j in 0..<32 { codes[j] = UInt8((block[j] - lo) * id + 0.5) }
                }
                var bits: UInt32 = 0
                for j in 0..<32 { bits |= UInt32(codes[j] >> 4) << UInt32(j) }
                u32(bits)
                for j in 0..<16 { out.append(codes[j] & 0xF | (codes[j + 16] & 0xF) << 4) }
            }
        case .q4_K, .q5_K:
            let top: Float = type == .q4_K ? 15 : 31
            for b in stride(from: 0, to: values.count, by: 256) {
                let x = Array(values[b..<(b + 256)])
                // Sub-block s: x ≈ scale·q − minimum with minimum = −min(0, min x) ≥ 0.
                var scales = [Float](repeating: 0, count: 8), minima = scales
                for s in 0..<8 {
                    let sub = x[(32 * s)..<(32 * s + 32)]
                    let lo = min(0, sub.min()!), hi = sub.max()!
                    scales[s] = (hi - lo) / top
                    minima[s] = -lo
                }
                let maxScale = scales.max()!, maxMinimum = minima.max()!
                let inverseScale: Float = maxScale > 0 ? 63 / maxScale : 0, inverseMinimum: Float = maxMinimum > 0 ? 63 / maxMinimum : 0
                let ls = scales.map { UInt8(min(63, nearest(inverseScale * $0))) }, lm = minima.map { UInt8(min(63, nearest(inverseMinimum * $0))) }
                var packed = [UInt8](repeating: 0, count: 12)
                for s in 0..<8 {
                    if s < 4 {
                        packed[s] = ls[s]
                        packed[s + 4] = lm[s]
                    } else {
                        packed[s + 4] = ls[s] & 0xF | (lm[s] & 0xF) << 4
                        packed[s - 4] |= (ls[s] >> 4) << 6
                        packed[s] |= (lm[s] >> 4) << 6
                    }
                }
                let d = Float16Bits.halfToFloat(Float16Bits.floatToHalf(maxScale / 63))
                let dmin = Float16Bits.halfToFloat(Float16Bits.floatToHalf(maxMinimum / 63))
                half(d)
                half(dmin)
                out += packed
                var codes = [UInt8](repeating: 0, count: 256)
                for s in 0..<8 {
                    let d1 = d * Float(ls[s]), m1 = dmin * Float(lm[s])
                    guard d1 != 0 else { continue }
                    for i in 0..<32 { codes[32 * s + i] = UInt8(max(0, min(Int(top), nearest((x[32 * s + i] + m1) / d1)))) }
                }
                if type == .q5_K {
                    var high = [UInt8](repeating: 0, count: 32)
                    for s in 0..<8 { for l in 0..<32 { high[l] |= (codes[32 * s + l] >> 4) << UInt8(s) } }
                    out += high
                }
                for pair in 0..<4 {
                    for l in 0..<32 { out.append(codes[64 * pair + l] & 0xF | (codes[64 * pair + 32 + l] & 0xF) << 4) }
                }
            }
        case .q6_K:
            for b in stride(from: 0, to: values.count, by: 256) {
                let x = Array(values[b..<(b + 256)])
                // Sub-block i (16 values): x ≈ scale·q, q in −32…31, the largest |x| at −32.
                let scales = (0..<16).map { i in signedMax(x[(16 * i)..<(16 * i + 16)]) / -32 }
                let maxScale = signedMax(scales[...])
                guard abs(maxScale) >= 1e-15 else { out += [UInt8](repeating: 0, count: 210); continue }
                let inverse = -128 / maxScale
                let d = Float16Bits.halfToFloat(Float16Bits.floatToHalf(1 / inverse))
                let sc = scales.map { Int8(min(127, nearest(inverse * $0))) }
                var codes = [UInt8](repeating: 32, count: 256)
                for i in 0..<16 {
                    let di = d * Float(sc[i])
                    guard di != 0 else { continue }
                    for l in 0..<16 { codes[16 * i + l] = UInt8(max(-32, min(31, nearest(x[16 * i + l] / di))) + 32) }
                }
                var low = [UInt8](repeating: 0, count: 128), high = [UInt8](repeating: 0, count: 64)
                for h in 0..<2 {
                    for l in 0..<32 {
                        let c = (0..<4).map { codes[128 * h + 32 * $0 + l] }
                        low[64 * h + l] = c[0] & 0xF | (c[2] & 0xF) << 4
                        low[64 * h + 32 + l] = c[1] & 0xF | (c[3] & 0xF) << 4
                        high[32 * h + l] = c[0] >> 4 | (c[1] >> 4) << 2 | (c[2] >> 4) << 4 | (c[3] >> 4) << 6
                    }
                }
                out += low
                out += high
                out += sc.map { UInt8(bitPattern: $0) }
                half(d)
            }
        }
        return out
    }
}
