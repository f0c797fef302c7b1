import Foundation
import Testing
@testable import KVExperiments

/// The bundled fixture: `Fixtures/smollm2-135m-heapq-fixture.safetensors` (see `Fixtures/README.md`).
@Suite struct FixtureTests {
    static let fixtureURL = SafetensorsTestFiles.repositoryRoot
        .appendingPathComponent("Fixtures/smollm2-135m-heapq-fixture.safetensors")
    /// The FP32 source, beside the repository (`<repo>/../shared/data`); absent on some clones.
    static let sourceURL = SafetensorsTestFiles.repositoryRoot
        .appendingPathComponent("../shared/data/smollm2-135m-heapq.safetensors").standardizedFileURL
    static var sourceExists: Bool { FileManager.default.fileExists(atPath: sourceURL.path) }

    @Test func bundledFixtureURLPointsAtTheFixture() {
        #expect(KVDump.bundledFixtureURL.standardizedFileURL.path == Self.fixtureURL.standardizedFileURL.path)
        #expect(FileManager.default.fileExists(atPath: KVDump.bundledFixtureURL.path))
    }

    @Test func fixtureIsAValidKVDumpWithTheDocumentedCut() throws {
        let file = try SafetensorsFile(contentsOf: Self.fixtureURL)
        #expect(file.headerByteCount % 8 == 0)
        for l in [1, 15, 29] {
            #expect(file.info("layers.\(l).keys")?.dtype == .f16)
            #expect(file.info("layers.\(l).values")?.dtype == .f16)
            #expect(file.info("layers.\(l).queries")?.dtype == .f16)
        }
        #expect(file.info("tokens")?.dtype == .i32)
        #expect(file.tensors.count == 10)

        let dump = try KVDump(file: file)
        #expect(dump.model == "SmolLM2-135M-Instruct")
        #expect(dump.layerIndices == [1, 15, 29])
        #expect(dump.shape.headCount == 9 && dump.shape.kvHeadCount == 3 && dump.shape.headDim == 64)
        #expect(dump.shape.tokenCount == 2048 && dump.shape.queryStart == 1984 && dump.shape.queryCount == 64)
        #expect(dump.shape.kvHead(forQueryHead: 8) == 2 && dump.shape.kvHead(forQueryHead: 2) == 0)
        #expect(dump.layer(15).keys.count == 3 * 2048 * 64)
        #expect(dump.layer(29).queries.count == 9 * 64 * 64)
        #expect(dump.tokens?.count == 2048)
        #expect(dump.metadata["fixture_of"] == "smollm2-135m-heapq.safetensors")
        #expect(dump.metadata["cut"]?.isEmpty == false)
        #expect(dump.metadata["layers"] == "1,15,29")
    }

    @Test(.enabled(if: FixtureTests.sourceExists, "needs ../shared/data/smollm2-135m-heapq.safetensors"))
    func fixtureEqualsTheSourceRoundedToF16() throws {
        let fixture = try KVDump(contentsOf: Self.fixtureURL)
        let source = try KVDump(contentsOf: Self.sourceURL, layers: [1, 15, 29])
        #expect(source.shape == fixture.shape)
        #expect(source.tokens == fixture.tokens)
        #expect(source.model == fixture.model)
        for key in ["num_heads", "num_kv_heads", "head_dim", "tokens", "query_start", "rope_theta", "text", "source"] {
            #expect(source.metadata[key] == fixture.metadata[key], "metadata \(key)")
        }
        for (s, f) in zip(source.layers, fixture.layers) {
            #expect(s.index == f.index)
            for (name, a, b) in [("keys", s.keys, f.keys), ("values", s.values, f.values),
                                 ("queries", s.queries, f.queries)] {
                let mismatch = a.indices.first { Float(Float16(a[$0])) != b[$0] }
                #expect(mismatch == nil, "layer \(s.index) \(name): element \(mismatch ?? -1) is not the F16 rounding")
            }
        }
    }
}
