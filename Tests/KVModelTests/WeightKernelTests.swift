import Foundation
@testable import KVModel
import KVQuantization
import Testing
import TestSupport

/// The weight kernels against their twins (bit for bit, on every path this CPU runs) and their
/// twins against FP64 products (within the derived bounds).
@Suite struct WeightKernelTests {
    /// Byte offsets of the FP16 scale fields in one block of each type (the rest are codes).
    static func halfFields(_ type: GGMLType) -> [Int] {
        switch type {
        case .f32, .f16: []
        case .q8_0, .q4_0, .q5_0: [0]
        case .q4_1, .q5_1, .q4_K, .q5_K: [0, 2]
        case .q6_K: [208]
        }
    }

    /// `rows` random rows of `columns` values of `type`: random code bytes (every bit pattern), finite
    /// FP16 scales of random magnitude (2⁻¹² … 2) and sign, one block in eight with a zero scale;
    /// F32/F16 values Gaussian with outliers.
    static func randomRows(_ type: GGMLType, rows: Int, columns: Int, using g: inout SeededGenerator) -> [UInt8] {
        var values = [Float]()
        switch type {
        case .f32, .f16:
            values = RowFamily.outlierChannels.row(rows * columns, using: &g)
            return GGUFWriter.encode(values, as: type)
        default:
            var bytes = (0..<(rows * columns / type.blockSize * type.blockByteCount)).map { _ in UInt8.random(in: 0...255, using: &g) }
            for b in stride(from: 0, to: bytes.count, by: type.blockByteCount) {
                for f in halfFields(type) {
                    let x: Float = Int.random(in: 0..<8, using: &g) == 0 ? 0
                        : Float.random(in: 0.5...1, using: &g) * Float(pow(2.0, Double(Int.random(in: -12...1, using: &g)))) * (Bool.random(using: &g) ? 1 : -1)
                    withUnsafeBytes(of: Float16Bits.floatToHalf(x).littleEndian) { bytes.replaceSubrange((b + f)..<(b + f + 2), with: $0) }
                }
            }
            return bytes
        }
    }

    /// Row lengths to test per type: odd ones for the float types, one and several blocks otherwise.
    static func columnCounts(_ type: GGMLType) -> [Int] {
        switch type.blockSize {
        case 1: [1, 7, 8, 13, 64, 100]
        case 32: [32, 96, 576]
        default: [256, 512]
        }
    }

    static func rows(_ bytes: UnsafeRawBufferPointer, _ type: GGMLType, columns: Int) -> UnsafeWeightRows {
        UnsafeWeightRows(type: type, columns: columns, rowByteCount: columns / type.blockSize * type.blockByteCount, base: bytes.baseAddress!)
    }

    static func dequantized(_ bytes: [UInt8], _ type: GGMLType, count: Int) -> [Float] {
        var out = [Float](repeating: 0, count: count)
        bytes.withUnsafeBytes { GGUFDequantizer.dequantize($0, type: type, count: count, into: &out) }
        return out
    }

    @Test func dequantisationMatchesTheReferenceOnEveryPath() {
        for path in WeightKernelPath.available {
            for type in GGMLType.allCases {
                for columns in Self.columnCounts(type) {
                    var g = SeededGenerator(seed: UInt64(type.rawValue) * 1000 + UInt64(columns))
                    let rowCount = 5
                    let bytes = Self.randomRows(type, rows: rowCount, columns: columns, using: &g)
                    let expected = Self.dequantized(bytes, type, count: rowCount * columns)
                    var out = [Float](repeating: .nan, count: rowCount * columns)
                    bytes.withUnsafeBytes { raw in
                        WeightKernels.dequantize(Self.rows(raw, type, columns: columns), first: 0, count: rowCount, into: &out, stride: columns, path: path)
                    }
                    #expect(out.map(\.bitPattern) == expected.map(\.bitPattern), "\(path) \(type) × \(columns), seed \(g.seed)")
                }
            }
        }
    }

