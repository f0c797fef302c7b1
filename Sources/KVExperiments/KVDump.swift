import KVQuantization
import Foundation

/// A `kv-dump/1` file: real keys, values and queries of some layers of a model over one text.
///
/// The convention (`../shared/docs/evaluation.md`, "KV dump files") is a safetensors file with
///
///     layers.{L}.keys     F32|F16|BF16   [kvHeads, tokens, headDim]   after RoPE
///     layers.{L}.values   F32|F16|BF16   [kvHeads, tokens, headDim]
///     layers.{L}.queries  F32|F16|BF16   [heads, tokens − query_start, headDim]   after RoPE
///     tokens              I32            [tokens]                     (optional)
///
/// and string metadata `format` = `kv-dump/1`, `model`, `layers` (comma list), `num_heads`,
/// `num_kv_heads`, `head_dim`, `tokens`, `query_start`, plus free-form provenance, which is kept.
/// (BF16 is accepted beside the documented F32 and F16.) Models with sliding-window layers (Gemma 3)
/// add `sliding_windows`: a comma list in the order of `layers`, each a window in tokens or `none`;
/// without it every layer is full causal attention.
///
/// Loading checks every shape against the metadata and that every value is finite, and converts
/// only the layers asked for.
public struct KVDump: Sendable {
    /// The format this type reads and writes (`__metadata__.format`).
    public static let format = "kv-dump/1"

    /// The model the tensors came from (`model`).
    public let model: String
    /// Dimensions shared by every layer.
    public let shape: KVDumpShape
    /// The loaded layers, in the order of the metadata's `layers` list (or of the request).
    public let layers: [KVDumpLayer]
    /// The token ids, if the file has them.
    public let tokens: [Int32]?
    /// All metadata as read (or as will be written), including provenance keys.
    public let metadata: [String: String]

    /// The model indices of the loaded layers, e.g. `[1, 15, 29]`.
    public var layerIndices: [Int] { layers.map(\.index) }

    /// The layer with model index `index`.
    ///
    /// - Precondition: the layer was loaded (see `layerIndices`).
    public func layer(_ index: Int) -> KVDumpLayer {
        guard let layer = layers.first(where: { $0.index == index }) else {
            preconditionFailure("KVDump: layer \(index) is not loaded (loaded: \(layerIndices))")
        }
        return layer
    }

    /// A dump built in code (for tests and for writing fixtures).
    ///
    /// `metadata` supplies provenance; the convention's keys (`format`, `model`, `layers`,
    /// `num_heads`, `num_kv_heads`, `head_dim`, `tokens`, `query_start`) are set from the other
    /// arguments and override any given there.
    ///
    /// - Precondition: every layer has `shape`, layer indices are distinct and non-negative, and
    ///   `tokens`, if given, has `shape.tokenCount` elements.
    public init(model: String, shape: KVDumpShape, layers: [KVDumpLayer], tokens: [Int32]? = nil,
                metadata: [String: String] = [:]) {
        precondition(layers.allSatisfy { $0.shape == shape }, "KVDump: every layer must have the dump's shape")
        precondition(Set(layers.map(\.index)).count == layers.count, "KVDump: layer indices must be distinct")
        precondition(layers.allSatisfy { $0.index >= 0 }, "KVDump: layer indices must be non-negative")
        precondition(tokens.map { $0.count == shape.tokenCount } ?? true,
                     "KVDump: \(tokens?.count ?? 0) token ids for \(shape.tokenCount) tokens")
        var all = metadata
        all["format"] = Self.format
        all["model"] = model
        all["layers"] = layers.map { String($0.index) }.joined(separator: ",")
        all["num_heads"] = String(shape.headCount)
        all["num_kv_heads"] = String(shape.kvHeadCount)
        all["head_dim"] = String(shape.headDim)
        all["tokens"] = String(shape.tokenCount)
        all["query_start"] = String(shape.queryStart)
        all["sliding_windows"] = Self.windowList(layers)
        self.model = model
        self.shape = shape
        self.layers = layers
        self.tokens = tokens
        self.metadata = all
    }

    /// Loads the dump at `url`, converting only `layers` (all listed layers when `nil`).
    ///
    /// - Throws: `KVDumpError` (a bad safetensors file is `.file(_)`).
    /// - Complexity: O(elements of the loaded layers); the file is mapped, not read whole.
    public init(contentsOf url: URL, layers: [Int]? = nil) throws(KVDumpError) {
        let file: SafetensorsFile
        do { file = try SafetensorsFile(contentsOf: url) } catch { throw .file(error) }
        try self.init(file: file, layers: layers)
    }

