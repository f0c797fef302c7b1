import KVQuantization
import Foundation

extension KVDump {
    /// The repository's bundled fixture, `Fixtures/smollm2-135m-heapq-fixture.safetensors`: layers
    /// 1, 15 and 29 of the shared SmolLM2-135M dump, all heads and 2048 tokens, stored as F16
    /// (see `Fixtures/README.md`).
    ///
    /// Resolved from this source file's location at build time, so it holds for `swift run` and
    /// `swift test` in a clone; a binary moved elsewhere should take the path as an argument.
    public static let bundledFixtureURL: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Sources/KVExperiments
        .deletingLastPathComponent()  // Sources
        .deletingLastPathComponent()  // repository root
        .appendingPathComponent("Fixtures/smollm2-135m-heapq-fixture.safetensors")
}