    /// One-vector products: the FP32 one against `dotReference` of the dequantised row, the 16-bit one
    /// against `quantizedDotReference`, bit for bit, over row counts that exercise the 4-row groups
    /// and their tails.
    @Test func vectorProductsMatchTheirTwinsOnEveryPath() {
        for path in WeightKernelPath.available {
            for type in GGMLType.allCases {
                for columns in Self.columnCounts(type) {
                    var g = SeededGenerator(seed: 77 + UInt64(type.rawValue) * 1000 + UInt64(columns))
                    let rowCount = 9
                    let bytes = Self.randomRows(type, rows: rowCount, columns: columns, using: &g)
                    let w = Self.dequantized(bytes, type, count: rowCount * columns)
                    let x = RowFamily.allCases[Int(g.seed % 8)].row(columns, using: &g)
                    let expected = (0..<rowCount).map { r in WeightKernels.dotReference(Array(w[(r * columns)..<((r + 1) * columns)]), x) }
                    var y = [Float](repeating: .nan, count: rowCount)
                    bytes.withUnsafeBytes { raw in
                        WeightKernels.multiplyVector(Self.rows(raw, type, columns: columns), first: 0, count: rowCount, x: x, into: &y, path: path)
                    }
                    #expect(y.map(\.bitPattern) == expected.map(\.bitPattern), "FP32 \(path) \(type) × \(columns), seed \(g.seed)")
                    guard type.isBlockQuantized else { continue }
                    let a = x.withUnsafeBufferPointer { ActivationBlocks($0) }
                    let rowBytes = columns / type.blockSize * type.blockByteCount
                    let expectedQ = (0..<rowCount).map { r in
                        Array(bytes[(r * rowBytes)..<((r + 1) * rowBytes)]).withUnsafeBytes { WeightKernels.quantizedDotReference($0, type: type, x: a) }
                    }
                    bytes.withUnsafeBytes { raw in
                        WeightKernels.multiplyQuantizedVector(Self.rows(raw, type, columns: columns), first: 0, count: rowCount, x: a, into: &y, path: path)
                    }
                    #expect(y.map(\.bitPattern) == expectedQ.map(\.bitPattern), "16-bit \(path) \(type) × \(columns), seed \(g.seed)")
                }
            }
        }
    }

    @Test func tiledProductMatchesTheTwinOnEveryPath() {
        var g = SeededGenerator(seed: 5)
        for path in WeightKernelPath.available {
            for (rows, columns, count) in [(1, 1, 1), (7, 13, 5), (3, 8, 4), (16, 64, 9), (5, 100, 2), (2, 7, 13), (6, 576, 7)] {
                let w = RowFamily.gaussian.row(rows * columns, using: &g), x = RowFamily.heavyTail.row(count * columns, using: &g)
                var y = [Float](repeating: .nan, count: rows * count)
                WeightKernels.multiply(w, wStride: columns, rows: rows, columns: columns, x: x, xStride: columns, count: count,
                                       into: &y, yStride: rows, path: path)
                for t in 0..<count {
                    for r in 0..<rows {
                        let e = WeightKernels.dotReference(Array(w[(r * columns)..<((r + 1) * columns)]), Array(x[(t * columns)..<((t + 1) * columns)]))
                        #expect(y[t * rows + r].bitPattern == e.bitPattern, "\(path) \(rows)×\(columns)×\(count) at (\(t), \(r)), seed \(g.seed)")
                    }
                }
            }
        }
    }

    /// `dotReference` within γ_{n/8+3}·Σ|w·x| of the FP64 product.
    @Test func fp32DotIsWithinItsBoundOfTheExactProduct() {
        let eps = 0x1p-24
        for family in RowFamily.allCases {
            forEachSeededCase(20, base: 900) { g in
                let n = [1, 7, 64, 576, 1536][Int(g.seed % 5)]
                let w = RowFamily.gaussian.row(n, using: &g), x = family.row(n, using: &g)
                let exact = zip(w, x).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
                let magnitude = zip(w, x).reduce(0.0) { $0 + abs(Double($1.0) * Double($1.1)) }
                let m = Double(n / 8 + 3), gamma = m * eps / (1 - m * eps)
                let err = abs(Double(WeightKernels.dotReference(w, x)) - exact)
                #expect(err <= gamma * magnitude, "\(family) n \(n): error \(err), bound \(gamma * magnitude), seed \(g.seed)")
            }
        }
    }

