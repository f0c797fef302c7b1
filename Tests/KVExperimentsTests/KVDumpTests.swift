import Foundation
import Testing
import TestSupport
@testable import KVExperiments

/// A small synthetic dump: 4 query heads over 2 KV heads, headDim 8, 16 tokens, queries from 12.
private func syntheticDump(seed: UInt64 = 5, layers: [Int] = [0, 3], tokens: Bool = true) throws -> KVDump {
    var g = SeededGenerator(seed: seed)
    let shape = try KVDumpShape(headCount: 4, kvHeadCount: 2, headDim: 8, tokenCount: 16, queryStart: 12)
    func random(_ n: Int) -> [Float] { (0..<n).map { _ in Float(g.nextGaussian()) } }
    let built = layers.map { l in
        KVDumpLayer(index: l, shape: shape, keys: random(shape.kvElementCount), values: random(shape.kvElementCount),
                    queries: random(shape.queryElementCount))
    }
    return KVDump(model: "synthetic", shape: shape, layers: built,
                  tokens: tokens ? (0..<16).map { Int32($0 * 7) } : nil, metadata: ["text": "none"])
}

/// The synthetic dump's tensors and metadata, for tests that break one of them.
private func dumpParts() throws -> (metadata: [String: String], tensors: [String: SafetensorsTensor]) {
    let writer = try syntheticDump().safetensorsWriter()
    var tensors: [String: SafetensorsTensor] = [:]
    for name in writer.tensorNames { tensors[name] = writer[name] }
    return (writer.metadata, tensors)
}

private func load(_ metadata: [String: String], _ tensors: [String: SafetensorsTensor]) throws -> KVDump {
    var writer = SafetensorsWriter(metadata: metadata)
    for name in tensors.keys.sorted() { writer.add(tensors[name]!, named: name) }
    return try KVDump(file: SafetensorsFile(data: writer.serialized()))
}

/// Expects loading the synthetic dump, changed by `change`, to throw exactly `expected`.
private func expectDumpError(
    _ expected: KVDumpError, sourceLocation: SourceLocation = #_sourceLocation,
    _ change: (inout [String: String], inout [String: SafetensorsTensor]) -> Void
) throws {
    var (metadata, tensors) = try dumpParts()
    change(&metadata, &tensors)
    #expect(throws: expected, sourceLocation: sourceLocation) { try load(metadata, tensors) }
}

@Suite struct KVDumpTests {
    /// Sliding windows travel in `sliding_windows` (one entry per listed layer, `none` for full
    /// attention), survive writing a subset of layers, and a bad list is a metadata error.
    @Test func slidingWindowsRoundTrip() throws {
        let plain = try syntheticDump()
        #expect(plain.metadata["sliding_windows"] == nil && plain.layers.allSatisfy { $0.slidingWindow == nil })
        let layers = plain.layers.enumerated().map { i, l in
            KVDumpLayer(index: l.index, shape: l.shape, keys: l.keys, values: l.values, queries: l.queries, slidingWindow: i == 0 ? 5 : nil)
        }
        let windowed = KVDump(model: "synthetic", shape: plain.shape, layers: layers)
        #expect(windowed.metadata["sliding_windows"] == "5,none")
        let file = try SafetensorsFile(data: windowed.safetensorsWriter().serialized())
        #expect(try KVDump(file: file).layers.map(\.slidingWindow) == [5, nil])
        #expect(try KVDump(file: file, layers: [3, 0]).layers.map(\.slidingWindow) == [nil, 5])
        // A subset written again keeps only its own layers' windows.
        let only3 = try KVDump(file: file, layers: [3])
        #expect(only3.safetensorsWriter().metadata["sliding_windows"] == nil)
        let only0 = try KVDump(file: SafetensorsFile(data: KVDump(file: file, layers: [0]).safetensorsWriter().serialized()))
        #expect(only0.layers.map(\.slidingWindow) == [5] && only0.metadata["sliding_windows"] == "5")
        #expect(windowed.layers[0].visibleRange(queryPosition: 13) == 9..<14 && windowed.layers[0].visibleRange(queryPosition: 2) == 0..<3)
        #expect(windowed.layers[1].visibleRange(queryPosition: 13) == 0..<14)
        let expected = "a comma list of 2 windows (positive integers or none), one per listed layer"
        for bad in ["5", "5,none,7", "0,none", "-1,none", "five,none", ""] {
            try expectDumpError(.invalidMetadata(key: "sliding_windows", value: bad, expected: expected)) { m, _ in m["sliding_windows"] = bad }
        }
    }

