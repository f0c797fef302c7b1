import Foundation
@testable import KVModel
import KVQuantization
import Testing
import TestSupport

/// Reads back files written by `GGUFWriter`: every metadata type, alignment, every tensor type.
@Suite struct GGUFReaderTests {
    static func sampleFile(alignment: Int = 32) -> [UInt8] {
        var w = GGUFWriter(alignment: alignment)
        w.set("general.architecture", .string("llama"))
        w.set("u8", .uint8(200)); w.set("i8", .int8(-5)); w.set("u16", .uint16(60000)); w.set("i16", .int16(-30000))
        w.set("u32", .uint32(4_000_000_000)); w.set("i32", .int32(-2_000_000_000)); w.set("f32", .float32(1.5))
        w.set("bool", .bool(true)); w.set("u64", .uint64(1 << 40)); w.set("i64", .int64(-(1 << 40))); w.set("f64", .float64(-2.25))
        w.set("utf8", .string("héllo ∑ 🙂"))
        w.set("strings", .array(elementType: .string, [.string("a"), .string(""), .string("Ġt")]))
        w.set("nested", .array(elementType: .array, [.array(elementType: .int32, [.int32(1), .int32(2)]), .array(elementType: .int32, [])]))
        var g = SeededGenerator(seed: 7)
        for type in GGMLType.allCases {
            let values = (0..<512).map { _ in Float(g.nextGaussian()) }
            w.addTensor("t.\(type)", shape: [256, 2], type: type, values: values)
        }
        return w.serialized()
    }

    @Test func metadataOfEveryTypeReadsBack() throws {
        let f = try GGUFFile(data: Data(Self.sampleFile()))
        #expect(f.version == 3)
        #expect(f["u8"] == .uint8(200) && f["i8"] == .int8(-5) && f["u16"] == .uint16(60000) && f["i16"] == .int16(-30000))
        #expect(f["u32"] == .uint32(4_000_000_000) && f["i32"] == .int32(-2_000_000_000) && f["f32"] == .float32(1.5))
        #expect(f["bool"] == .bool(true) && f["u64"] == .uint64(1 << 40) && f["i64"] == .int64(-(1 << 40)) && f["f64"] == .float64(-2.25))
        #expect(f["utf8"]?.string == "héllo ∑ 🙂")
        #expect(f["strings"]?.array?.compactMap(\.string) == ["a", "", "Ġt"])
        #expect(f["nested"]?.array?.first?.array?.compactMap(\.integer) == [1, 2])
        #expect(f["missing"] == nil)
        #expect(f.metadata.map(\.key).first == "general.architecture")
    }

    @Test(arguments: [32, 64, 256]) func tensorsRespectTheAlignment(alignment: Int) throws {
        let f = try GGUFFile(data: Data(Self.sampleFile(alignment: alignment)))
        #expect(f.alignment == alignment)
        #expect(f.dataOffset % alignment == 0)
        #expect(f.tensors.count == GGMLType.allCases.count)
        for t in f.tensors {
            #expect(t.offset % alignment == 0)
            #expect(t.shape == [256, 2] && t.rowLength == 256 && t.rowCount == 2)
        }
    }

    /// Round trips within each format's rounding bound: F32 exact, F16 relative 2⁻¹¹, the 32-value
    /// formats within half a step (d/2) of the block's range plus FP16 rounding of d (and m) and,
    /// for the symmetric ones, the clipped side (the largest |x| maps to −8 or −16, the other side
    /// stops one step short). The K-quants (`kQuantBound`) add the rounding of each sub-block's
    /// scale to 6 or 8 bits of the super-block's largest.
    @Test func everyTensorTypeDequantisesWithinItsBound() throws {
        var g = SeededGenerator(seed: 7)
        var originals = [GGMLType: [Float]]()
        for type in GGMLType.allCases { originals[type] = (0..<512).map { _ in Float(g.nextGaussian()) } }
        let f = try GGUFFile(data: Data(Self.sampleFile()))
        for type in GGMLType.allCases {
            let x = originals[type]!, y = try f.floats("t.\(type)")
            #expect(y.count == 512)
            if type.blockSize == 256 {
                for b in 0..<2 {
                    let block = Array(x[(256 * b)..<(256 * b + 256)])
                    for i in 0..<256 {
                        let bound = Self.kQuantBound(type, block, i)
                        #expect(abs(x[256 * b + i] - y[256 * b + i]) <= bound, "\(type) element \(256 * b + i): \(x[256 * b + i]) → \(y[256 * b + i]), bound \(bound)")
                    }
                }
                continue
            }
            for b in 0..<16 {
                let block = x[(b * 32)..<(b * 32 + 32)]
                let range = block.max()! - block.min()!, amax = block.map(abs).max()!
                let bound: Float = switch type {
                case .f32: 0
                case .f16: amax / 2048
                case .q8_0: amax / 127 / 2 * 1.01 + amax / 1024
                case .q4_0: amax / 8 / 2 * 1.01 + amax / 512 + amax / 8
                case .q4_1: range / 15 / 2 * 1.01 + range / 512 + amax / 1024
                case .q5_0: amax / 16 / 2 * 1.01 + amax / 1024 + amax / 16
                case .q5_1: range / 31 / 2 * 1.01 + range / 1024 + amax / 1024
                case .q4_K, .q5_K, .q6_K: .nan
                }
                for i in (b * 32)..<(b * 32 + 32) {
                    #expect(abs(x[i] - y[i]) <= bound, "\(type) element \(i): \(x[i]) → \(y[i]), bound \(bound)")
                }
            }
        }
    }

