/// The number of bits of one quantised code.
public enum CodeWidth: Int, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case int8 = 8
    case int4 = 4
    /// 3-bit codes, packed as a bit stream: eight codes in three bytes (see `CodePacking`).
    case int3 = 3
    case int2 = 2

    /// Bits per code.
    @inlinable public var bits: Int { rawValue }
    /// Largest code, `2^bits − 1`: the number of steps between a group's minimum and maximum.
    @inlinable public var maxCode: Int { (1 << rawValue) - 1 }

    /// Bytes taken by `count` packed codes, ⌈count·bits/8⌉ (the last byte may be partly used).
    /// Eight codes always take exactly `bits` bytes, so a run of codes starting at an element index
    /// that is a multiple of 8 starts on a byte boundary.
    @inlinable public func packedByteCount(codes count: Int) -> Int {
        (count * rawValue + 7) / 8
    }

    public var description: String { "int\(rawValue)" }
}

/// How one tier stores a token's key or value head vector.
///
/// Byte layouts (headDim `d`, group size `g`, `G = ⌈d/g⌉` groups, code width `b`, page capacity `P`):
///
///     .fp16                  one row:  | d × Float16 (little-endian) |                   2d bytes
///
///     .grouped(b, g)         one row:  | codes: ⌈d·b/8⌉ bytes | G × (scale, zero) Float16 |
///                                       element i sits in byte i / (8/b) at bit (i mod (8/b))·b;
///                                       group k covers elements k·g ..< min((k+1)·g, d)
///
///     .channelwise(b)        one page: | P rows of codes, ⌈d·b/8⌉ bytes each | d × (scale, zero) Float16 |
///     (keys only, KIVI)                 channel c of every token shares scale[c] and zero[c]
///
///     .lloydMax(b)           one row:  | codes: ⌈d·b/8⌉ bytes | norm Float16 |              ⌈d·b/8⌉ + 2 bytes
///     (b = 2, 3, 4)                     element i is norm · L_b[code i] (`LloydMaxLevels`)
///
///     .mixedChannelwise(m)   one page of n tokens: | segment 1: n rows | segment 2: n rows | … | zeros |
///     (keys only, per head)  | d × (scale, zero) Float16, in segment order |    n · m.rowByteCount bytes
///                                       of codes; a segment holds the channels of one width, widest
///                                       first (`ChannelWidths`, `MixedChannelwiseKeyCodec`)
///
/// Codes are packed as a little-end-first bit stream (`CodePacking`): eight codes take exactly b
/// bytes, so groups (multiples of 8 elements) start on byte boundaries at every width, 3 bits
/// included.
///
/// Every format stores, besides its rows, nothing per token; the store adds a 2-byte position offset
/// per token slot and a 4-byte base per page (`PagePositions`, `KVStore`).
public enum StorageFormat: Sendable, Hashable, CustomStringConvertible {
    /// IEEE half precision, round to nearest even; exact for FP16 inputs.
    case fp16
    /// Affine quantisation per group of `groupSize` consecutive elements of one token's head vector,
    /// with an FP16 scale and zero per group.
    case grouped(CodeWidth, groupSize: Int)
    /// Affine quantisation per channel across the tokens of one page (keys only, KIVI style), with an
    /// FP16 scale and zero per channel per page.
    case channelwise(CodeWidth)
    /// Non-uniform codes for rotated data: per token one FP16 norm (the vector's RMS ‖x‖/√d, rounded
    /// up) and b-bit indices into the Lloyd–Max levels of a unit Gaussian (`LloydMaxLevels`), for
    /// b = 2, 3 and 4 bits. Meant for tiers whose vectors the store rotates (`RotationSettings`),
    /// whose coordinates are near-Gaussian; it works on any data (with larger errors where the
    /// coordinates are not).
    case lloydMax(CodeWidth)
    /// Per-channel keys (as `.channelwise`) with a width per channel and KV head (`ChannelWidths`):
    /// channels that matter more to the scores get more bits, at a fixed number of code bytes per
    /// token. Keys only; the widths are calibrated on a model (`ChannelWidths.allocate`).
    case mixedChannelwise(ChannelWidths)

    /// The default INT8 format: groups of 64 (chosen from the measured error table in the README).
    public static let int8 = StorageFormat.grouped(.int8, groupSize: 64)
    /// The default INT4 format: groups of 32.
    public static let int4 = StorageFormat.grouped(.int4, groupSize: 32)
    /// The default INT2 format: groups of 32.
    public static let int2 = StorageFormat.grouped(.int2, groupSize: 32)

    /// The code width, or `nil` for FP16.
    public var codeWidth: CodeWidth? {
        switch self {
        case .fp16: nil
        case .grouped(let w, _), .channelwise(let w), .lloydMax(let w): w
        case .mixedChannelwise(let m): m.widths.joined().max { $0.bits < $1.bits }
        }
    }

    /// Bits per stored element before parameters (16 for FP16; the average for mixed widths, rounded up).
    public var bitsPerCode: Int {
        if case .mixedChannelwise(let m) = self { return Int(m.averageBits.rounded(.up)) }
        return codeWidth?.bits ?? 16
    }

    /// True for formats whose parameters are shared by the tokens of a page.
    public var isPageWise: Bool {
        switch self {
        case .channelwise, .mixedChannelwise: true
        default: false
        }
    }