    /// `quantizedDotReference` within its documented bound of the FP64 product of the dequantised
    /// weights and the unquantised activations, on every block type and activation family.
    @Test func quantizedDotIsWithinItsBoundOfTheExactProduct() {
        let eps = 0x1p-24
        func gamma(_ m: Double) -> Double { m * eps / (1 - m * eps) }
        for type in GGMLType.allCases where type.isBlockQuantized {
            for (f, family) in RowFamily.allCases.enumerated() {
                var g = SeededGenerator(seed: 4000 + UInt64(type.rawValue) * 16 + UInt64(f))
                let columns = type.blockSize == 32 ? 576 : 512
                let bytes = Self.randomRows(type, rows: 1, columns: columns, using: &g)
                let x = family.row(columns, using: &g)
                let a = x.withUnsafeBufferPointer { ActivationBlocks($0) }
                let y = bytes.withUnsafeBytes { WeightKernels.quantizedDotReference($0, type: type, x: a) }
                var exact = 0.0, quantization = 0.0, weightRounding = 0.0, sums = 0.0
                bytes.withUnsafeBytes { raw in
                    for b in 0..<(columns / 32) {
                        let piece = GGUFDequantizer.piece(raw, type: type, index: b)
                        let dx = Double(a.scales[b])
                        var absX = 0.0
                        for j in 0..<32 {
                            let xj = Double(x[32 * b + j]), what = Double(piece.scale(j)) * Double(piece.codes[j]), c = Double(piece.offset ?? 0)
                            exact += Double(piece.value(j)) * xj
                            quantization += abs(what) * (dx / 2 + 3 * eps * abs(xj))
                            weightRounding += 2 * eps * (abs(what) + abs(c)) * abs(xj)
                            absX += abs(xj)
                        }
                        for l in 0..<8 {
                            var dot = 0.0
                            for j in (4 * l)..<(4 * l + 4) { dot += Double(piece.codes[j]) * Double(a.codes[32 * b + j]) }
                            sums += abs(Double(piece.scale(4 * l)) * dx * dot)
                        }
                        if let c = piece.offset { sums += abs(Double(c)) * (abs(Double(a.sums[b])) + gamma(35) * absX) }
                    }
                }
                let bound = quantization + weightRounding + gamma(Double(2 * (columns / 32) + 5)) * sums
                #expect(abs(Double(y) - exact) <= bound, "\(type) \(family): error \(abs(Double(y) - exact)), bound \(bound), seed \(g.seed)")
            }
        }
    }

    @Test func activationBlocksHandleZeroTinyAndNonFiniteBlocks() {
        var x = [Float](repeating: 0, count: 128)
        for j in 32..<64 { x[j] = Float(j - 48) * 0x1p-101 }      // tiny: m < 2⁻⁹⁶
        for j in 64..<96 { x[j] = Float(j - 80) }                 // codes up to ±32767 at the largest |x|
        x[100] = .nan
        let a = x.withUnsafeBufferPointer { ActivationBlocks($0) }
        #expect(a.scales[0] == 0 && a.scales[1] == 0 && a.codes[0..<64].allSatisfy { $0 == 0 })
        #expect(a.sums[1] == Float((32..<64).reduce(0) { $0 + ($1 - 48) }) * 0x1p-101)
        #expect(a.scales[2] == 16 / 32767 && a.codes[64] == -32767 && a.codes[95] == Int16((15 * (32767 / Float(16))).rounded(.toNearestOrEven)))
        #expect(a.scales[3].isNaN && a.codes[96..<128].allSatisfy { $0 == 0 })
        // A NaN activation makes the product NaN (never a silent value).
        let bytes = GGUFWriter.encode([Float](repeating: 1, count: 128), as: .q8_0)
        for path in WeightKernelPath.available {
            var y: Float = 0
            bytes.withUnsafeBytes { raw in
                WeightKernels.multiplyQuantizedVector(Self.rows(raw, .q8_0, columns: 128), first: 0, count: 1, x: a, into: &y, path: path)
            }
            #expect(y.isNaN, "\(path)")
        }
    }
}
