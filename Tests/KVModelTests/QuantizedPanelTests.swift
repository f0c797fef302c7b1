import Foundation
@testable import KVModel
import KVQuantization
import Testing
import TestSupport

/// The prefill product with 16-bit activations (`WeightKernels.multiplyQuantized`) and the batch
/// quantisation it reads, against their twins (bit for bit, on every path this CPU runs), and the
/// twin against the FP64 product within its bound.
@Suite struct QuantizedPanelTests {
    /// `count` vectors of `columns` activations, vector t from family t mod 4, with blocks of
    /// zeros, of tiny values and one huge outlier channel mixed in.
    static func activations(count: Int, columns: Int, using g: inout SeededGenerator) -> [Float] {
        var x = [Float]()
        for t in 0..<count { x += RowFamily.allCases[t % RowFamily.allCases.count].row(columns, using: &g) }
        if count > 1 { for j in 0..<32 { x[columns + j] = 0 } }                       // a zero block
        if count > 2, columns >= 64 { for j in 32..<64 { x[2 * columns + j] = Float(j) * 0x1p-110 } }   // tiny: dx = 0
        if count > 3 { x[3 * columns + 5] = 3e4 }                                     // an outlier channel
        return x
    }

    struct Quantized { var codes: [Int16]; var scales: [Float]; var sums: [Float] }

    static func quantize(_ x: [Float], count: Int, columns: Int, path: WeightKernelPath) -> Quantized {
        var q = Quantized(codes: [Int16](repeating: 7, count: count * columns), scales: [Float](repeating: 7, count: count * columns / 32),
                          sums: [Float](repeating: 7, count: count * columns / 32))
        x.withUnsafeBufferPointer { xb in
            ActivationBlocks.quantize(xb.baseAddress!, count: count, columns: columns, codes: &q.codes, scales: &q.scales, sums: &q.sums, path: path)
        }
        return q
    }

    static func product(_ bytes: [UInt8], _ type: GGMLType, rows: Int, columns: Int, _ q: Quantized, count: Int, path: WeightKernelPath) -> [Float] {
        var y = [Float](repeating: .infinity, count: count * rows)
        bytes.withUnsafeBytes { raw in
            let w = WeightKernelTests.rows(raw, type, columns: columns)
            let panel = QuantizedPanel(rows: rows, columns: columns)
            defer { panel.deallocate() }
            WeightKernels.multiplyQuantized(w, first: 0, count: rows, codes: q.codes, scales: q.scales, sums: q.sums, tokens: count,
                                            into: &y, yStride: rows, panel: panel, path: path)
        }
        return y
    }

    /// The batch quantisation equals `ActivationBlocks` of each vector, on every path, bit for bit
    /// (NaN scales compared as NaN).
    @Test func batchQuantisationIsActivationBlocksOnEveryPath() {
        var g = SeededGenerator(seed: 9100)
        for (count, columns) in [(1, 32), (3, 64), (5, 576), (9, 96)] {
            var x = Self.activations(count: count, columns: columns, using: &g)
            if count >= 5 { x[4 * columns + 40] = .nan; x[4 * columns + 70] = .infinity }
            for path in WeightKernelPath.available {
                let q = Self.quantize(x, count: count, columns: columns, path: path)
                for t in 0..<count {
                    let a = x[(t * columns)..<((t + 1) * columns)].withContiguousStorageIfAvailable { ActivationBlocks($0) }!
                    let p = columns / 32
                    let codes = Array(q.codes[(t * columns)..<((t + 1) * columns)]) == a.codes
                    let scales = zip(q.scales[(t * p)..<((t + 1) * p)], a.scales).allSatisfy { $0.bitPattern == $1.bitPattern }
                    let sums = zip(q.sums[(t * p)..<((t + 1) * p)], a.sums).allSatisfy { $0.bitPattern == $1.bitPattern || ($0.isNaN && $1.isNaN) }
                    #expect(codes && scales && sums, "\(path) t \(t): codes \(codes) scales \(scales) sums \(sums), seed \(g.seed)")
                }
            }
        }
    }

