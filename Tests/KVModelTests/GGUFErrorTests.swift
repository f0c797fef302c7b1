import Foundation
@testable import KVModel
import Testing
import KVQuantization
import TestSupport

/// Malformed files throw `GGUFError`, never crash.
@Suite struct GGUFErrorTests {
    static let valid = GGUFReaderTests.sampleFile()

    func parse(_ bytes: [UInt8]) -> GGUFError? {
        do { _ = try GGUFFile(data: Data(bytes)); return nil } catch { return error }
    }

    /// Little-endian helpers to build headers by hand.
    func header(version: UInt32 = 3, tensors: UInt64 = 0, keys: UInt64 = 0) -> [UInt8] {
        var b = Array("GGUF".utf8)
        withUnsafeBytes(of: version.littleEndian) { b += $0 }
        withUnsafeBytes(of: tensors.littleEndian) { b += $0 }
        withUnsafeBytes(of: keys.littleEndian) { b += $0 }
        return b
    }
    func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    func str(_ s: String) -> [UInt8] { u64(UInt64(s.utf8.count)) + Array(s.utf8) }

    @Test func everyTruncationThrows() {
        // Cut inside the header, metadata, tensor infos and data.
        // Bytes up to the end of the last tensor's data (the rest is padding a file may omit).
        let f = try! GGUFFile(data: Data(Self.valid))
        let end = f.dataOffset + f.tensors.map { $0.offset + $0.byteCount }.max()!
        for n in Array(stride(from: 0, to: end, by: 7)) + [end - 1] {
            let e = parse(Array(Self.valid[0..<n]))
            #expect(e != nil, "prefix of \(n) bytes parsed")
        }
    }

    @Test func badMagicAndVersion() {
        #expect(parse(Array("GGUG".utf8) + Array(Self.valid.dropFirst(4))) == .badMagic(found: Array("GGUG".utf8)))
        #expect(parse(header(version: 2)) == .unsupportedVersion(2))
        #expect(parse(header()) == nil)  // an empty file of version 3 is valid
    }

    @Test func implausibleCountsAndLengths() {
        #expect(parse(header(keys: UInt64.max)) == .implausibleCount(what: "metadata", count: UInt64.max, offset: 16))
        #expect(parse(header(tensors: 1 << 40)) == .implausibleCount(what: "tensor", count: 1 << 40, offset: 8))
        // A key whose length runs past the file.
        guard case .truncated = parse(header(keys: 1) + u64(UInt64.max) + [UInt8](repeating: 0, count: 16)) else {
            Issue.record("huge string length not rejected"); return
        }
        // An array claiming more elements than bytes remain.
        let array = header(keys: 1) + str("a") + u32(9) + u32(4) + u64(1 << 50) + [UInt8](repeating: 0, count: 8)
        #expect(parse(array) == .implausibleCount(what: "array element (of a)", count: 1 << 50, offset: 24 + 8 + 1 + 8))
    }

    @Test func badValuesAndDuplicates() {
        #expect(parse(header(keys: 1) + str("k") + u32(13) + [0, 0, 0, 0]) == .unknownValueType(key: "k", type: 13))
        #expect(parse(header(keys: 1) + u64(2) + [0xFF, 0xFE] + u32(0) + [1]) == .invalidString(offset: 24))
        #expect(parse(header(keys: 2) + str("k") + u32(0) + [1] + str("k") + u32(0) + [2]) == .duplicateKey("k"))
        #expect(parse(header(keys: 1) + str("general.alignment") + u32(4) + u32(48)) == .invalidAlignment("must be a power of two ≤ 2^20, got 48"))
        #expect(parse(header(keys: 1) + str("general.alignment") + u32(5) + u32(64)) != nil)
        // Arrays nested deeper than the limit.
        var deep = header(keys: 1) + str("d") + u32(9)
        for _ in 0...GGUFFile.maxArrayDepth { deep += u32(9) + u64(1) }
        deep += u32(0) + u64(0) + [UInt8](repeating: 0, count: 64)
        guard case .implausibleCount = parse(deep) else { Issue.record("deep nesting not rejected"); return }
    }

    func tensorFile(shape: [UInt64], type: UInt32, offset: UInt64, dataBytes: Int) -> [UInt8] {
        var b = header(tensors: 1) + str("w") + u32(UInt32(shape.count))
        for d in shape { b += u64(d) }
        b += u32(type) + u64(offset)
        while b.count % 32 != 0 { b.append(0) }
        return b + [UInt8](repeating: 0, count: dataBytes)
    }

    @Test func badTensorInfos() {
        #expect(parse(tensorFile(shape: [32, 2], type: 3, offset: 0, dataBytes: 40)) == nil)
        #expect(parse(tensorFile(shape: [32, 2], type: 10, offset: 0, dataBytes: 40)) == .unsupportedTensorType(tensor: "w", type: 10))
        #expect(parse(tensorFile(shape: [128, 2], type: 12, offset: 0, dataBytes: 400)) == .misalignedBlocks(tensor: "w", rowLength: 128, blockSize: 256))
        #expect(parse(tensorFile(shape: [16, 2], type: 3, offset: 0, dataBytes: 40)) == .misalignedBlocks(tensor: "w", rowLength: 16, blockSize: 32))
        #expect(parse(tensorFile(shape: [32, 0], type: 0, offset: 0, dataBytes: 40)) == .invalidShape(tensor: "w", shape: [32, 0]))
        #expect(parse(tensorFile(shape: [1 << 31, 1 << 31, 1 << 31], type: 0, offset: 0, dataBytes: 40)) != nil)
        #expect(parse(tensorFile(shape: [1 << 30, 1 << 30, 1 << 30, 1 << 30], type: 0, offset: 0, dataBytes: 40))
                == .invalidShape(tensor: "w", shape: [1 << 30, 1 << 30, 1 << 30, 1 << 30]))
        guard case .implausibleCount = parse(tensorFile(shape: [1, 1, 1, 1, 1], type: 0, offset: 0, dataBytes: 40)) else {
            Issue.record("five dimensions not rejected"); return
        }
        guard case .invalidTensorData = parse(tensorFile(shape: [32, 2], type: 3, offset: 16, dataBytes: 80)) else {
            Issue.record("misaligned offset not rejected"); return
        }
        guard case .invalidTensorData = parse(tensorFile(shape: [32, 2], type: 3, offset: 32, dataBytes: 40)) else {
            Issue.record("data past the end not rejected"); return
        }
        guard case .invalidTensorData = parse(tensorFile(shape: [32, 2], type: 3, offset: UInt64.max & ~31, dataBytes: 40)) else {
            Issue.record("huge offset not rejected"); return
        }
        let two = header(tensors: 2) + str("w") + u32(1) + u64(32) + u32(0) + u64(0) + str("w") + u32(1) + u64(32) + u32(0) + u64(128)
        #expect(parse(two + [UInt8](repeating: 0, count: 512)) == .duplicateTensor("w"))
    }

    /// Random byte corruptions of a valid file either parse or throw; no input crashes.
    @Test func randomCorruptionsNeverCrash() {
        var g = SeededGenerator(seed: 42)
        var thrown = 0
        for _ in 0..<400 {
            var b = Self.valid
            for _ in 0..<Int.random(in: 1...4, using: &g) {
                let i = Int.random(in: 0..<min(b.count, 1200), using: &g)
                b[i] = UInt8.random(in: 0...255, using: &g)
            }
            if let f = try? GGUFFile(data: Data(b)) {
                for t in f.tensors { _ = f.floats(t) }  // whatever parsed is safe to read
            } else { thrown += 1 }
        }
        #expect(thrown > 0)
    }
}