    /// Loads a dump from an open safetensors file, converting only `layers` (all when `nil`), in the
    /// order given; a layer requested twice is loaded once.
    ///
    /// - Throws: `KVDumpError`; `layerNotInDump` for a requested layer the metadata does not list.
    public init(file: SafetensorsFile, layers requested: [Int]? = nil) throws(KVDumpError) {
        let metadata = file.metadata
        guard let format = metadata["format"], format == Self.format else {
            throw .unsupportedFormat(found: metadata["format"])
        }
        guard let model = metadata["model"] else { throw .missingMetadata(key: "model") }
        let shape = try KVDumpShape(
            headCount: Self.integer("num_heads", in: metadata),
            kvHeadCount: Self.integer("num_kv_heads", in: metadata),
            headDim: Self.integer("head_dim", in: metadata),
            tokenCount: Self.integer("tokens", in: metadata),
            queryStart: Self.integer("query_start", in: metadata))
        let listed = try Self.layerList(in: metadata)

        // Tensors of the convention must belong to a listed layer.
        let listedSet = Set(listed)
        for name in file.tensorNames {
            if let layer = Self.conventionLayer(of: name), !listedSet.contains(layer) {
                throw .unlistedTensor(name)
            }
        }

        let chosen: [Int]
        if let requested {
            for l in requested where !listedSet.contains(l) {
                throw .layerNotInDump(requested: l, available: listed)
            }
            var seen: Set<Int> = []
            chosen = requested.filter { seen.insert($0).inserted }  // first occurrence of each
        } else {
            chosen = listed
        }

        let windows = try Self.windowList(in: metadata, layerCount: listed.count)
        var loaded: [KVDumpLayer] = []
        for l in chosen {
            let keys = try Self.floats("layers.\(l).keys", shape: shape.kvShape, in: file)
            let values = try Self.floats("layers.\(l).values", shape: shape.kvShape, in: file)
            let queries = try Self.floats("layers.\(l).queries", shape: shape.queryShape, in: file)
            loaded.append(KVDumpLayer(index: l, shape: shape, keys: keys, values: values, queries: queries,
                                      slidingWindow: windows?[listed.firstIndex(of: l)!] ?? nil))
        }

        var tokens: [Int32]?
        if let info = file.info("tokens") {
            guard info.dtype == .i32 else { throw .wrongDType(tensor: "tokens", expected: "I32", found: info.dtype) }
            guard info.shape == [shape.tokenCount] else {
                throw .shapeMismatch(tensor: "tokens", expected: [shape.tokenCount], found: info.shape)
            }
            do { tokens = try file.int32s("tokens") } catch { throw .file(error) }
        }

        self.model = model
        self.shape = shape
        self.layers = loaded
        self.tokens = tokens
        self.metadata = metadata
    }

    // MARK: Parsing helpers

    /// The `sliding_windows` value of `layers` (`nil` when none has a window).
    static func windowList(_ layers: [KVDumpLayer]) -> String? {
        guard layers.contains(where: { $0.slidingWindow != nil }) else { return nil }
        return layers.map { $0.slidingWindow.map(String.init) ?? "none" }.joined(separator: ",")
    }

    /// `sliding_windows`, one entry per listed layer (`nil` when absent).
    private static func windowList(in metadata: [String: String], layerCount: Int) throws(KVDumpError) -> [Int?]? {
        guard let text = metadata["sliding_windows"] else { return nil }
        let expected = "a comma list of \(layerCount) windows (positive integers or none), one per listed layer"
        var windows: [Int?] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let t = part.trimmingCharacters(in: .whitespaces)
            if t == "none" { windows.append(nil); continue }
            guard let w = Int(t), w > 0 else { throw .invalidMetadata(key: "sliding_windows", value: text, expected: expected) }
            windows.append(w)
        }
        guard windows.count == layerCount else { throw .invalidMetadata(key: "sliding_windows", value: text, expected: expected) }
        return windows
    }

    private static func integer(_ key: String, in metadata: [String: String]) throws(KVDumpError) -> Int {
        guard let text = metadata[key] else { throw .missingMetadata(key: key) }
        guard let value = Int(text.trimmingCharacters(in: .whitespaces)) else {
            throw .invalidMetadata(key: key, value: text, expected: "an integer")
        }
        return value
    }

    private static func layerList(in metadata: [String: String]) throws(KVDumpError) -> [Int] {
        guard let text = metadata["layers"] else { throw .missingMetadata(key: "layers") }
        let expected = "a comma list of distinct non-negative layer indices"
        var layers: [Int] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let l = Int(part.trimmingCharacters(in: .whitespaces)), l >= 0, !layers.contains(l) else {
                throw .invalidMetadata(key: "layers", value: text, expected: expected)
            }
            layers.append(l)
        }
        return layers
    }

    /// The layer index of a convention tensor name `layers.{L}.{keys|values|queries}`, else `nil`.
    private static func conventionLayer(of name: String) -> Int? {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "layers", ["keys", "values", "queries"].contains(parts[2]),
              let l = Int(parts[1]) else { return nil }
        return l
    }

    private static func floats(
        _ name: String, shape expected: [Int], in file: SafetensorsFile
    ) throws(KVDumpError) -> [Float] {
        guard let info = file.info(name) else { throw .missingTensor(name) }
        guard info.dtype.isConvertibleToFloat else {
            throw .wrongDType(tensor: name, expected: "F32, F16 or BF16", found: info.dtype)
        }
        guard info.shape == expected else {
            throw .shapeMismatch(tensor: name, expected: expected, found: info.shape)
        }
        let values: [Float]
        do { values = try file.floats(name) } catch { throw .file(error) }
        if let i = values.firstIndex(where: { !$0.isFinite }) {
            throw .nonFinite(tensor: name, index: i, value: values[i])
        }
        return values
    }
}
