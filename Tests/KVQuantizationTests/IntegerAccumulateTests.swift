import Foundation
import Testing
import TestSupport
@testable import KVQuantization

/// The integer-domain value accumulation (`PageKernels.accumulateInteger`, AVX-512 VNNI + VBMI) on
/// the current kernel path (the C kernel where integer values run and the shape allows, else the
/// twin) against its Swift twin bit for bit, and the twin against the exact weighted sum within the
/// bound derived in its documentation.
@Suite struct IntegerAccumulateTests {
    static let u = 0x1p-24
    static let formats: [StorageFormat] = [.int4, .grouped(.int4, groupSize: 64), .grouped(.int4, groupSize: 128),
                                           .grouped(.int8, groupSize: 16), .grouped(.int8, groupSize: 32), .int8,
                                           .grouped(.int8, groupSize: 128)]

    /// A random page of value rows: gaussian rows of random spread, plus the nasty ones (constant
    /// rows, zeros, an outlier channel, huge ranges).
    static func page(_ codec: RowCodec, _ n: Int, using g: inout SeededGenerator) throws -> [UInt8] {
        let d = codec.headDim
        var bytes = [UInt8]()
        for _ in 0..<n {
            var x: [Float]
            switch Int.random(in: 0..<8, using: &g) {
            case 0: x = [Float](repeating: Float.random(in: -3...3, using: &g), count: d)
            case 1: x = [Float](repeating: 0, count: d)
            case 2:
                x = (0..<d).map { _ in Float(g.nextGaussian()) }
                x[Int.random(in: 0..<d, using: &g)] = Float.random(in: -400...400, using: &g)
            case 3: x = (0..<d).map { _ in Float.random(in: -60000...60000, using: &g) }
            default:
                let sigma = Float.random(in: 0.01...10, using: &g)
                x = (0..<d).map { _ in Float(g.nextGaussian()) * sigma }
            }
            bytes += try codec.encode(x)
        }
        return bytes
    }

    /// Softmax-like weights with zeros, tiny values and exact ones.
    static func weights(_ count: Int, using g: inout SeededGenerator) -> [Float] {
        let mode = Int.random(in: 0..<5, using: &g)
        return (0..<count).map { _ in
            switch mode {
            case 0: return 0
            case 1: return Float.random(in: 0...1e-30, using: &g)
            default:
                let r = Int.random(in: 0..<10, using: &g)
                return r == 0 ? 0 : r == 1 ? 1 : Float.random(in: 0...1, using: &g)
            }
        }
    }

    static func run(_ codec: RowCodec, _ w: [Float], rows: Int, stride: Int, _ values: [UInt8], n: Int,
                    _ out: inout [Float], accelerated: Bool) {
        w.withUnsafeBufferPointer { wp in
            values.withUnsafeBytes { vp in
                out.withUnsafeMutableBufferPointer {
                    if accelerated {
                        PageKernels.accumulateInteger(codec, weights: wp.baseAddress!, rowCount: rows, stride: stride,
                                                      rows: vp.baseAddress!, tokenCount: n, into: $0.baseAddress!)
                    } else {
                        PageKernels.accumulateIntegerReference(codec, weights: wp.baseAddress!, rowCount: rows, stride: stride,
                                                               rows: vp.baseAddress!, tokenCount: n, into: $0.baseAddress!)
                    }
                }
            }
        }
    }

    @Test func kernelEqualsReferenceBitForBit() throws {
        try forEachSeededCase(60, base: 7100) { g in
            let format = Self.formats.randomElement(using: &g)!
            guard case .grouped(_, let gs) = format else { return }
            // Every head dim the format allows: the kernel's shapes (where it runs) and others.
            let d = [64, 128, 256].filter { $0 % gs == 0 }.randomElement(using: &g)!
            let rows = Int.random(in: 1...5, using: &g), n = [1, 3, 4, 31, 32, 63, 64, 65, 140].randomElement(using: &g)!
            let stride = n + Int.random(in: 0...3, using: &g)
            let codec = try RowCodec(format, headDim: d)
            let values = try Self.page(codec, n, using: &g)
            let w = Self.weights(rows * stride, using: &g)
            var fast = (0..<(rows * d)).map { _ in Float(g.nextGaussian()) }, ref = fast
            Self.run(codec, w, rows: rows, stride: stride, values, n: n, &fast, accelerated: true)
            Self.run(codec, w, rows: rows, stride: stride, values, n: n, &ref, accelerated: false)
            let first = fast.indices.first { fast[$0].bitPattern != ref[$0].bitPattern }
            #expect(first == nil, "seed \(g.seed) \(format) d \(d) rows \(rows) n \(n): element \(first ?? 0) \(first.map { fast[$0] } ?? 0) vs \(first.map { ref[$0] } ?? 0)")
        }
    }

