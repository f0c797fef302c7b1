import Foundation
import Testing
@testable import KVExperiments

/// One malformed file, built byte by byte, and the exact error it must raise.
struct MalformedFile: Sendable, CustomTestStringConvertible {
    let label: String
    let data: Data
    let expected: SafetensorsError
    var testDescription: String { label }

    init(_ label: String, _ header: String, data: [UInt8] = [], headerLength: UInt64? = nil,
         _ expected: SafetensorsError) {
        self.label = label
        self.data = SafetensorsTestFiles.raw(header, data: data, headerLength: headerLength)
        self.expected = expected
    }

    init(_ label: String, bytes: [UInt8], _ expected: SafetensorsError) {
        self.label = label
        self.data = Data(bytes)
        self.expected = expected
    }
}

private func entry(_ name: String, _ dtype: String, _ shape: [Int], _ begin: Int, _ end: Int) -> String {
    SafetensorsTestFiles.entry(name, dtype, shape, begin, end)
}

private let zeros8 = [UInt8](repeating: 0, count: 8)
private let zeros12 = [UInt8](repeating: 0, count: 12)

private let malformedFiles: [MalformedFile] = [
    // Length prefix.
    .init("empty file", bytes: [], .fileTooShort(byteCount: 0)),
    .init("7 bytes", bytes: [2, 0, 0, 0, 0, 0, 0], .fileTooShort(byteCount: 7)),
    .init("header length over 100 MB", "{}", headerLength: 100_000_001,
          .headerTooLarge(headerByteCount: 100_000_001, limit: 100_000_000)),
    .init("header length UInt64.max", "{}", headerLength: .max,
          .headerTooLarge(headerByteCount: .max, limit: 100_000_000)),
    .init("header length past the end", "{}", headerLength: 3, .headerExceedsFile(headerByteCount: 3, available: 2)),
    .init("header length 1000 in a short file", "{}", data: zeros8, headerLength: 1000,
          .headerExceedsFile(headerByteCount: 1000, available: 10)),
    // Header text.
    .init("zero-length header", "", .headerNotObject(found: "an empty header")),
    .init("array header", "[1,2]", .headerNotObject(found: "'[' at its start")),
    .init("whitespace only", " \n\t ", .headerNotObject(found: "only whitespace")),
    .init("space then array", " [1]", .headerNotObject(found: "'[' at its start")),
    .init("NUL header", "\u{0}{}", .headerNotObject(found: "byte 0x0 at its start")),
    .init("truncated JSON", "{\"a\":", .malformedHeader(reason: "")),
    .init("junk after JSON", "{} x", .malformedHeader(reason: "")),
    .init("unquoted key", "{a:1}", .malformedHeader(reason: "")),
    // Duplicates (JSONSerialization alone would keep one of them silently).
    .init("duplicate tensor name", "{" + entry("a", "F32", [1], 0, 4) + "," + entry("a", "F32", [1], 4, 8) + "}",
          data: zeros8, .duplicateName("a")),
    .init("duplicate name spelled with an escape", "{" + entry("ab", "F32", [1], 0, 4) + ","
          + entry("\\u0061b", "F32", [1], 4, 8) + "}", data: zeros8, .duplicateName("ab")),
    .init("duplicate __metadata__", #"{"__metadata__":{},"__metadata__":{}}"#, .duplicateName("__metadata__")),
    .init("duplicate field in an entry", #"{"t":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}"#,
          data: [0, 0, 0, 0], .duplicateKey(key: "dtype", inside: "t")),
    .init("duplicate metadata key", #"{"__metadata__":{"k":"1","k":"2"}}"#,
          .duplicateKey(key: "k", inside: "__metadata__")),
    // Metadata.
    .init("metadata not an object", #"{"__metadata__":5}"#, .invalidMetadata(key: nil, found: "number 5")),
    .init("metadata list", #"{"__metadata__":["a"]}"#, .invalidMetadata(key: nil, found: "an array of 1")),
    .init("metadata value not a string", #"{"__metadata__":{"k":1}}"#, .invalidMetadata(key: "k", found: "number 1")),
    .init("metadata value null", #"{"__metadata__":{"k":null}}"#, .invalidMetadata(key: "k", found: "null")),
    // Entries and fields.
    .init("entry not an object", #"{"t":5}"#, .invalidTensorEntry(tensor: "t", found: "number 5")),
    .init("entry is a string", #"{"t":"F32"}"#, .invalidTensorEntry(tensor: "t", found: "string \"F32\"")),
    .init("missing dtype", #"{"t":{"shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0],
          .missingField(tensor: "t", field: "dtype")),
    .init("missing shape", #"{"t":{"dtype":"F32","data_offsets":[0,4]}}"#, data: [0, 0, 0, 0],
          .missingField(tensor: "t", field: "shape")),
    .init("missing data_offsets", #"{"t":{"dtype":"F32","shape":[1]}}"#,
          .missingField(tensor: "t", field: "data_offsets")),
    .init("dtype not a string", #"{"t":{"dtype":5,"shape":[1],"data_offsets":[0,4]}}"#,
          .invalidField(tensor: "t", field: "dtype", expected: "a string", found: "number 5")),
    .init("shape not an array", #"{"t":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}"#,
          .invalidField(tensor: "t", field: "shape", expected: "an array of integers", found: "string \"1\"")),
    .init("data_offsets not an array", #"{"t":{"dtype":"F32","shape":[1],"data_offsets":4}}"#,
          .invalidField(tensor: "t", field: "data_offsets", expected: "two non-negative integers [begin, end]",
                        found: "number 4")),
    .init("data_offsets of three", #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#,
          .invalidField(tensor: "t", field: "data_offsets", expected: "two non-negative integers [begin, end]",
                        found: "an array of 3")),
    .init("negative offset", #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}"#,
          .invalidField(tensor: "t", field: "data_offsets", expected: "two non-negative integers [begin, end]",
                        found: "begin number -4")),
    .init("fractional offset", #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4.5]}}"#,
          .invalidField(tensor: "t", field: "data_offsets", expected: "two non-negative integers [begin, end]",
                        found: "end number 4.5")),
    .init("offset beyond Int", #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}"#,
          .invalidField(tensor: "t", field: "data_offsets", expected: "two non-negative integers [begin, end]",
                        found: "end number 18446744073709551615")),
    // Dimensions.
    .init("negative dimension", "{" + entry("t", "F32", [2, -1], 0, 0) + "}",
          .invalidDimension(tensor: "t", axis: 1, found: "number -1")),
    .init("fractional dimension", #"{"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,0]}}"#,
          .invalidDimension(tensor: "t", axis: 0, found: "number 2.5")),
    .init("integral float dimension", #"{"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}"#,
          data: zeros8, .invalidDimension(tensor: "t", axis: 0, found: "number 2.0")),
    .init("boolean dimension", #"{"t":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}"#,
          data: [0, 0, 0, 0], .invalidDimension(tensor: "t", axis: 0, found: "boolean true")),
    .init("string dimension", #"{"t":{"dtype":"F32","shape":["3"],"data_offsets":[0,12]}}"#,
          data: zeros12, .invalidDimension(tensor: "t", axis: 0, found: "string \"3\"")),
    .init("null dimension", #"{"t":{"dtype":"F32","shape":[null],"data_offsets":[0,4]}}"#,
          data: [0, 0, 0, 0], .invalidDimension(tensor: "t", axis: 0, found: "null")),
    // Dtypes.
    .init("unknown dtype", "{" + entry("t", "F128", [1], 0, 16) + "}", data: zeros8 + zeros8,
          .unsupportedDType(tensor: "t", dtype: "F128")),
    .init("sub-byte dtype", "{" + entry("t", "F4", [2], 0, 1) + "}", data: [0],
          .unsupportedDType(tensor: "t", dtype: "F4")),
    .init("lower-case dtype", "{" + entry("t", "f32", [1], 0, 4) + "}", data: [0, 0, 0, 0],
          .unsupportedDType(tensor: "t", dtype: "f32")),
    // Sizes.
    .init("element count overflows", "{" + entry("t", "U8", [Int.max, 2], 0, 0) + "}",
          .sizeOverflow(tensor: "t", shape: [Int.max, 2])),
    .init("byte count overflows", "{" + entry("t", "F32", [1 << 62], 0, 0) + "}",
          .sizeOverflow(tensor: "t", shape: [1 << 62])),
    .init("byte count too small", "{" + entry("t", "F32", [2], 0, 4) + "}", data: [0, 0, 0, 0],
          .byteCountMismatch(tensor: "t", expected: 8, found: 4)),
    .init("byte count too large", "{" + entry("t", "F16", [2], 0, 8) + "}", data: zeros8,
          .byteCountMismatch(tensor: "t", expected: 4, found: 8)),
    .init("empty shape means one element", "{" + entry("t", "F32", [], 0, 0) + "}",
          .byteCountMismatch(tensor: "t", expected: 4, found: 0)),
    // Offsets and layout.
    .init("offsets reversed", "{" + entry("t", "F32", [1], 8, 4) + "}", data: zeros8,
          .invalidOffsets(tensor: "t", begin: 8, end: 4)),
    .init("offsets past the data", "{" + entry("t", "F32", [2], 0, 8) + "}", data: [0, 0, 0, 0],
          .offsetsBeyondData(tensor: "t", end: 8, dataByteCount: 4)),
    .init("offsets past an empty data section", "{" + entry("t", "F32", [1], 0, 4) + "}",
          .offsetsBeyondData(tensor: "t", end: 4, dataByteCount: 0)),
    .init("overlapping tensors", "{" + entry("a", "F32", [2], 0, 8) + "," + entry("b", "F32", [2], 4, 12) + "}",
          data: zeros12, .overlappingTensors("a", "b")),
    .init("identical ranges", "{" + entry("b", "F32", [1], 0, 4) + "," + entry("a", "F32", [1], 0, 4) + "}",
          data: [0, 0, 0, 0], .overlappingTensors("a", "b")),
    .init("hole between tensors", "{" + entry("a", "F32", [1], 0, 4) + "," + entry("b", "F32", [1], 8, 12) + "}",
          data: zeros12, .unusedBytes(offset: 4, byteCount: 4)),
    .init("hole at the start", "{" + entry("a", "F32", [1], 4, 8) + "}", data: zeros8,
          .unusedBytes(offset: 0, byteCount: 4)),
    .init("trailing bytes", "{" + entry("a", "F32", [1], 0, 4) + "}", data: zeros8,
          .trailingBytes(offset: 4, byteCount: 4)),
    .init("data without tensors", "{}", data: [1], .trailingBytes(offset: 0, byteCount: 1)),
]

@Suite struct SafetensorsErrorTests {
    @Test(arguments: malformedFiles)
    func malformedFileThrowsTheExactError(_ file: MalformedFile) {
        do {
            let parsed = try SafetensorsFile(data: file.data)
            Issue.record("\(file.label): parsed, with tensors \(parsed.tensorNames); expected \(file.expected)")
        } catch {
            // The JSON parser's own wording is not ours to pin; the case is.
            if case .malformedHeader = file.expected, case .malformedHeader(let reason) = error {
                #expect(!reason.isEmpty, "\(file.label)")
                return
            }
            #expect(error == file.expected, "\(file.label): \(error)")
        }
    }

    @Test func headerNotUTF8() {
        let header: [UInt8] = Array(#"{"t\#u{0}":1}"#.utf8).map { $0 == 0 ? 0xFF : $0 }
        #expect(throws: SafetensorsError.headerNotUTF8) {
            try SafetensorsFile(data: SafetensorsTestFiles.raw(header))
        }
        let overlong: [UInt8] = Array("{\"".utf8) + [0xC0, 0xAF] + Array("\":1}".utf8)
        #expect(throws: SafetensorsError.headerNotUTF8) {
            try SafetensorsFile(data: SafetensorsTestFiles.raw(overlong))
        }
    }

    @Test func accessorErrors() throws {
        let file = try SafetensorsFile(data: SafetensorsTestFiles.mixedWriterFile())
        #expect(throws: SafetensorsError.tensorNotFound("nope")) { try file.floats("nope") }
        #expect(throws: SafetensorsError.tensorNotFound("nope")) { try file.int32s("nope") }
        #expect(file.info("nope") == nil)
        #expect(throws: SafetensorsError.wrongDType(tensor: "i32", expected: "a floating-point dtype (F32, F16, BF16)",
                                                    found: .i32)) { try file.floats("i32") }
        #expect(throws: SafetensorsError.wrongDType(tensor: "f16", expected: "I32", found: .f16)) {
            try file.int32s("f16")
        }
    }

    @Test func unreadableAndUnwritablePaths() {
        let missing = URL(fileURLWithPath: "/nonexistent-kvcrush-dir/none.safetensors")
        let readError = #expect(throws: SafetensorsError.self) { try SafetensorsFile(contentsOf: missing) }
        guard case .unreadable(let path, let reason)? = readError else {
            Issue.record("expected .unreadable, got \(String(describing: readError))")
            return
        }
        #expect(path == missing.path && !reason.isEmpty)
        let writeError = #expect(throws: SafetensorsError.self) { try SafetensorsWriter().write(to: missing) }
        guard case .writeFailed(let writePath, _)? = writeError else {
            Issue.record("expected .writeFailed, got \(String(describing: writeError))")
            return
        }
        #expect(writePath == missing.path)
    }

    @Test func emptyAndShortFilesOnDisk() throws {
        let url = SafetensorsTestFiles.temporaryURL("short.safetensors")
        defer { try? FileManager.default.removeItem(at: url.deletingLastPathComponent()) }
        for count in [0, 5] {
            try Data(repeating: 0, count: count).write(to: url)
            #expect(throws: SafetensorsError.fileTooShort(byteCount: count)) { try SafetensorsFile(contentsOf: url) }
        }
        // A directory is not a file.
        #expect(throws: SafetensorsError.self) { try SafetensorsFile(contentsOf: url.deletingLastPathComponent()) }
    }

    @Test func descriptionsSayWhatIsWrong() {
        #expect(SafetensorsError.byteCountMismatch(tensor: "layers.0.keys", expected: 8, found: 4).description
                == "tensor 'layers.0.keys': dtype and shape need 8 bytes but data_offsets span 4")
        #expect(SafetensorsError.unsupportedDType(tensor: "x", dtype: "F128").description
                == "tensor 'x': dtype 'F128' is not supported (supported: F32, F16, BF16, I32)")
        #expect(SafetensorsError.overlappingTensors("a", "b").description == "tensors 'a' and 'b' overlap")
        #expect(SafetensorsError.headerTooLarge(headerByteCount: 200_000_000, limit: 100_000_000).description
                == "header length 200000000 exceeds the limit of 100000000 bytes")
        #expect(SafetensorsError.unusedBytes(offset: 4, byteCount: 4).description
                == "data bytes 4..<8 belong to no tensor")
        // Every case of the table has a description naming its tensor, if it has one.
        for file in malformedFiles {
            let text = file.expected.description
            #expect(!text.isEmpty)
            switch file.expected {
            case .invalidTensorEntry(let t, _), .missingField(let t, _), .invalidField(let t, _, _, _),
                 .invalidDimension(let t, _, _), .unsupportedDType(let t, _), .sizeOverflow(let t, _),
                 .byteCountMismatch(let t, _, _), .invalidOffsets(let t, _, _), .offsetsBeyondData(let t, _, _):
                #expect(text.contains("'\(t)'"), "\(text)")
            default: break
            }
        }
    }
}
