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
            let values = (0..<128).map { _ in Float(g.nextGaussian()) }
            w.addTensor("t.\(type)", shape: [64, 2], type: type, values: values)
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
            #expect(t.shape == [64, 2] && t.rowLength == 64 && t.rowCount == 2)
        }
    }

    /// Round trips within each format's rounding bound: F32 exact, F16 relative 2⁻¹¹, the block
    /// formats within half a step (d/2) of the block's range plus FP16 rounding of d (and m).
    @Test func everyTensorTypeDequantisesWithinItsBound() throws {
        var g = SeededGenerator(seed: 7)
        var originals = [GGMLType: [Float]]()
        for type in GGMLType.allCases { originals[type] = (0..<128).map { _ in Float(g.nextGaussian()) } }
        let f = try GGUFFile(data: Data(Self.sampleFile()))
        for type in GGMLType.allCases {
            let x = originals[type]!, y = try f.floats("t.\(type)")
            #expect(y.count == 128)
            for b in 0..<4 {
                let block = x[(b * 32)..<(b * 32 + 32)]
                let range = block.max()! - block.min()!, amax = block.map(abs).max()!
                let bound: Float = switch type {
                case .f32: 0
                case .f16: amax / 2048
                case .q8_0: amax / 127 / 2 * 1.01 + amax / 1024
                case .q4_0: amax / 8 / 2 * 1.01 + amax / 512 + amax / 8  // asymmetric range: the largest |x| maps to −8, the other side clips at +7
                case .q4_1: range / 15 / 2 * 1.01 + range / 512 + amax / 1024
                }
                for i in (b * 32)..<(b * 32 + 32) {
                    #expect(abs(x[i] - y[i]) <= bound, "\(type) element \(i): \(x[i]) → \(y[i]), bound \(bound)")
                }
            }
        }
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
}
