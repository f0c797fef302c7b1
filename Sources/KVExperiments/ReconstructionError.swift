import KVCompression
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
        /// For mixed-width per-channel keys: their average code bits per element (the widths are
        /// allocated per layer when measured; `format` is then only a per-channel placeholder).
        public var mixedBits: Double?

        public init(_ format: StorageFormat, rotated: Bool = false, pageCapacity: Int = 32) {
            self.format = format
            self.rotated = rotated
            self.pageCapacity = pageCapacity
        }

        /// Mixed-width per-channel keys at `bits` per element (`StorageFormat.mixedChannelwise`).
        public static func mixed(bits: Double, pageCapacity: Int) -> Variant {
            var v = Variant(.channelwise(.int4), pageCapacity: pageCapacity)
            v.mixedBits = bits
            return v
        }

        /// Bits per element, codes and FP16 parameters (full pages for page-wise formats; no
        /// positions).
        public func bitsPerElement(headDim d: Int) -> Double {
            if let b = mixedBits { return b + 32 / Double(pageCapacity) }
            return 8 * format.bytesPerElement(headDim: d, pageCapacity: format.isPageWise ? pageCapacity : 1)
        }

        /// E.g. `int4/channel p64`, `lm3+rot`, `int4/g32`, `mix3.5/channel p64`.
        public var description: String {
            let name = mixedBits.map { ChannelWidths.name(averageBits: $0) } ?? format.description
            return name + (rotated ? "+rot" : "") + (format.isPageWise ? " p\(pageCapacity)" : "")
        }
    }

    /// Where mixed-width variants take their widths: allocated from the dump's own queries and key
    /// ranges (in-sample: the score error is then measured on the queries the widths were fitted
    /// to), or from a calibration profile's statistics (measured on another text).
    public enum MixedWidthSource: Sendable {
        case dump
        case statistics(KeyChannelStatistics)
    }

    /// The model layer.
    public var layer: Int
    /// `"keys"` or `"values"`.
    public var tensor: String
    public var variant: Variant
    /// The format measured (for mixed widths, the layer's allocation).
    public var format: StorageFormat
    /// For keys measured with `scoreErrors`: ‖S − Ŝ‖_F / ‖S‖_F of the attention logits q·k over the
    /// dump's queries (each query head against its KV head's tokens); nil otherwise.
    public var scoreRelativeError: Double?
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
    ///
    /// Mixed-width variants (`Variant.mixed`) take each layer's widths from `mixedWidths`. With
    /// `scoreErrors`, keys also get `scoreRelativeError` (O(heads · queries · tokens · headDim) more
    /// per key variant and layer).
    public static func measure(_ dump: KVDump, variants: [Variant], rotationSeed: UInt64 = 0,
                               mixedWidths: MixedWidthSource = .dump, scoreErrors: Bool = false) throws -> [ReconstructionError] {
        let s = dump.shape, d = s.headDim
        var out = [ReconstructionError]()
        for layer in dump.layers {
            for (tensor, data) in [("keys", layer.keys), ("values", layer.values)] {
                let rotation = RotationSettings(keys: .all, values: .all, seed: rotationSeed)
                    .rotation(layer: layer.index, values: tensor == "values", headDim: d)
                for v in variants {
                    if v.format.isPageWise && tensor == "values" { continue }
                    if v.rotated && rotation == nil { continue }
                    var format = v.format
                    if let b = v.mixedBits {
                        guard let w = widths(layer, dump: dump, bits: b, pageCapacity: v.pageCapacity, source: mixedWidths) else { continue }
                        format = .mixedChannelwise(w)
                    }
                    var input = data
                    if v.rotated, let r = rotation { input = rotateRows(data, r, inverse: false).map { min(max($0, -65504), 65504) } }
                    var decoded = try roundTrip(input, rows: s.kvHeadCount * s.tokenCount, tokensPerHead: s.tokenCount,
                                                headDim: d, format: format, pageCapacity: v.pageCapacity)
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
                        layer: layer.index, tensor: tensor, variant: v, format: format,
                        scoreRelativeError: tensor == "keys" && scoreErrors ? scoreError(layer, keys: data, decoded: decoded, shape: s) : nil,
                        relativeFrobenius: den == 0 ? 0 : (num / den).squareRoot(),
                        meanHeadRelativeFrobenius: perHead.reduce(0, +) / Double(max(perHead.count, 1)),
                        maxAbsolute: maxErr, maxMagnitude: maxMag,
                        bytesPerElement: format.bytesPerElement(headDim: d, pageCapacity: format.isPageWise ? v.pageCapacity : 1)))
                }
            }
        }
        return out
    }

    /// The mixed widths of `layer` at `bits` (nil when not a whole number of bytes per row): from the
    /// dump's queries (energy per channel over its query positions and each KV head's query group)
    /// and key ranges (RMS over its full pages of `pageCapacity` tokens after the first 4), or from
    /// `statistics`.
    static func widths(_ layer: KVDumpLayer, dump: KVDump, bits: Double, pageCapacity: Int, source: MixedWidthSource) -> ChannelWidths? {
        let s = dump.shape, d = s.headDim
        let bytes = bits * Double(d) / 8
        guard bytes == bytes.rounded(), bits >= 2, bits <= 8 else { return nil }
        let granularity = d % 8 == 0 ? 8 : 1
        if case .statistics(let k) = source {
            guard layer.index < k.queryEnergy.count, k.queryEnergy[layer.index].count == s.kvHeadCount else { return nil }
            return ChannelWidths.allocate(ranges: k.rangeRMS[layer.index], weights: k.queryEnergy[layer.index], rowByteCount: Int(bytes),
                                          granularity: granularity)
        }
        let group = s.headCount / s.kvHeadCount, queries = s.queryCount, skip = min(4, s.tokenCount - 1)
        var energy = [[Double]](repeating: [Double](repeating: 0, count: d), count: s.kvHeadCount), ranges = energy
        for qh in 0..<s.headCount {
            for q in 0..<queries { for c in 0..<d { let x = Double(layer.queries[(qh * queries + q) * d + c]); energy[qh / group][c] += x * x } }
        }
        for h in 0..<s.kvHeadCount {
            var pages = 0, start = skip
            while start + pageCapacity <= s.tokenCount || (pages == 0 && start < s.tokenCount) {
                let end = min(start + pageCapacity, s.tokenCount)
                for c in 0..<d {
                    var lo = Float.infinity, hi = -Float.infinity
                    for t in start..<end { let x = layer.keys[(h * s.tokenCount + t) * d + c]; lo = min(lo, x); hi = max(hi, x) }
                    ranges[h][c] += Double(hi - lo) * Double(hi - lo)
                }
                pages += 1
                start = end
            }
            ranges[h] = ranges[h].map { ($0 / Double(pages)).squareRoot() }
        }
        return ChannelWidths.allocate(ranges: ranges, weights: energy, rowByteCount: Int(bytes), granularity: granularity)
    }

    /// ‖S − Ŝ‖/‖S‖ for the logits of every dump query against every token of its KV head.
    static func scoreError(_ layer: KVDumpLayer, keys: [Float], decoded: [Float], shape s: KVDumpShape) -> Double? {
        let d = s.headDim, group = s.headCount / s.kvHeadCount, queries = s.queryCount
        guard queries > 0 else { return nil }
        var num = 0.0, den = 0.0
        for qh in 0..<s.headCount {
            let h = qh / group
            for q in 0..<queries {
                let qr = (qh * queries + q) * d
                for t in 0..<s.tokenCount {
                    let kr = (h * s.tokenCount + t) * d
                    var a: Float = 0, b: Float = 0
                    for c in 0..<d { a += layer.queries[qr + c] * keys[kr + c]; b += layer.queries[qr + c] * decoded[kr + c] }
                    num += Double(a - b) * Double(a - b)
                    den += Double(a) * Double(a)
                }
            }
        }
        return den == 0 ? 0 : (num / den).squareRoot()
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
                // Per-channel keys of one width are the one-segment case of mixed widths (same bytes, same decode).
                let heads = rows / tokensPerHead
                let widths: ChannelWidths? = switch format {
                case .mixedChannelwise(let m): m
                case .channelwise(let w): ChannelWidths(widths: Array(repeating: Array(repeating: w, count: d), count: heads))
                default: nil
                }
                if let m = widths {
                    var codes = [UInt8](repeating: 0, count: pageCapacity * m.rowByteCount)
                    var params = [UInt8](repeating: 0, count: 4 * d)
                    for head in 0..<heads {
                        let codec = MixedChannelwiseKeyCodec(m, kvHead: head)
                        var start = 0
                        while start < tokensPerHead {
                            let n = min(pageCapacity, tokensPerHead - start), base = (head * tokensPerHead + start) * d
                            try codes.withUnsafeMutableBytes { cp in
                                try params.withUnsafeMutableBytes { pp in
                                    try codec.encodePage(xp.baseAddress! + base, tokenCount: n, codes: cp.baseAddress!, params: pp.baseAddress!)
                                    codec.decodeRows(slot: 0, count: n, tokenCount: n, codes: cp.baseAddress!, params: pp.baseAddress!,
                                                     into: yp.baseAddress! + base)
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
    /// `pageCapacities`), Lloyd–Max codes at 4, 3 and 2 bits with and without rotation, rotated
    /// per-channel INT4 and INT3 keys, and mixed-width keys at 4, 3.5 and 3 bits; most bits first.
    public static func allVariants(pageCapacities: [Int] = [32, 64]) -> [Variant] {
        var v = [Variant]()
        for w in CodeWidth.allCases {
            v += [32, 64, 128].map { Variant(.grouped(w, groupSize: $0)) }
            v += pageCapacities.map { Variant(.channelwise(w), pageCapacity: $0) }
            if w == .int4 || w == .int3 { v += pageCapacities.map { Variant(.channelwise(w), rotated: true, pageCapacity: $0) } }
            if w != .int8 { v += [Variant(.lloydMax(w)), Variant(.lloydMax(w), rotated: true)] }
            if w == .int4 { v += pageCapacities.map { Variant.mixed(bits: 4, pageCapacity: $0) } }
            if w == .int3 { v += pageCapacities.flatMap { p in [3.5, 3].map { Variant.mixed(bits: $0, pageCapacity: p) } } }
        }
        return v
    }
}
