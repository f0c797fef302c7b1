import KVQuantization

/// How well a storage format reproduces a layer's real keys or values.
public struct ReconstructionError: Sendable, Hashable {
    /// One way of storing a tensor: a format, whether its head vectors are rotated first (as a store
    /// with `RotationSettings` does for its quantised tiers), and the page capacity of page-wise
    /// formats.
    public struct Variant: Sendable, Hashable, CustomStringConvertible {
        public var format: StorageFormat
        public var rotated: Bool
        /// Tokens per page of a page-wise (`.channelwise`) format; ignored by row-wise formats.
        public var pageCapacity: Int

        public init(_ format: StorageFormat, rotated: Bool = false, pageCapacity: Int = 32) {
            self.format = format
            self.rotated = rotated
            self.pageCapacity = pageCapacity
        }

        /// Bits per element, codes and FP16 parameters (full pages for page-wise formats; no
        /// positions).
        public func bitsPerElement(headDim d: Int) -> Double {
            8 * format.bytesPerElement(headDim: d, pageCapacity: format.isPageWise ? pageCapacity : 1)
        }

        /// E.g. `int4/channel p64`, `lm3+rot`, `int4/g32`.
        public var description: String {
            format.description + (rotated ? "+rot" : "") + (format.isPageWise ? " p\(pageCapacity)" : "")
        }
    }

    /// The model layer.
    public var layer: Int
    /// `"keys"` or `"values"`.
    public var tensor: String
    public var variant: Variant
    /// The format (`variant.format`).
    public var format: StorageFormat { variant.format }
    /// ‖X − X̂‖_F / ‖X‖_F over every head and token of the layer.
    public var relativeFrobenius: Double
    /// The mean over the layer's KV heads of each head's ‖X − X̂‖_F / ‖X‖_F (the figure
    /// `format_probe.py` averages).
    public var meanHeadRelativeFrobenius: Double
    /// max |x − x̂|.
    public var maxAbsolute: Double
    /// max |x| (for scale).
    public var maxMagnitude: Double
    /// Bytes per element, parameters included (full pages of `pageCapacity` for channelwise).
    public var bytesPerElement: Double
    /// Bits per element (8 × `bytesPerElement`).
    public var bitsPerElement: Double { 8 * bytesPerElement }

    /// Measures `formats` on every loaded layer of `dump`, for keys and values (channelwise formats
    /// on keys only), quantising each KV head's tokens in pages of `pageCapacity` for channelwise
    /// formats (a last partial page is quantised on its own).
    ///
    /// - Complexity: O(layers · formats · tokens · headDim).
    public static func measure(_ dump: KVDump, formats: [StorageFormat], pageCapacity: Int = 32) throws -> [ReconstructionError] {
        try measure(dump, variants: formats.map { Variant($0, pageCapacity: pageCapacity) })
    }

    /// Measures `variants` on every loaded layer of `dump`, for keys and values (page-wise formats
    /// on keys only). Rotated variants (only for power-of-two head dims; others are skipped) rotate
    /// each head vector with the rotation a store seeded `rotationSeed` uses for that layer's keys
    /// or values, clamp to ±65504, quantise, decode and rotate back: the error is measured on the
    /// original vectors.
    public static func measure(_ dump: KVDump, variants: [Variant], rotationSeed: UInt64 = 0) throws -> [ReconstructionError] {
        let s = dump.shape, d = s.headDim
        var out = [ReconstructionError]()
        for layer in dump.layers {
            for (tensor, data) in [("keys", layer.keys), ("values", layer.values)] {
                let rotation = RotationSettings(keys: .all, values: .all, seed: rotationSeed)
                    .rotation(layer: layer.index, values: tensor == "values", headDim: d)
                for v in variants {
                    if v.format.isPageWise && tensor == "values" { continue }
                    if v.rotated && rotation == nil { continue }
                    var input = data
                    if v.rotated, let r = rotation { input = rotateRows(data, r, inverse: false).map { min(max($0, -65504), 65504) } }
                    var decoded = try roundTrip(input, rows: s.kvHeadCount * s.tokenCount, tokensPerHead: s.tokenCount,
                                                headDim: d, format: v.format, pageCapacity: v.pageCapacity)
                    if v.rotated, let r = rotation { decoded = rotateRows(decoded, r, inverse: true) }
                    var num = 0.0, den = 0.0, maxErr = 0.0, maxMag = 0.0
                    var headNum = [Double](repeating: 0, count: s.kvHeadCount), headDen = headNum
                    for i in data.indices {
                        let e = Double(data[i]) - Double(decoded[i]), h = i / (s.tokenCount * d)
                        num += e * e
                        den += Double(data[i]) * Double(data[i])
                        headNum[h] += e * e
                        headDen[h] += Double(data[i]) * Double(data[i])
                        maxErr = max(maxErr, abs(e))
                        maxMag = max(maxMag, abs(Double(data[i])))
                    }
                    let perHead = zip(headNum, headDen).map { $1 == 0 ? 0 : ($0 / $1).squareRoot() }
                    out.append(ReconstructionError(
                        layer: layer.index, tensor: tensor, variant: v,
                        relativeFrobenius: den == 0 ? 0 : (num / den).squareRoot(),
                        meanHeadRelativeFrobenius: perHead.reduce(0, +) / Double(max(perHead.count, 1)),
                        maxAbsolute: maxErr, maxMagnitude: maxMag,
                        bytesPerElement: v.format.bytesPerElement(headDim: d, pageCapacity: v.format.isPageWise ? v.pageCapacity : 1)))
                }
            }
        }
        return out
    }

    /// Every row of `x` (`headDim` = `r.dimension` each) rotated by R (or Rᵀ).
    static func rotateRows(_ x: [Float], _ r: HadamardRotation, inverse: Bool) -> [Float] {
        var y = x
        y.withUnsafeMutableBufferPointer { p in
            for row in 0..<(x.count / r.dimension) {
                if inverse { r.unrotate(p.baseAddress! + row * r.dimension) } else { r.rotate(p.baseAddress! + row * r.dimension) }
            }
        }
        return y
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

    /// The affine formats the README's table compares: INT8/INT4/INT3/INT2 with groups of 32, 64 and
    /// 128, and per-channel keys.
    public static let standardFormats: [StorageFormat] = CodeWidth.allCases.flatMap { w in
        [32, 64, 128].map { StorageFormat.grouped(w, groupSize: $0) } + [.channelwise(w)]
    }

    /// What `kvcrush formats` reports: every affine format (per-channel keys at each of
    /// `pageCapacities`), Lloyd–Max codes at 4, 3 and 2 bits with and without rotation, and rotated
    /// per-channel INT4 and INT3 keys; most bits first.
    public static func allVariants(pageCapacities: [Int] = [32, 64]) -> [Variant] {
        var v = [Variant]()
        for w in CodeWidth.allCases {
            v += [32, 64, 128].map { Variant(.grouped(w, groupSize: $0)) }
            v += pageCapacities.map { Variant(.channelwise(w), pageCapacity: $0) }
            if w == .int4 || w == .int3 { v += pageCapacities.map { Variant(.channelwise(w), rotated: true, pageCapacity: $0) } }
            if w != .int8 { v += [Variant(.lloydMax(w)), Variant(.lloydMax(w), rotated: true)] }
        }
        return v
    }
}
