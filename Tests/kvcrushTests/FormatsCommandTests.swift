import Foundation
import Testing
import TestSupport
import KVCrush
import KVExperiments
@testable import kvcrush

@Suite struct FormatsCommandTests {
    /// A tiny dump of head dim `d`, written to a temporary directory.
    func tinyDump(headDim d: Int, in dir: URL) throws -> URL {
        var g = SeededGenerator(seed: 19)
        let shape = try KVDumpShape(headCount: 2, kvHeadCount: 1, headDim: d, tokenCount: 96, queryStart: 64)
        func tensor(_ n: Int) -> [Float] { (0..<n).map { _ in Float(g.nextGaussian()) } }
        let dump = KVDump(model: "tiny", shape: shape, layers: [
            KVDumpLayer(index: 0, shape: shape, keys: tensor(shape.kvElementCount), values: tensor(shape.kvElementCount),
                        queries: tensor(shape.queryElementCount)),
        ])
        let file = dir.appendingPathComponent("tiny-\(d).safetensors")
        try dump.write(to: file)
        return file
    }

    /// Every format at both page capacities, rotated ones only where the head dim is a power of two,
    /// each with its bits per element.
    @Test func reportsEveryFormatAndTheRotation() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvcrush-formats-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for d in [16, 12] {
            let json = dir.appendingPathComponent("out-\(d).json")
            #expect(runCommandLine(["formats", "--dump", try tinyDump(headDim: d, in: dir).path, "--format", "json", "--output", json.path]) == 0)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: json)) as? [String: Any])
            let results = try #require(object["results"] as? [[String: Any]])
            #expect(object["rotationSupported"] as? Bool == (d == 16))
            let names = Set(results.map { r in "\(r["tensor"]!) \(r["format"]!)\(r["rotated"] as! Bool ? "+rot" : "") \(r["pageCapacity"] is NSNull ? "" : "\(r["pageCapacity"]!)")" })
            for name in ["keys int3/channel 32", "keys int3/channel 64", "keys int4/channel 64", "values int3/g32 ", "values lm3 ", "keys lm2 "] {
                #expect(names.contains(name), "d \(d): \(name) missing")
            }
            #expect(names.contains("values lm3+rot ") == (d == 16) && names.contains("keys int4/channel+rot 32") == (d == 16), "d \(d)")
            #expect(!names.contains { $0.hasPrefix("values") && $0.contains("channel") })
            let lm3 = try #require(results.first { $0["format"] as? String == "lm3" && $0["tensor"] as? String == "values" })
            #expect(lm3["bitsPerElement"] as? Double == Double(8 * ((3 * d + 7) / 8) + 16) / Double(d))  // whole code bytes + the norm
        }
        for bad in [["--pages", "0"], ["--page", "x"], ["--seed", "-1"], ["--format", "xml"]] {
            #expect(runCommandLine(["formats"] + bad) == 2, "\(bad)")
        }
    }
}