    /// Checks that the format is usable for head vectors of `headDim` elements.
    ///
    /// Group sizes must be positive multiples of 8 (so every group starts on a byte boundary for
    /// every code width); 32, 64 and 128 are the measured ones. Lloyd–Max codes exist at 2, 3 and 4
    /// bits. A group size larger than `headDim`
    /// makes the whole row one group; a `headDim` that is not a multiple of the group size ends in
    /// one shorter group.
    public func validate(headDim: Int) throws(FormatError) {
        guard headDim > 0 else { throw .invalidHeadDim(headDim) }
        if case .grouped(_, let g) = self, g <= 0 || g % 8 != 0 {
            throw .invalidGroupSize(g)
        }
        if case .lloydMax(let w) = self, w == .int8 { throw .unsupportedWidth(self) }
        if case .mixedChannelwise(let m) = self, m.headDim != headDim { throw .widthsDoNotMatch(self, headDim: headDim) }
    }

    /// Bytes of one token's row, excluding page-wise parameters (exact).
    ///
    /// - Complexity: O(1).
    public func rowByteCount(headDim d: Int) -> Int {
        switch self {
        case .fp16:
            return 2 * d
        case .grouped(let w, let g):
            let groups = (d + g - 1) / g
            return w.packedByteCount(codes: d) + 4 * groups
        case .channelwise(let w):
            return w.packedByteCount(codes: d)
        case .lloydMax(let w):
            return w.packedByteCount(codes: d) + 2
        case .mixedChannelwise(let m):
            return m.rowByteCount
        }
    }

    /// Bytes of parameters shared by a whole page (exact): `4·d` for (mixed) channelwise keys, else 0.
    public func pageParameterByteCount(headDim d: Int) -> Int {
        isPageWise ? 4 * d : 0
    }

    /// Bytes of one page of `pageCapacity` rows of this format, excluding positions (exact).
    public func pageByteCount(headDim d: Int, pageCapacity p: Int) -> Int {
        p * rowByteCount(headDim: d) + pageParameterByteCount(headDim: d)
    }

    /// Average bytes per element of a full page: e.g. 0.625 for `.grouped(.int4, groupSize: 32)`
    /// at `d = 128` (64 code bytes + 4 × 4 parameter bytes per 128 elements).
    public func bytesPerElement(headDim d: Int, pageCapacity p: Int = 1) -> Double {
        Double(pageByteCount(headDim: d, pageCapacity: p)) / Double(d * p)
    }

    /// Largest representable magnitude that any format accepts (the FP16 maximum).
    public static let maxMagnitude: Float = 65504

    public var description: String {
        switch self {
        case .fp16: "fp16"
        case .grouped(let w, let g): "\(w)/g\(g)"
        case .channelwise(let w): "\(w)/channel"
        case .lloydMax(let w): "lm\(w.bits)"
        case .mixedChannelwise(let m): m.description
        }
    }

    /// The format a `description` names: `fp16`, `int8/g64`, `int4/channel`, `int3/g32`, `lm3`, …
    /// (`nil` for anything else, `mix…/channel` included: its widths are not in its name; the result
    /// still needs `validate(headDim:)`).
    public init?(name: String) {
        if name == "fp16" { self = .fp16; return }
        if name.hasPrefix("lm"), let b = Int(name.dropFirst(2)), let w = CodeWidth(rawValue: b) { self = .lloydMax(w); return }
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].hasPrefix("int"), let b = Int(parts[0].dropFirst(3)), let w = CodeWidth(rawValue: b) else { return nil }
        if parts[1] == "channel" { self = .channelwise(w); return }
        guard parts[1].hasPrefix("g"), let g = Int(parts[1].dropFirst()) else { return nil }
        self = .grouped(w, groupSize: g)
    }
}

/// A format that cannot be used with the given shape.
public enum FormatError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidHeadDim(Int)
    case invalidGroupSize(Int)
    /// A page-wise format (`.channelwise`) where a per-token row format is required.
    case notRowWise(StorageFormat)
    /// A code width the format does not exist at (Lloyd–Max codes at 8 bits).
    case unsupportedWidth(StorageFormat)
    /// Mixed channel widths given for another head dim.
    case widthsDoNotMatch(StorageFormat, headDim: Int)

    public var description: String {
        switch self {
        case .invalidHeadDim(let d): "headDim must be positive (got \(d))"
        case .invalidGroupSize(let g): "groupSize must be a positive multiple of 8 (got \(g))"
        case .notRowWise(let f): "\(f) quantises across the tokens of a page; a per-token format is required here"
        case .unsupportedWidth(let f): "\(f): Lloyd–Max codes exist at 2, 3 and 4 bits"
        case .widthsDoNotMatch(let f, let d):
            if case .mixedChannelwise(let m) = f { "\(f) has widths for head dim \(m.headDim), not \(d)" } else { "\(f) does not fit head dim \(d)" }
        }
    }
}

/// A value that cannot be stored: non-finite, or finite but outside ±65504 (the FP16 range, which
/// every format's FP16 parameters share).
public enum QuantizationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `value` at flat index `index` of the input is NaN or infinite.
    case nonFinite(index: Int, value: Float)
    /// `value` at flat index `index` of the input is finite but its magnitude exceeds 65504.
    case outOfRange(index: Int, value: Float)

    /// The flat index of the offending element in the input that was passed.
    public var index: Int {
        switch self { case .nonFinite(let i, _), .outOfRange(let i, _): i }
    }

    public var description: String {
        switch self {
        case .nonFinite(let i, let v): "element \(i) is \(v); only finite values can be stored"
        case .outOfRange(let i, let v): "element \(i) is \(v), outside the FP16 range ±65504"
        }
    }
}
