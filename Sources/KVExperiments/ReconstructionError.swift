import KVQuantization

/// How well a storage format reproduces a layer's real keys or values.
public struct ReconstructionError: Sendable, Hashable {
    /// The model layer.
    public var layer: Int
    /// `"keys"` or `"values"`.
    public var tensor: String
    public var format: StorageFormat
    /// ‖X − X̂‖_F / ‖X‖_F over every head and token of the layer.
    public var relativeFrobenius: Double
    /// max |x − x̂|.
    public var maxAbsolute: Double
    /// max |x| (for scale).
    public var maxMagnitude: Double
    /// Bytes per element, parameters included (full pages of `pageCapacity` for channelwise).
    public var bytesPerElement: Double

    /// Measures `formats` on every loaded layer of `dump`, for keys and values (channelwise formats
    /// on keys only), quantising each KV head's tokens in pages of `pageCapacity` for channelwise
    /// formats (a last partial page is quantised on its own).
    ///
    /// - Complexity: O(layers · formats · tokens · headDim).
    public static func measure(_ dump: KVDump, formats: [StorageFormat], pageCapacity: Int = 32) throws -> [ReconstructionError] {
        let s = dump.shape, d = s.headDim
        var out = [ReconstructionError]()
        for layer in dump.layers {
            for (tensor, data) in [("keys", layer.keys), ("values", layer.values)] {
                for format in formats {
                    if format.isPageWise && tensor == "values" { continue }
                    let decoded = try roundTrip(data, rows: s.kvHeadCount * s.tokenCount, tokensPerHead: s.tokenCount,
                                                headDim: d, format: format, pageCapacity: pageCapacity)
                    var num = 0.0, den = 0.0, maxErr = 0.0, maxMag = 0.0
                    for i in data.indices {
                        let e = Double(data[i]) - Double(decoded[i])
                        num += e * e
                        den += Double(data[i]) * Double(data[i])
                        maxErr = max(maxErr, abs(e))
                        maxMag = max(maxMag, abs(Double(data[i])))
                    }
                    out.append(ReconstructionError(
                        layer: layer.index, tensor: tensor, format: format,
                        relativeFrobenius: den == 0 ? 0 : (num / den).squareRoot(), maxAbsolute: maxErr, maxMagnitude: maxMag,
                        bytesPerElement: format.bytesPerElement(headDim: d, pageCapacity: format.isPageWise ? pageCapacity : 1)))
                }
            }
        }
        return out
    }

    /// Encodes and decodes `rows` rows of `headDim` (`[head][token][headDim]`) in `format`.
    static func roundTrip(_ x: [Float], rows: Int, tokensPerHead: Int, headDim d: Int, format: StorageFormat,
                          pageCapacity: Int) throws -> [Float] {
        var y = [Float](repeating: 0, count: x.count)
        try x.withUnsafeBufferPointer { xp in
            try y.withUnsafeMutableBufferPointer { yp in
                if case .channelwise(let w) = format {
                    let codec = try ChannelwiseKeyCodec(w, headDim: d)
                    var codes = [UInt8](repeating: 0, count: pageCapacity * codec.rowByteCount)
                    var params = [UInt8](repeating: 0, count: codec.parameterByteCount)
                    for head in 0..<(rows / tokensPerHead) {
                        var start = 0
                        while start < tokensPerHead {
                            let n = min(pageCapacity, tokensPerHead - start), base = (head * tokensPerHead + start) * d
                            try codes.withUnsafeMutableBytes { cp in
                                try params.withUnsafeMutableBytes { pp in
                                    try codec.encodePage(xp.baseAddress! + base, tokenCount: n, codes: cp.baseAddress!, params: pp.baseAddress!)
                                    for t in 0..<n {
                                        codec.decode(cp.baseAddress! + t * codec.rowByteCount, params: pp.baseAddress!,
                                                     into: yp.baseAddress! + base + t * d)
                                    }
                                }
                            }
                            start += n
                        }
                    }
                } else {
                    let codec = try RowCodec(format, headDim: d)
                    var row = [UInt8](repeating: 0, count: codec.rowByteCount)
                    try row.withUnsafeMutableBytes { rp in
                        for r in 0..<rows {
                            try codec.encode(xp.baseAddress! + r * d, into: rp.baseAddress!)
                            codec.decode(rp.baseAddress!, into: yp.baseAddress! + r * d)
                        }
                    }
                }
            }
        }
        return y
    }

    /// The formats the README's table compares: INT8/INT4/INT2 with groups of 32, 64 and 128, and
    /// per-channel keys.
    public static let standardFormats: [StorageFormat] = CodeWidth.allCases.flatMap { w in
        [32, 64, 128].map { StorageFormat.grouped(w, groupSize: $0) } + [.channelwise(w)]
    }
}
