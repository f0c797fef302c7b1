/// The number of bits of one quantised code.
public enum CodeWidth: Int, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case int8 = 8
    case int4 = 4
    case int2 = 2

    /// Bits per code.
    @inlinable public var bits: Int { rawValue }
    /// Largest code, `2^bits − 1`: the number of steps between a group's minimum and maximum.
    @inlinable public var maxCode: Int { (1 << rawValue) - 1 }
    /// Codes packed into one byte (1, 2 or 4).
    @inlinable public var codesPerByte: Int { 8 / rawValue }

    /// Bytes taken by `count` packed codes (the last byte may be partly used).
    @inlinable public func packedByteCount(codes count: Int) -> Int {
        (count + codesPerByte - 1) / codesPerByte
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
        case .grouped(let w, _), .channelwise(let w): w
        }
    }

    /// Bits per stored element before parameters (16 for FP16).
    public var bitsPerCode: Int { codeWidth?.bits ?? 16 }

    /// True for formats whose parameters are shared by the tokens of a page.
    public var isPageWise: Bool { if case .channelwise = self { true } else { false } }

    /// Checks that the format is usable for head vectors of `headDim` elements.
    ///
    /// Group sizes must be positive multiples of 8 (so every group starts on a byte boundary for
    /// every code width); 32, 64 and 128 are the measured ones. A group size larger than `headDim`
    /// makes the whole row one group; a `headDim` that is not a multiple of the group size ends in
    /// one shorter group.
    public func validate(headDim: Int) throws(FormatError) {
        guard headDim > 0 else { throw .invalidHeadDim(headDim) }
        if case .grouped(_, let g) = self, g <= 0 || g % 8 != 0 {
            throw .invalidGroupSize(g)
        }
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
        }
    }

    /// Bytes of parameters shared by a whole page (exact): `4·d` for channelwise keys, else 0.
    public func pageParameterByteCount(headDim d: Int) -> Int {
        if case .channelwise = self { return 4 * d }
        return 0
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
        }
    }
}

/// A format that cannot be used with the given shape.
public enum FormatError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidHeadDim(Int)
    case invalidGroupSize(Int)
    /// A page-wise format (`.channelwise`) where a per-token row format is required.
    case notRowWise(StorageFormat)

    public var description: String {
        switch self {
        case .invalidHeadDim(let d): "headDim must be positive (got \(d))"
        case .invalidGroupSize(let g): "groupSize must be a positive multiple of 8 (got \(g))"
        case .notRowWise(let f): "\(f) quantises across the tokens of a page; a per-token format is required here"
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
