import Foundation
import Testing
@testable import KVExperiments

/// Conformance with the reference implementation, through `Fixtures/reference-written.safetensors`
/// (written by huggingface/safetensors 0.8.0; see `Fixtures/make_reference_written.py`).
@Suite struct SafetensorsReferenceTests {
    static let url = SafetensorsTestFiles.repositoryRoot.appendingPathComponent("Fixtures/reference-written.safetensors")

    @Test func readsTheReferenceFile() throws {
        let file = try SafetensorsFile(contentsOf: Self.url)
        #expect(file.metadata == ["format": "pt"])
        #expect(file.tensorNames == ["scalar", "weights", "ids", "empty", "half"])
        #expect(file.info("weights")?.shape == [2, 3])
        #expect(try file.floats("weights") == [1, -2.5, 3e-20, 0, 65504, -0.125])
        #expect(try file.floats("scalar") == [42])
        #expect(try file.int32s("ids") == [7, -8, .max, .min])
        #expect(try file.floats("half") == [0.5, -1, 65504, 0x1p-14, 0])
        #expect(try file.floats("empty").isEmpty && file.info("empty")?.shape == [0, 4])
    }

    @Test func writerReproducesTheReferenceBytes() throws {
        let expected = try Data(contentsOf: Self.url)
        var writer = SafetensorsWriter(metadata: ["format": "pt"])
        // Added in another order than the reference's data order: the writer sorts.
        writer.add(.float16([0.5, -1, 65504, 0x1p-14, 0] as [Float], shape: [5]), named: "half")
        writer.add(.int32([7, -8, .max, .min], shape: [4]), named: "ids")
        writer.add(.float16([Float](), shape: [0, 4]), named: "empty")
        writer.add(.float32([1, -2.5, 3e-20, 0, 65504, -0.125], shape: [2, 3]), named: "weights")
        writer.add(.float32([42], shape: []), named: "scalar")
        let written = writer.serialized()
        #expect(written == expected, "\(String(decoding: written.prefix(400), as: UTF8.self))")
    }
}