    @Test func writeThenLoadRoundTripsAtF32() throws {
        let dump = try syntheticDump()
        let url = SafetensorsTestFiles.temporaryURL("dump.safetensors")
        defer { try? FileManager.default.removeItem(at: url.deletingLastPathComponent()) }
        try dump.write(to: url)
        let back = try KVDump(contentsOf: url)
        #expect(back.model == "synthetic")
        #expect(back.shape == dump.shape)
        #expect(back.layerIndices == [0, 3])
        #expect(back.tokens == dump.tokens)
        #expect(back.metadata == dump.metadata)
        #expect(back.metadata["text"] == "none" && back.metadata["format"] == "kv-dump/1")
        for (a, b) in zip(dump.layers, back.layers) {
            #expect(a.keys == b.keys && a.values == b.values && a.queries == b.queries)
        }
    }

    @Test func loadingAtF16AndBF16GivesRoundedValues() throws {
        let dump = try syntheticDump(tokens: false)
        for dtype in [SafetensorsDType.f16, .bf16] {
            let file = try SafetensorsFile(data: dump.safetensorsWriter(storing: dtype).serialized())
            #expect(file.info("layers.3.keys")?.dtype == dtype)
            let back = try KVDump(file: file)
            #expect(back.tokens == nil)
            let round: (Float) -> Float = dtype == .f16
                ? { Float(Float16($0)) }
                : { Float(bitPattern: UInt32(SafetensorsTensor.bfloat16Bits($0)) << 16) }
            #expect(back.layer(3).values == dump.layer(3).values.map(round))
            #expect(back.layer(0).queries == dump.layer(0).queries.map(round))
        }
    }

    @Test func accessorsFollowTheLayout() throws {
        let dump = try syntheticDump()
        let layer = dump.layer(3)
        let s = dump.shape
        #expect(s.queryCount == 4 && s.groupSize == 2)
        #expect((0..<4).map(s.kvHead(forQueryHead:)) == [0, 0, 1, 1])
        #expect(s.kvShape == [2, 16, 8] && s.queryShape == [4, 4, 8])
        for g in 0..<2 {
            for t in [0, 7, 15] {
                let start = (g * 16 + t) * 8
                #expect(Array(layer.key(kvHead: g, token: t)) == Array(layer.keys[start ..< start + 8]))
                #expect(Array(layer.value(kvHead: g, token: t)) == Array(layer.values[start ..< start + 8]))
            }
            #expect(Array(layer.keys(kvHead: g)) == Array(layer.keys[g * 128 ..< (g + 1) * 128]))
            #expect(Array(layer.values(kvHead: g)) == Array(layer.values[g * 128 ..< (g + 1) * 128]))
        }
        for h in 0..<4 {
            for p in 12..<16 {
                let start = (h * 4 + p - 12) * 8
                #expect(Array(layer.query(head: h, position: p)) == Array(layer.queries[start ..< start + 8]))
            }
        }
    }

