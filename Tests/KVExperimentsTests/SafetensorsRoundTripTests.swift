import Foundation
import Testing
import TestSupport
@testable import KVExperiments

@Suite struct SafetensorsRoundTripTests {
    @Test func float32RoundTripIsBitExact() throws {
        var g = SeededGenerator(seed: 11)
        var values = (0..<96).map { _ in Float(g.nextGaussian()) * 100 }
        values += [0, -0.0, .infinity, -.infinity, .nan, .leastNonzeroMagnitude, .greatestFiniteMagnitude]
        values += [Float(bitPattern: 0x7FA0_0001)]  // signalling NaN payload
        var writer = SafetensorsWriter()
        writer.add(.float32(values, shape: [values.count]), named: "x")
        let file = try SafetensorsFile(data: writer.serialized())
        #expect(file.info("x")?.dtype == .f32)
        #expect(file.info("x")?.shape == [values.count])
        #expect(try file.floats("x").map(\.bitPattern) == values.map(\.bitPattern))
    }

    @Test func float16RoundTripRoundsToNearestEven() throws {
        var g = SeededGenerator(seed: 12)
        let values = (0..<512).map { _ in Float(g.nextGaussian()) * 10 } + [1 + 1.0 / 2048, 1 + 3.0 / 2048, 65504, 1e-7]
        var writer = SafetensorsWriter()
        writer.add(.float16(values, shape: [4, values.count / 4]), named: "h")
        let back = try SafetensorsFile(data: writer.serialized()).floats("h")
        #expect(back == values.map { Float(Float16($0)) })
        // Ties to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 (odd), so it rounds to 1;
        // 1 + 3·2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
        #expect(back[512] == 1)
        #expect(back[513] == 1 + 1.0 / 512)
        for (x, y) in zip(values, back) where abs(x) >= 1.0 / 16384 {
            #expect(abs(y - x) <= abs(x) * 0x1p-11, "F16 relative error of \(x)")
        }
    }

    @Test func float16FromFloat16IsExact() throws {
        let values: [Float16] = [0, -0.0, 1, -2, .greatestFiniteMagnitude, .leastNonzeroMagnitude, .infinity]
        var writer = SafetensorsWriter()
        writer.add(.float16(values, shape: [values.count]), named: "h")
        let back = try SafetensorsFile(data: writer.serialized()).floats("h")
        #expect(back.map { Float16($0).bitPattern } == values.map(\.bitPattern))
    }

    @Test func bfloat16RoundTripRoundsToNearestEven() throws {
        let values: [Float] = [1, -2, 1 + 0x1p-8, 1 + 3 * 0x1p-8, 1 + 0x1p-8 + 0x1p-20, .greatestFiniteMagnitude,
                               .infinity, -.infinity, .nan, 0, -0.0, 3.14159]
        var writer = SafetensorsWriter()
        writer.add(.bfloat16(values, shape: [values.count]), named: "b")
        let back = try SafetensorsFile(data: writer.serialized()).floats("b")
        #expect(back[0] == 1 && back[1] == -2)
        #expect(back[2] == 1)                 // tie, 1 is even
        #expect(back[3] == 1 + 0x1p-6)        // tie, rounds up to the even neighbour
        #expect(back[4] == 1 + 0x1p-7)        // just above the tie rounds up
        #expect(back[5] == .infinity)         // above bfloat16's maximum
        #expect(back[6] == .infinity && back[7] == -.infinity && back[8].isNaN)
        #expect(back[9].bitPattern == 0 && back[10].bitPattern == (-0.0 as Float).bitPattern)
        #expect(abs(back[11] - 3.14159) <= 3.14159 * 0x1p-8)
        // Every BF16 result is a Float whose low 16 bits are zero.
        #expect(back.allSatisfy { $0.bitPattern & 0xFFFF == 0 })
    }

    @Test func int32RoundTripIsExact() throws {
        let values: [Int32] = [0, 1, -1, .max, .min, 123_456_789]
        var writer = SafetensorsWriter()
        writer.add(.int32(values, shape: [2, 3]), named: "i")
        let file = try SafetensorsFile(data: writer.serialized())
        #expect(try file.int32s("i") == values)
        #expect(file.info("i")?.shape == [2, 3])
    }

