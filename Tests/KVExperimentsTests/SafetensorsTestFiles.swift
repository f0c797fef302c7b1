import Foundation
@testable import KVExperiments

/// Builders for safetensors files written byte by byte, so tests control every field.
enum SafetensorsTestFiles {
    /// `| UInt64 LE length | header | data |`, with the length given explicitly or the header's own.
    static func raw(_ header: String, data: [UInt8] = [], headerLength: UInt64? = nil) -> Data {
        raw(Array(header.utf8), data: data, headerLength: headerLength)
    }

    static func raw(_ header: [UInt8], data: [UInt8] = [], headerLength: UInt64? = nil) -> Data {
        let n = headerLength ?? UInt64(header.count)
        var bytes = (0..<8).map { UInt8(truncatingIfNeeded: n >> (8 * $0)) }
        bytes += header
        bytes += data
        return Data(bytes)
    }

    /// A header entry `"name":{"dtype":…,"shape":…,"data_offsets":[b,e]}` (no braces around it).
    static func entry(_ name: String, _ dtype: String, _ shape: [Int], _ begin: Int, _ end: Int) -> String {
        "\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":[\(shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(begin),\(end)]}"
    }

    /// A URL in a fresh temporary directory (not created inside the repository).
    static func temporaryURL(_ name: String) -> URL {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("kvexperiments-tests-\(UUID().uuidString)", isDirectory: true)
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent(name)
    }

    /// The repository root, from this file's path (Tests/KVExperimentsTests/<file>).
    static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// A valid file with every supported dtype, a scalar, an empty tensor and metadata.
    static func mixedWriterFile() -> Data {
        var writer = SafetensorsWriter(metadata: ["format": "test", "note": "a \"quoted\" value\n"])
        writer.add(.float32([1, -2.5, 3e-20, 4], shape: [2, 2]), named: "f32")
        writer.add(.float16([0.5, -1, 65504] as [Float], shape: [3]), named: "f16")
        writer.add(.bfloat16([1, 2, 3, 4, 5, 6], shape: [2, 1, 3]), named: "bf16")
        writer.add(.int32([7, -8], shape: [2]), named: "i32")
        writer.add(.float32([42], shape: []), named: "scalar")
        writer.add(.float16([Float](), shape: [0, 4]), named: "empty")
        return writer.serialized()
    }
}
