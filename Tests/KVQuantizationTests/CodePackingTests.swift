import Testing
import TestSupport
@testable import KVQuantization

/// The packed code layout of every width: a little-end-first bit stream (`CodePacking`), the SIMD
/// and scalar routines agreeing, and nothing outside a row's code bytes touched.
@Suite struct CodePackingTests {
    /// The documented INT3 layout: eight codes in three bytes, element i at bits 3i ..< 3i + 3.
    @Test func int3LayoutIsTheDocumentedBitStream() {
        let codes: [UInt32] = [1, 2, 3, 4, 5, 6, 7, 0]
        var bytes = [UInt8](repeating: 0, count: 3)
        bytes.withUnsafeMutableBytes { CodePacking.store8(.int3, SIMD8(codes), $0.baseAddress!, element: 0) }
        var stream: UInt32 = 0
        for (i, c) in codes.enumerated() { stream |= c << (3 * UInt32(i)) }
        #expect(bytes == [UInt8(stream & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream >> 16)])
        #expect(CodeWidth.int3.packedByteCount(codes: 8) == 3)
        #expect(CodeWidth.int3.packedByteCount(codes: 9) == 4)
        #expect(CodeWidth.int3.packedByteCount(codes: 63) == 24)
        #expect(CodeWidth.int3.packedByteCount(codes: 1) == 1)
        for w in CodeWidth.allCases {
            #expect(w.packedByteCount(codes: 8) == w.bits, "\(w): eight codes take b bytes")
        }
    }

    /// For every width and row length: codes stored one at a time read back one at a time and
    /// eight at a time, codes stored eight at a time read back one at a time, and a store never
    /// changes another code or a byte past the row's codes.
    @Test func simdAndScalarRoutinesAgree() throws {
        for w in CodeWidth.allCases {
            for n in [1, 7, 8, 9, 15, 16, 63, 64, 96, 130] {
                forEachSeededCase(8, base: 5000 &+ UInt64(w.bits * 1000 + n)) { g in
                    let codes = (0..<n).map { _ in UInt32.random(in: 0...UInt32(w.maxCode), using: &g) }
                    let size = w.packedByteCount(codes: n)
                    // Guard bytes after the codes.
                    var scalar = [UInt8](repeating: 0, count: size) + [0xA5, 0x5A]
                    var simd = [UInt8](repeating: 0xFF, count: size) + [0xA5, 0x5A]
                    scalar.withUnsafeMutableBytes { p in
                        for i in 0..<n { CodePacking.store(w, codes[i], p.baseAddress!, element: i) }
                    }
                    simd.withUnsafeMutableBytes { p in
                        var i = 0
                        while i + 8 <= n {
                            CodePacking.store8(w, SIMD8((0..<8).map { codes[i + $0] }), p.baseAddress!, element: i)
                            i += 8
                        }
                        while i < n { CodePacking.store(w, codes[i], p.baseAddress!, element: i); i += 1 }
                    }
                    #expect(Array(scalar.suffix(2)) == [0xA5, 0x5A] && Array(simd.suffix(2)) == [0xA5, 0x5A], "seed \(g.seed) \(w) n \(n): wrote past the codes")
                    for bytes in [scalar, simd] {
                        bytes.withUnsafeBytes { p in
                            for i in 0..<n {
                                #expect(CodePacking.load(w, p.baseAddress!, element: i) == codes[i], "seed \(g.seed) \(w) n \(n) element \(i)")
                            }
                            var i = 0
                            while i + 8 <= n {
                                let v = CodePacking.load8(w, p.baseAddress!, element: i)
                                #expect((0..<8).allSatisfy { v[$0] == codes[i + $0] }, "seed \(g.seed) \(w) n \(n) chunk \(i)")
                                i += 8
                            }
                        }
                    }
                    // Overwriting one code changes only it.
                    let k = Int.random(in: 0..<n, using: &g), c = UInt32.random(in: 0...UInt32(w.maxCode), using: &g)
                    scalar.withUnsafeMutableBytes { p in CodePacking.store(w, c, p.baseAddress!, element: k) }
                    scalar.withUnsafeBytes { p in
                        for i in 0..<n {
                            #expect(CodePacking.load(w, p.baseAddress!, element: i) == (i == k ? c : codes[i]), "seed \(g.seed) \(w) n \(n) element \(i)")
                        }
                    }
                }
            }
        }
    }

    @Test func formatNamesRoundTrip() {
        let formats: [StorageFormat] = [.fp16, .int8, .int4, .int2, .grouped(.int3, groupSize: 32), .grouped(.int3, groupSize: 128),
                                        .channelwise(.int3), .channelwise(.int8), .lloydMax(.int2), .lloydMax(.int3), .lloydMax(.int4)]
        for f in formats { #expect(StorageFormat(name: f.description) == f, "\(f)") }
        for bad in ["", "int5/g32", "int4", "int4/x", "lm", "lmx", "int4/g", "fp32"] { #expect(StorageFormat(name: bad) == nil, "\(bad)") }
    }
}