    /// The reference (so also the kernel) against Σ_j w_j·x̂_ji in Double, within the documented
    /// bound: per block of 64 tokens the split residual Σ_j c_ji·σ1·(1/2 + 2⁻¹²), the rounded
    /// products u·|a_j|·c_ji and zero products γ_{n+3}·Σ|w·z|, and one rounding per fma and add.
    @Test func referenceWithinDerivedBound() throws {
        try forEachSeededCase(40, base: 7200) { g in
            let format = Self.formats.randomElement(using: &g)!
            let d = [64, 128].randomElement(using: &g)!
            guard case .grouped(_, let gs) = format, d % gs == 0 else { return }
            let n = [1, 5, 64, 100, 130].randomElement(using: &g)!
            let codec = try RowCodec(format, headDim: d)
            let values = try Self.page(codec, n, using: &g)
            let w = Self.weights(n, using: &g)
            var out = [Float](repeating: 0, count: d)
            Self.run(codec, w, rows: 1, stride: n, values, n: n, &out, accelerated: false)
            for i in 0..<d {
                let k = i / gs
                var exact = 0.0, bound = 0.0, magnitude = 0.0
                var j0 = 0
                while j0 < n {
                    let nb = min(64, n - j0)
                    var m = 0.0
                    for j in j0..<(j0 + nb) {
                        let p = values.withUnsafeBytes { codec.parameters(ofGroup: k, in: $0.baseAddress! + j * codec.rowByteCount) }
                        m = max(m, abs(Double(w[j] * Float(Float16(bitPattern: p.scaleBits)))))
                    }
                    let sigma1 = m / 127 / 254 * (1 + 1e-6)
                    var zeros = 0.0
                    for j in j0..<(j0 + nb) {
                        let row = values.withUnsafeBytes { Array($0[(j * codec.rowByteCount)..<((j + 1) * codec.rowByteCount)]) }
                        let (p, c) = row.withUnsafeBytes { r in
                            (codec.parameters(ofGroup: k, in: r.baseAddress!), Double(codec.code(at: i, in: r.baseAddress!)))
                        }
                        let s = Double(Float(Float16(bitPattern: p.scaleBits))), z = Double(Float(Float16(bitPattern: p.zeroBits)))
                        exact += Double(w[j]) * (s * c + z)
                        bound += c * (sigma1 * (0.5 + 0x1p-12) + Self.u * Double(w[j]) * s)
                        zeros += abs(Double(w[j]) * z)
                        magnitude += Double(w[j]) * (s * c + abs(z))
                    }
                    bound += Double(nb + 3) * Self.u / (1 - Double(nb + 3) * Self.u) * zeros
                    j0 += 64
                }
                let blocks = Double((n + 63) / 64)
                bound += (3 + 2 * blocks) * Self.u * (magnitude + bound) + 0x1p-149
                #expect(abs(Double(out[i]) - exact) <= bound,
                        "seed \(g.seed) \(format) d \(d) n \(n) element \(i): \(out[i]) vs \(exact), bound \(bound)")
            }
        }
    }

    /// The shapes the C kernel takes (pure logic: any CPU).
    @Test func supportedShapes() {
        let all = KernelSet(path: .avx512, features: [.avx512, .avx512VNNI, .avx512VBMI])
        #expect(PageKernels.runsIntegerAccumulateKernel(.int4, headDim: 128, on: all))
        #expect(PageKernels.runsIntegerAccumulateKernel(.int4, headDim: 256, on: all))
        #expect(!PageKernels.runsIntegerAccumulateKernel(.int4, headDim: 64, on: all))   // 32 code bytes: half a kernel chunk
        #expect(PageKernels.runsIntegerAccumulateKernel(.int8, headDim: 64, on: all))
        #expect(!PageKernels.runsIntegerAccumulateKernel(.int2, headDim: 128, on: all))
        #expect(!PageKernels.runsIntegerAccumulateKernel(.fp16, headDim: 128, on: all))
        #expect(!PageKernels.runsIntegerAccumulateKernel(.grouped(.int4, groupSize: 16), headDim: 128, on: all))
        // VBMI is needed as well as VNNI; the portable path runs none.
        #expect(!PageKernels.runsIntegerAccumulateKernel(.int4, headDim: 128, on: KernelSet(path: .avx512, features: [.avx512, .avx512VNNI])))
        #expect(!PageKernels.runsIntegerAccumulateKernel(.int4, headDim: 128, on: .portable))
    }
}