    /// Every path gives the reference's bits, for every block type, row counts that are not
    /// multiples of the 8- and 16-row tiles, and vector counts around the 4- and 8-vector tiles.
    @Test func everyPathMatchesTheReferenceBitForBit() {
        for type in GGMLType.allCases where type.isBlockQuantized {
            var g = SeededGenerator(seed: 9200 + UInt64(type.rawValue))
            let columns = type.blockSize == 32 ? 96 : 256
            for (rows, count) in [(1, 2), (5, 3), (16, 4), (17, 8), (33, 13), (48, 9)] {
                let bytes = WeightKernelTests.randomRows(type, rows: rows, columns: columns, using: &g)
                let x = Self.activations(count: count, columns: columns, using: &g)
                let q = Self.quantize(x, count: count, columns: columns, path: .portable)
                let reference = Self.product(bytes, type, rows: rows, columns: columns, q, count: count, path: .portable)
                // The portable path is the reference itself, written per output:
                bytes.withUnsafeBytes { raw in
                    let w = WeightKernelTests.rows(raw, type, columns: columns)
                    let r = rows - 1, t = count - 1
                    let pieces = (0..<(columns / 32)).map { GGUFDequantizer.piece(w.bytes(from: r, count: 1), type: type, index: $0) }
                    let one = q.codes.withUnsafeBufferPointer { c in
                        WeightKernels.quantizedPanelDotReference(pieces, codes: c.baseAddress! + t * columns, scales: q.scales.withUnsafeBufferPointer { $0.baseAddress! + t * columns / 32 },
                                                                 sums: q.sums.withUnsafeBufferPointer { $0.baseAddress! + t * columns / 32 }, splitsHalves: type == .q6_K)
                    }
                    #expect(one.bitPattern == reference[t * rows + r].bitPattern)
                }
                for path in WeightKernelPath.available where path != .portable {
                    let y = Self.product(bytes, type, rows: rows, columns: columns, q, count: count, path: path)
                    let differing = zip(y, reference).enumerated().first { $0.element.0.bitPattern != $0.element.1.bitPattern }
                    let where_ = differing.map { "\($0.offset): \($0.element)" } ?? "-"
                    #expect(differing == nil, "\(type) \(path) rows \(rows) count \(count): first difference at \(where_), seed \(g.seed)")
                }
            }
        }
    }

    /// A NaN activation makes its vector's products NaN on every path (never a silent value), and
    /// leaves the other vectors' products as they were.
    @Test func aNaNActivationPoisonsOnlyItsVector() {
        var g = SeededGenerator(seed: 9300)
        let type = GGMLType.q5_0, rows = 16, columns = 96, count = 4
        let bytes = WeightKernelTests.randomRows(type, rows: rows, columns: columns, using: &g)
        var x = Self.activations(count: count, columns: columns, using: &g)
        for path in WeightKernelPath.available {
            let clean = Self.product(bytes, type, rows: rows, columns: columns, Self.quantize(x, count: count, columns: columns, path: path), count: count, path: path)
            x[2 * columns + 50] = .nan
            let y = Self.product(bytes, type, rows: rows, columns: columns, Self.quantize(x, count: count, columns: columns, path: path), count: count, path: path)
            x[2 * columns + 50] = 0.25
            let poisoned = y[(2 * rows)..<(3 * rows)].allSatisfy(\.isNaN)
            #expect(poisoned, "\(path)")
            for t in [0, 1, 3] {
                let same = Array(y[(t * rows)..<((t + 1) * rows)]) == Array(clean[(t * rows)..<((t + 1) * rows)])
                #expect(same, "\(path) t \(t)")
            }
        }
    }

    /// `quantizedPanelDotReference` within its documented bound of the FP64 product of the
    /// dequantised weights and the unquantised activations, on every block type and activation family.
    @Test func panelDotIsWithinItsBoundOfTheExactProduct() {
        let eps = 0x1p-24
        func gamma(_ m: Double) -> Double { m * eps / (1 - m * eps) }
        for type in GGMLType.allCases where type.isBlockQuantized {
            for (f, family) in RowFamily.allCases.enumerated() {
                var g = SeededGenerator(seed: 9400 + UInt64(type.rawValue) * 16 + UInt64(f))
                let columns = type.blockSize == 32 ? 576 : 512
                let bytes = WeightKernelTests.randomRows(type, rows: 1, columns: columns, using: &g)
                let x = family.row(columns, using: &g)
                let q = Self.quantize(x, count: 1, columns: columns, path: .portable)
                let y = Self.product(bytes, type, rows: 1, columns: columns, q, count: 1, path: .portable)[0]
                var exact = 0.0, quantization = 0.0, weightRounding = 0.0, sums = 0.0
                bytes.withUnsafeBytes { raw in
                    for b in 0..<(columns / 32) {
                        let piece = GGUFDequantizer.piece(raw, type: type, index: b)
                        let dx = Double(q.scales[b])
                        var absX = 0.0, dots = [0.0, 0.0]
                        for j in 0..<32 {
                            let xj = Double(x[32 * b + j]), what = Double(piece.scale(j)) * Double(piece.codes[j]), c = Double(piece.offset ?? 0)
                            exact += Double(piece.value(j)) * xj
                            quantization += abs(what) * (dx / 2 + 3 * eps * abs(xj))
                            weightRounding += 2 * eps * (abs(what) + abs(c)) * abs(xj)
                            absX += abs(xj)
                            dots[j / 16] += Double(piece.codes[j]) * Double(q.codes[32 * b + j])
                        }
                        // fl(I) and the product a·dx: |I|·ε each, inside the sums' γ below.
                        sums += abs(Double(piece.lowScale) * dx * dots[0]) + abs(Double(piece.highScale) * dx * dots[1])
                        if let c = piece.offset { sums += abs(Double(c)) * (abs(Double(q.sums[b])) + gamma(35) * absX) }
                    }
                }
                let bound = quantization + weightRounding + gamma(Double(2 * (columns / 32) + 2)) * sums
                #expect(abs(Double(y) - exact) <= bound, "\(type) \(family): error \(abs(Double(y) - exact)), bound \(bound), seed \(g.seed)")
            }
        }
    }
}