    /// The round-trip bound of element i of a K-quant super-block `x` through `GGUFWriter`'s encoder.
    ///
    /// Q4_K/Q5_K (top code T = 15 or 31): sub-block s has scale σ = (hi − lo)/T and minimum
    /// μ = −min(0, lo); the stored d·ls and dmin·lm are within δσ = σ_max·(1/126 + 2⁻¹¹) and
    /// δμ = μ_max·(1/126 + 2⁻¹¹) of them (6-bit rounding of σ/σ_max, FP16 of σ_max/63). A value in
    /// range rounds to within (σ + δσ)/2; one clipped at the top is within T·δσ + δμ, at the bottom
    /// δμ. Q6_K: sub-block i (16 values) has σ_i = max_i/−32 (max_i the value of largest magnitude),
    /// stored as d·sc_i within δ = |σ_max|/256 + 2⁻¹¹·|σ_i|; in range within (|σ_i| + δ)/2, clipped
    /// (at −32 or, for the other sign, +31) within |σ_i| + δ + 32·δ. Plus 1% for FP32 roundings.
    static func kQuantBound(_ type: GGMLType, _ x: [Float], _ i: Int) -> Float {
        let eps16: Float = 0x1p-11
        if type == .q6_K {
            let sigmas = (0..<16).map { abs(x[(16 * $0)..<(16 * $0 + 16)].map(abs).max()!) / 32 }
            let s = sigmas[i / 16], delta = sigmas.max()! / 256 + eps16 * s
            return (s + delta + 32 * delta) * 1.01
        }
        let top: Float = type == .q4_K ? 15 : 31
        let subs = (0..<8).map { x[(32 * $0)..<(32 * $0 + 32)] }
        let sigmas = subs.map { ($0.max()! - min(0, $0.min()!)) / top }, mus = subs.map { -min(0, $0.min()!) }
        let dSigma = sigmas.max()! * (1 / 126 + eps16), dMu = mus.max()! * (1 / 126 + eps16)
        let s = sigmas[i / 32]
        return max((s + dSigma) / 2, top * dSigma + dMu) * 1.01 + dMu
    }

    /// Hand-made blocks decode to the values ggml's `dequantize_row_*` defines.
    @Test func handMadeBlocksDecodeAsGGMLDefines() {
        func half(_ x: Float) -> [UInt8] { withUnsafeBytes(of: Float16Bits.floatToHalf(x).littleEndian) { Array($0) } }
        let nibbles: [UInt8] = (0..<16).map { UInt8($0) | UInt8(15 - $0) << 4 }
        var out = [Float](repeating: 0, count: 32)
        // Q4_1: d = 0.5, m = −1: low nibbles j, high nibbles 15 − j.
        let q41 = half(0.5) + half(-1) + nibbles
        q41.withUnsafeBytes { GGUFDequantizer.dequantize($0, type: .q4_1, count: 32, into: &out) }
        let low41: [Float] = (0..<16).map { Float($0) * 0.5 - 1 }, high41: [Float] = (0..<16).map { Float(15 - $0) * 0.5 - 1 }
        #expect(out == low41 + high41)
        // Q4_0: d = 2: (q − 8)·d.
        let q40 = half(2) + nibbles
        q40.withUnsafeBytes { GGUFDequantizer.dequantize($0, type: .q4_0, count: 32, into: &out) }
        let low40: [Float] = (0..<16).map { Float($0 - 8) * 2 }, high40: [Float] = (0..<16).map { Float(7 - $0) * 2 }
        #expect(out == low40 + high40)
        // Q8_0: d = 0.25, q = −16 ..< 16.
        let q80 = half(0.25) + (0..<32).map { UInt8(bitPattern: Int8($0 - 16)) }
        q80.withUnsafeBytes { GGUFDequantizer.dequantize($0, type: .q8_0, count: 32, into: &out) }
        let q8: [Float] = (0..<32).map { Float($0 - 16) * 0.25 }
        #expect(out == q8)
    }