    @Test func loadingChosenLayersOnly() throws {
        let dump = try syntheticDump(layers: [2, 5, 9])
        let file = try SafetensorsFile(data: dump.safetensorsWriter().serialized())
        let part = try KVDump(file: file, layers: [9, 2, 9])
        #expect(part.layerIndices == [9, 2])
        #expect(part.layer(2).keys == dump.layer(2).keys)
        #expect(throws: KVDumpError.layerNotInDump(requested: 4, available: [2, 5, 9])) {
            try KVDump(file: file, layers: [4])
        }
        // Writing a partial dump lists only its layers, in its order.
        let again = try KVDump(file: SafetensorsFile(data: part.safetensorsWriter().serialized()))
        #expect(again.layerIndices == [9, 2])
        #expect(again.metadata["layers"] == "9,2")
    }

    @Test func shapeValidation() {
        #expect(throws: KVDumpError.headsNotDivisible(heads: 9, kvHeads: 2)) {
            try KVDumpShape(headCount: 9, kvHeadCount: 2, headDim: 64, tokenCount: 8, queryStart: 0)
        }
        #expect(throws: KVDumpError.invalidMetadata(key: "head_dim", value: "0", expected: "a positive integer")) {
            try KVDumpShape(headCount: 9, kvHeadCount: 3, headDim: 0, tokenCount: 8, queryStart: 0)
        }
        #expect(throws: KVDumpError.invalidMetadata(key: "query_start", value: "9", expected: "an integer in 0...8 (tokens)")) {
            try KVDumpShape(headCount: 9, kvHeadCount: 3, headDim: 4, tokenCount: 8, queryStart: 9)
        }
        #expect(throws: KVDumpError.self) {
            try KVDumpShape(headCount: 1, kvHeadCount: 1, headDim: Int.max / 2, tokenCount: 8, queryStart: 0)
        }
        #expect(throws: Never.self) {  // no queries at all is allowed
            try KVDumpShape(headCount: 9, kvHeadCount: 3, headDim: 4, tokenCount: 8, queryStart: 8)
        }
    }

    @Test func metadataErrors() throws {
        try expectDumpError(.unsupportedFormat(found: nil)) { m, _ in m["format"] = nil }
        try expectDumpError(.unsupportedFormat(found: "kv-dump/2")) { m, _ in m["format"] = "kv-dump/2" }
        try expectDumpError(.missingMetadata(key: "model")) { m, _ in m["model"] = nil }
        for key in ["num_heads", "num_kv_heads", "head_dim", "tokens", "query_start", "layers"] {
            try expectDumpError(.missingMetadata(key: key)) { m, _ in m[key] = nil }
        }
        try expectDumpError(.invalidMetadata(key: "head_dim", value: "8.0", expected: "an integer")) { m, _ in
            m["head_dim"] = "8.0"
        }
        try expectDumpError(.invalidMetadata(key: "num_heads", value: "-4", expected: "a positive integer")) { m, _ in
            m["num_heads"] = "-4"
        }
        try expectDumpError(.headsNotDivisible(heads: 4, kvHeads: 3)) { m, _ in m["num_kv_heads"] = "3" }
        try expectDumpError(.invalidMetadata(key: "query_start", value: "17",
                                             expected: "an integer in 0...16 (tokens)")) { m, _ in
            m["query_start"] = "17"
        }
        let listError = "a comma list of distinct non-negative layer indices"
        for bad in ["", "0,,3", "0,0", "-1", "a", "0;3"] {
            try expectDumpError(.invalidMetadata(key: "layers", value: bad, expected: listError)) { m, _ in
                m["layers"] = bad
            }
        }
    }

    @Test func tensorErrors() throws {
        try expectDumpError(.missingTensor("layers.3.values")) { _, t in t["layers.3.values"] = nil }
        try expectDumpError(.missingTensor("layers.7.keys")) { m, _ in m["layers"] = "0,3,7" }
        try expectDumpError(.unlistedTensor("layers.3.keys")) { m, _ in m["layers"] = "0" }
        try expectDumpError(.shapeMismatch(tensor: "layers.0.keys", expected: [2, 16, 8], found: [2, 8, 16])) { _, t in
            t["layers.0.keys"] = .float32([Float](repeating: 0, count: 256), shape: [2, 8, 16])
        }
        try expectDumpError(.shapeMismatch(tensor: "layers.0.queries", expected: [4, 5, 8], found: [4, 4, 8])) { m, _ in
            m["query_start"] = "11"
        }
        try expectDumpError(.wrongDType(tensor: "layers.0.values", expected: "F32, F16 or BF16", found: .i32)) { _, t in
            t["layers.0.values"] = .int32([Int32](repeating: 0, count: 256), shape: [2, 16, 8])
        }
        try expectDumpError(.wrongDType(tensor: "tokens", expected: "I32", found: .f32)) { _, t in
            t["tokens"] = .float32([Float](repeating: 0, count: 16), shape: [16])
        }
        try expectDumpError(.shapeMismatch(tensor: "tokens", expected: [16], found: [15])) { _, t in
            t["tokens"] = .int32([Int32](repeating: 0, count: 15), shape: [15])
        }
        try expectDumpError(.nonFinite(tensor: "layers.3.keys", index: 5, value: .infinity)) { _, t in
            var keys = [Float](repeating: 1, count: 256)
            keys[5] = .infinity
            t["layers.3.keys"] = .float32(keys, shape: [2, 16, 8])
        }
        // Tensors outside the convention are allowed and ignored.
        var (metadata, tensors) = try dumpParts()
        tensors["layers.0.attention"] = .float32([1], shape: [1])
        tensors["extra"] = .int32([1], shape: [1])
        #expect(try load(metadata, tensors).layerIndices == [0, 3])
        metadata["layers"] = " 3 , 0 "
        #expect(try load(metadata, tensors).layerIndices == [3, 0])
    }

    @Test func badFilesAreFileErrors() {
        let url = URL(fileURLWithPath: "/nonexistent-kvcrush-dir/dump.safetensors")
        let error = #expect(throws: KVDumpError.self) { try KVDump(contentsOf: url) }
        guard case .file(.unreadable)? = error else {
            Issue.record("expected .file(.unreadable), got \(String(describing: error))")
            return
        }
        #expect(error?.description.hasPrefix("not a readable safetensors file: cannot read") == true)
    }
}
