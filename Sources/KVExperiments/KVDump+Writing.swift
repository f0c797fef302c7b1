import KVQuantization
import Foundation

extension KVDump {
    /// A writer holding this dump as a `kv-dump/1` safetensors file, with keys, values and queries
    /// stored as `dtype` (F32, F16 or BF16; rounding to nearest even) and `tokens` as I32.
    ///
    /// Metadata is `metadata` with `layers` set to the loaded layers.
    ///
    /// - Precondition: `dtype.isConvertibleToFloat`.
    public func safetensorsWriter(storing dtype: SafetensorsDType = .f32) -> SafetensorsWriter {
        precondition(dtype.isConvertibleToFloat, "KVDump: keys, values and queries cannot be stored as \(dtype)")
        func tensor(_ values: [Float], _ shape: [Int]) -> SafetensorsTensor {
            switch dtype {
            case .f16: .float16(values, shape: shape)
            case .bf16: .bfloat16(values, shape: shape)
            default: .float32(values, shape: shape)
            }
        }
        var fileMetadata = metadata
        fileMetadata["layers"] = layerIndices.map(String.init).joined(separator: ",")  // only those loaded
        fileMetadata["sliding_windows"] = Self.windowList(layers)
        var writer = SafetensorsWriter(metadata: fileMetadata)
        for layer in layers {
            writer.add(tensor(layer.keys, shape.kvShape), named: "layers.\(layer.index).keys")
            writer.add(tensor(layer.values, shape.kvShape), named: "layers.\(layer.index).values")
            writer.add(tensor(layer.queries, shape.queryShape), named: "layers.\(layer.index).queries")
        }
        if let tokens { writer.add(.int32(tokens, shape: [shape.tokenCount]), named: "tokens") }
        return writer
    }

    /// Writes this dump to `url` (temporary file, then rename).
    ///
    /// Values beyond ±65504 become infinite at F16 and the file then fails to load; store F32 for
    /// such data.
    public func write(to url: URL, storing dtype: SafetensorsDType = .f32) throws(SafetensorsError) {
        try safetensorsWriter(storing: dtype).write(to: url)
    }
}
