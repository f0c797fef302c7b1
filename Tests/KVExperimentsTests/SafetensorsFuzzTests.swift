import Foundation
import Testing
import TestSupport
@testable import KVExperiments

/// Mutates and truncates valid files thousands of times: the parser must throw or succeed, never
/// crash, and whatever it accepts must satisfy the layout invariants and convert without trapping.
@Suite struct SafetensorsFuzzTests {
    /// Bytes that are likely to keep a header JSON-shaped but change its meaning.
    static let jsonAlphabet = Array("0123456789-.eE{}[]\",: \\tfnu".utf8) + [0x00, 0xFF, 0x80]

    /// Parses `data`; on success checks the invariants of the result and converts every tensor.
    /// Returns nil on success, else the error.
    static func check(_ data: Data, seed: UInt64, iteration: Int) -> SafetensorsError? {
        let file: SafetensorsFile
        do {
            file = try SafetensorsFile(data: data)
        } catch {
            #expect(!error.description.isEmpty, "seed \(seed), iteration \(iteration)")
            return error
        }
        let context = "seed \(seed), iteration \(iteration)"
        var covered = 0
        for t in file.tensors {
            #expect(t.dataOffsets.lowerBound == covered, "\(context): tensors must tile the data section")
            #expect(t.byteCount == t.elementCount * t.dtype.byteSize, "\(context): byte count of \(t.name)")
            covered = t.dataOffsets.upperBound
            switch t.dtype {
            case .f32, .f16, .bf16:
                #expect((try? file.floats(t.name))?.count == t.elementCount, "\(context): \(t.name)")
            case .i32:
                #expect((try? file.int32s(t.name))?.count == t.elementCount, "\(context): \(t.name)")
            default:
                #expect(throws: SafetensorsError.unsupportedDType(tensor: t.name, dtype: t.dtype.rawValue)) {
                    try file.floats(t.name)
                }
            }
        }
        #expect(covered == file.dataByteCount, "\(context): trailing bytes accepted")
        #expect(8 + file.headerByteCount + file.dataByteCount == data.count, "\(context)")
        return nil
    }

    static func mutate(_ original: [UInt8], headerEnd: Int, using g: inout SeededGenerator) -> [UInt8] {
        var bytes = original
        let mutations = Int.random(in: 1...4, using: &g)
        for _ in 0..<mutations where !bytes.isEmpty {
            switch Int.random(in: 0..<8, using: &g) {
            case 0:  // random byte anywhere
                bytes[Int.random(in: 0..<bytes.count, using: &g)] = UInt8.random(in: 0...255, using: &g)
            case 1, 2:  // JSON-ish byte inside the header
                let i = Int.random(in: 8..<max(9, min(headerEnd, bytes.count)), using: &g)
                if i < bytes.count { bytes[i] = jsonAlphabet.randomElement(using: &g) ?? 0 }
            case 3:  // a digit in the header changes: shapes and offsets shift
                let digits = bytes.indices.filter { $0 >= 8 && $0 < headerEnd && (0x30...0x39).contains(bytes[$0]) }
                if let i = digits.randomElement(using: &g) { bytes[i] = UInt8.random(in: 0x30...0x39, using: &g) }
            case 4:  // the length prefix changes
                let n = UInt64(headerEnd - 8)
                let choices: [UInt64] = [0, n &- 1, n &+ 1, n &+ 8, UInt64.random(in: 0...UInt64.max, using: &g),
                                         UInt64(bytes.count), 100_000_001]
                let v = choices.randomElement(using: &g) ?? 0
                for k in 0..<min(8, bytes.count) { bytes[k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
            case 5:  // delete a run
                let i = Int.random(in: 0..<bytes.count, using: &g)
                let j = min(bytes.count, i + Int.random(in: 1...16, using: &g))
                bytes.removeSubrange(i..<j)
            case 6:  // insert a run
                let i = Int.random(in: 0...bytes.count, using: &g)
                let run = (0..<Int.random(in: 1...8, using: &g)).map { _ in jsonAlphabet.randomElement(using: &g) ?? 0 }
                bytes.insert(contentsOf: run, at: i)
            default:  // duplicate a chunk of the header
                let lo = 8, hi = min(headerEnd, bytes.count)
                if hi > lo + 1 {
                    let i = Int.random(in: lo..<hi, using: &g)
                    let j = min(hi, i + Int.random(in: 1...40, using: &g))
                    bytes.insert(contentsOf: bytes[i..<j], at: Int.random(in: lo..<hi, using: &g))
                }
            }
        }
        return bytes
    }

    @Test func mutatedFilesNeverCrashTheParser() throws {
        let seed: UInt64 = 0x5AFE_7E45
        var g = SeededGenerator(seed: seed)
        let original = Array(SafetensorsTestFiles.mixedWriterFile())
        let headerEnd = 8 + (try SafetensorsFile(data: Data(original))).headerByteCount
        var accepted = 0
        var errorKinds: Set<String> = []
        for iteration in 0..<10_000 {
            let mutated = Self.mutate(original, headerEnd: headerEnd, using: &g)
            if let error = Self.check(Data(mutated), seed: seed, iteration: iteration) {
                // The case name (the only case without a payload is headerNotUTF8).
                errorKinds.insert(Mirror(reflecting: error).children.first?.label ?? "headerNotUTF8")
            } else {
                accepted += 1
            }
        }
        // The mutations reach deep into validation, not just the JSON parser.
        #expect(errorKinds.count >= 10, "seed \(seed): only \(errorKinds.sorted())")
        #expect(accepted > 0, "seed \(seed): some mutations (e.g. metadata text) keep the file valid")
    }

    @Test func deeplyNestedHeadersThrowWithoutExhaustingTheStack() {
        for depth in [600, 100_000] {
            let header = #"{"a":"# + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + "}"
            #expect(throws: SafetensorsError.self, "depth \(depth)") {
                try SafetensorsFile(data: SafetensorsTestFiles.raw(header))
            }
        }
    }

    @Test func everyTruncationThrows() throws {
        let original = Array(SafetensorsTestFiles.mixedWriterFile())
        for length in 0..<original.count {
            #expect(throws: SafetensorsError.self, "truncated to \(length) bytes") {
                try SafetensorsFile(data: Data(original[..<length]))
            }
        }
        #expect(throws: Never.self) { try SafetensorsFile(data: Data(original)) }
    }

    @Test func randomBytesNeverCrashTheParser() {
        let seed: UInt64 = 77
        var g = SeededGenerator(seed: seed)
        for iteration in 0..<1000 {
            let count = Int.random(in: 0..<64, using: &g)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &g) }
            if bytes.count >= 8, Bool.random(using: &g) {  // a plausible length prefix
                let n = UInt64(Int.random(in: 0...(bytes.count - 8), using: &g))
                for k in 0..<8 { bytes[k] = UInt8(truncatingIfNeeded: n >> (8 * UInt64(k))) }
                if bytes.count > 8 { bytes[8] = UInt8(ascii: "{") }
            }
            _ = Self.check(Data(bytes), seed: seed, iteration: iteration)
        }
    }
}