    @Test func mixedFileKeepsMetadataShapesAndOrder() throws {
        let data = SafetensorsTestFiles.mixedWriterFile()
        let file = try SafetensorsFile(data: data)
        #expect(file.metadata == ["format": "test", "note": "a \"quoted\" value\n"])
        #expect(Set(file.tensorNames) == ["f32", "f16", "bf16", "i32", "scalar", "empty"])
        // Data order: the reference's (F32, I32, BF16, F16), then name.
        #expect(file.tensorNames == ["f32", "scalar", "i32", "bf16", "empty", "f16"])
        #expect(file.info("scalar")?.shape == [] && file.info("scalar")?.elementCount == 1)
        #expect(file.info("empty")?.elementCount == 0 && file.info("empty")?.byteCount == 0)
        #expect(try file.floats("scalar") == [42])
        #expect(try file.floats("empty") == [])
        #expect(try file.floats("f32") == [1, -2.5, 3e-20, 4])
        #expect(try file.floats("f16") == [0.5, -1, 65504])
        #expect(try file.floats("bf16") == [1, 2, 3, 4, 5, 6])
        #expect(try file.int32s("i32") == [7, -8])
        // Header padded with spaces to a multiple of 8; every tensor aligned to its element size.
        #expect(file.headerByteCount % 8 == 0)
        let header = data[8 ..< 8 + file.headerByteCount]
        #expect(header.last == UInt8(ascii: " ") || header.last == UInt8(ascii: "}"))
        for t in file.tensors { #expect(t.dataOffsets.lowerBound % t.dtype.byteSize == 0) }
    }

    @Test func writtenHeaderMatchesTheReferenceLayout() {
        var writer = SafetensorsWriter(metadata: ["k": "v"])
        writer.add(.float32([1, 2], shape: [2]), named: "a")
        let data = writer.serialized()
        let json = #"{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let padded = json + String(repeating: " ", count: (8 - json.utf8.count % 8) % 8)
        #expect(Array(data) == Array(SafetensorsTestFiles.raw(padded, data: [0, 0, 0x80, 0x3F, 0, 0, 0, 0x40])))
    }

    @Test func namesAndMetadataWithEscapesAndUnicodeRoundTrip() throws {
        let name = "tab\there \"q\" back\\slash \u{1} ünï 🦊"
        var writer = SafetensorsWriter(metadata: ["ключ": "значение \u{7}", "": ""])
        writer.add(.int32([1], shape: [1]), named: name)
        let file = try SafetensorsFile(data: writer.serialized())
        #expect(file.tensorNames == [name])
        #expect(file.metadata == ["ключ": "значение \u{7}", "": ""])
        #expect(try file.int32s(name) == [1])
    }

    @Test func leadingWhitespaceInTheHeaderIsAccepted() throws {
        // The reference implementation accepts JSON whitespace before the opening brace.
        let header = " \n\t{" + SafetensorsTestFiles.entry("x", "I32", [1], 0, 4) + "}"
        let file = try SafetensorsFile(data: SafetensorsTestFiles.raw(header, data: [5, 0, 0, 0]))
        #expect(try file.int32s("x") == [5])
    }

    @Test func emptyFileHasNoTensors() throws {
        let file = try SafetensorsFile(data: SafetensorsWriter().serialized())
        #expect(file.tensors.isEmpty && file.metadata.isEmpty && file.dataByteCount == 0)
    }

    @Test func writeToDiskThenMapBack() throws {
        let url = SafetensorsTestFiles.temporaryURL("mixed.safetensors")
        defer { try? FileManager.default.removeItem(at: url.deletingLastPathComponent()) }
        var writer = SafetensorsWriter(metadata: ["a": "b"])
        writer.add(.float16([1, 2, 3] as [Float], shape: [3]), named: "x")
        try writer.write(to: url)
        try writer.write(to: url)  // replaces an existing file
        #expect(try Data(contentsOf: url) == writer.serialized())
        let file = try SafetensorsFile(contentsOf: url)
        #expect(try file.floats("x") == [1, 2, 3])
        // No temporary files left beside it.
        let siblings = try FileManager.default.contentsOfDirectory(atPath: url.deletingLastPathComponent().path)
        #expect(siblings == ["mixed.safetensors"])
    }

    @Test func fileFromASliceOfLargerData() throws {
        let inner = SafetensorsTestFiles.mixedWriterFile()
        let outer = Data([1, 2, 3]) + inner + Data([9])
        let slice = outer[3 ..< 3 + inner.count]
        #expect(slice.startIndex == 3)
        let file = try SafetensorsFile(data: slice)
        #expect(try file.int32s("i32") == [7, -8])
    }

    @Test func unknownButValidDTypesOpenAndRefuseConversion() throws {
        let header = "{" + SafetensorsTestFiles.entry("big", "I64", [2], 0, 16) + ","
            + SafetensorsTestFiles.entry("x", "F32", [1], 16, 20) + "}"
        let file = try SafetensorsFile(data: SafetensorsTestFiles.raw(header, data: [UInt8](repeating: 0, count: 20)))
        #expect(file.info("big")?.dtype == .i64)
        #expect(throws: SafetensorsError.unsupportedDType(tensor: "big", dtype: "I64")) { try file.floats("big") }
        #expect(throws: SafetensorsError.unsupportedDType(tensor: "big", dtype: "I64")) { try file.int32s("big") }
        #expect(try file.floats("x") == [0])
    }
}