    /// Blocks of the 5-bit and K formats built byte by byte from ggml's packing loops
    /// (`quantize_row_*_ref`), with codes at their extremes and scales at their limits, decode to
    /// what `dequantize_row_*` defines.
    @Test func handMadeFiveBitAndKBlocksDecodeAsGGMLDefines() {
        func half(_ x: Float) -> [UInt8] { withUnsafeBytes(of: Float16Bits.floatToHalf(x).littleEndian) { Array($0) } }
        func u32(_ x: UInt32) -> [UInt8] { withUnsafeBytes(of: x.littleEndian) { Array($0) } }
        func decode(_ bytes: [UInt8], _ type: GGMLType, _ n: Int) -> [Float] {
            var out = [Float](repeating: .nan, count: n)
            bytes.withUnsafeBytes { GGUFDequantizer.dequantize($0, type: type, count: n, into: &out) }
            return out
        }
        // Q5_0 / Q5_1: codes L_j = 31 − j (so both fifth-bit halves and all nibble values occur).
        let codes5 = (0..<32).map { UInt8(31 - $0) }
        var qh: UInt32 = 0
        for j in 0..<32 { qh |= UInt32(codes5[j] >> 4) << UInt32(j) }
        let qs5 = (0..<16).map { codes5[$0] & 0xF | (codes5[$0 + 16] & 0xF) << 4 }
        #expect(decode(half(0.5) + u32(qh) + qs5, .q5_0, 32) == codes5.map { Float(Int($0) - 16) * 0.5 })
        #expect(decode(half(0.25) + half(-3) + u32(qh) + qs5, .q5_1, 32) == codes5.map { Float($0) * 0.25 - 3 })
        // Zero scale: every value 0 whatever the codes.
        #expect(decode(half(0) + u32(qh) + qs5, .q5_0, 32).allSatisfy { $0 == 0 })

        // Q4_K / Q5_K: 6-bit scales ls_s = 63 − 5s and minima lm_s = 7s (both high-bit halves used), codes
        // L_i = (i·7) mod 16 (mod 32 for Q5_K), d = 0.125, dmin = 0.5.
        let ls = (0..<8).map { UInt8(63 - 5 * $0) }, lm = (0..<8).map { UInt8(7 * $0) }
        var scales = [UInt8](repeating: 0, count: 12)
        for j in 0..<8 {
            if j < 4 {
                scales[j] = ls[j]
                scales[j + 4] = lm[j]
            } else {
                scales[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4)
                scales[j - 4] |= (ls[j] >> 4) << 6
                scales[j] |= (lm[j] >> 4) << 6
            }
        }
        for type in [GGMLType.q4_K, .q5_K] {
            let top = type == .q4_K ? 16 : 32
            let L = (0..<256).map { UInt8(($0 * 7) % top) }
            var q = [UInt8]()
            for j in stride(from: 0, to: 256, by: 64) { for l in 0..<32 { q.append(L[j + l] & 0xF | (L[j + l + 32] & 0xF) << 4) } }
            var high = [UInt8](repeating: 0, count: 32)
            for i in 0..<256 where L[i] >= 16 { high[i % 32] |= 1 << UInt8(i / 32) }
            let bytes = half(0.125) + half(0.5) + scales + (type == .q5_K ? high : []) + q
            let expected = (0..<256).map { i in (0.125 * Float(ls[i / 32])) * Float(L[i]) - 0.5 * Float(lm[i / 32]) }
            #expect(decode(bytes, type, 256) == expected, "\(type)")
        }

        // Q6_K: codes L_i = (i·5) mod 64 (−32…31 after the offset), scales −128…127 spread, d = 2⁻⁶.
        let L6 = (0..<256).map { UInt8(($0 * 5) % 64) }
        let sc6: [Int8] = [-128, 127, -1, 1, 0, 64, -64, 33, 5, -7, 100, -100, 12, -12, 2, 3]
        var ql = [UInt8](repeating: 0, count: 128), qh6 = [UInt8](repeating: 0, count: 64)
        for (h, j) in stride(from: 0, to: 256, by: 128).enumerated() {
            for l in 0..<32 {
                let q1 = L6[j + l] & 0xF, q2 = L6[j + l + 32] & 0xF, q3 = L6[j + l + 64] & 0xF, q4 = L6[j + l + 96] & 0xF
                ql[64 * h + l] = q1 | (q3 << 4)
                ql[64 * h + l + 32] = q2 | (q4 << 4)
                qh6[32 * h + l] = (L6[j + l] >> 4) | ((L6[j + l + 32] >> 4) << 2) | ((L6[j + l + 64] >> 4) << 4) | ((L6[j + l + 96] >> 4) << 6)
            }
        }
        let q6 = ql + qh6 + sc6.map { UInt8(bitPattern: $0) } + half(0x1p-6)
        #expect(decode(q6, .q6_K, 256) == (0..<256).map { i in (0x1p-6 * Float(sc6[i / 16])) * Float(Int(L6[i]) - 32) })

        // Q8_0 at its limits: −128 and 127 codes, the largest FP16 scale.
        let q8 = half(65504) + [UInt8(bitPattern: -128), 127] + [UInt8](repeating: 0, count: 30)
        let limits: [Float] = [-128 * 65504, 127 * 65504, 0]
        #expect(Array(decode(q8, .q8_0, 32).prefix(3)) == limits)
    }
}
