/// Encodes, decodes and computes with one token's head vector stored in a per-token format
/// (`.fp16`, `.grouped` or `.lloydMax`): the kernels the store's read path is made of.
///
/// Every kernel has a SIMD fast path (`encode`, `decode`, `dot`, `accumulate`) and a plain scalar
/// twin (`…Reference`) that tests hold it to:
/// - `encode` and its reference produce identical bytes;
/// - `decode` and `accumulate` produce identical `Float`s (the same operations element by element);
/// - `dot` differs from its reference only by summation order; both are within `dotErrorBound` of
///   the exact dot product of the query with the decoded row.
///
/// Rows are raw bytes laid out as `StorageFormat` draws them. The pointer-taking kernels are what a
/// store's page loops call; the array-taking conveniences are for callers that hold plain arrays.
///
/// Error bounds, per element of a decoded row:
/// - `.fp16`: round to nearest even, |x − x̂| ≤ 2⁻¹¹·|x| for |x| ≥ 2⁻¹⁴ (normal halves) and
///   ≤ 2⁻²⁵ below (subnormal spacing 2⁻²⁴); exact on FP16 inputs.
/// - `.grouped(b, g)`: |x − x̂| ≤ scale/2 + 2⁻²⁴·(4·scale·(2^b − 1) + |zero|) with the group's
///   stored scale and zero (see `AffineParameters`).
/// - `.lloydMax(b)`: |x − x̂| ≤ norm·(h_c + 2⁻²⁴·(1.0001·√d + |L_c|)) with the stored norm and the
///   element's code c (see `LloydMaxLevels.errorBound`).
public struct RowCodec: Sendable, Hashable {
    /// The row format.
    public let format: StorageFormat
    /// Elements per row.
    public let headDim: Int
    /// Bytes per row (exact): `format.rowByteCount(headDim:)`.
    public let rowByteCount: Int
    /// The code width of grouped rows, `nil` for FP16 and Lloyd–Max rows.
    @usableFromInline let width: CodeWidth?
    /// The code width of Lloyd–Max rows, `nil` otherwise.
    @usableFromInline let lloydMaxWidth: CodeWidth?
    /// Lloyd–Max rows: the levels (`LloydMaxLevels.table`), zeros otherwise.
    @usableFromInline let levelTable: SIMD16<Float>
    /// Lloyd–Max rows: the 2^b − 1 thresholds, then +∞ (`LloydMaxLevels.thresholds`).
    @usableFromInline let thresholdTable: SIMD16<Float>
    /// Elements per group (`headDim` for FP16).
    @usableFromInline let groupSize: Int
    /// Bytes of packed codes at the start of a row (0 for FP16).
    @usableFromInline let codeByteCount: Int

    /// A codec for rows of `headDim` elements.
    ///
    /// - Throws: `FormatError` for a non-positive `headDim`, a group size that is not a positive
    ///   multiple of 8, a page-wise format, or Lloyd–Max codes at 8 bits.
    public init(_ format: StorageFormat, headDim: Int) throws(FormatError) {
        try format.validate(headDim: headDim)
        self.format = format
        self.headDim = headDim
        self.rowByteCount = format.rowByteCount(headDim: headDim)
        var lm: CodeWidth?, levels = SIMD16<Float>(), thresholds = SIMD16<Float>()
        switch format {
        case .fp16:
            width = nil
            groupSize = headDim
            codeByteCount = 0
        case .grouped(let w, let g):
            width = w
            groupSize = g
            codeByteCount = w.packedByteCount(codes: headDim)
        case .lloydMax(let w):
            width = nil
            lm = w
            groupSize = headDim
            codeByteCount = w.packedByteCount(codes: headDim)
            levels = LloydMaxLevels.table(w)
            thresholds = SIMD16(repeating: .infinity)
            for (i, v) in LloydMaxLevels.thresholds(w).enumerated() { thresholds[i] = v }
        case .channelwise, .mixedChannelwise:
            throw .notRowWise(format)
        }
        lloydMaxWidth = lm
        levelTable = levels
        thresholdTable = thresholds
    }

    /// Number of groups per row (1 for FP16).
    @inlinable public var groupCount: Int { (headDim + groupSize - 1) / groupSize }

    /// The stored norm of a Lloyd–Max row (the FP16 value after the codes).
    @inlinable
    public func norm(of row: UnsafeRawPointer) -> Float {
        precondition(lloydMaxWidth != nil, "RowCodec.norm: only Lloyd–Max rows have a norm")
        return Float16Bits.halfToFloat(UInt16(littleEndian: row.loadUnaligned(fromByteOffset: codeByteCount, as: UInt16.self)))
    }

    /// The scale and zero of group `k` of a grouped row.
    @inlinable
    public func parameters(ofGroup k: Int, in row: UnsafeRawPointer) -> AffineParameters {
        precondition(width != nil, "RowCodec.parameters: an FP16 row has no affine parameters")
        let p = codeByteCount + 4 * k
        return AffineParameters(
            scaleBits: UInt16(littleEndian: row.loadUnaligned(fromByteOffset: p, as: UInt16.self)),
            zeroBits: UInt16(littleEndian: row.loadUnaligned(fromByteOffset: p + 2, as: UInt16.self)))
    }

    @inlinable @inline(__always)
    func storeParameters(_ a: AffineParameters, ofGroup k: Int, in row: UnsafeMutableRawPointer) {
        let p = codeByteCount + 4 * k
        row.storeBytes(of: a.scaleBits.littleEndian, toByteOffset: p, as: UInt16.self)
        row.storeBytes(of: a.zeroBits.littleEndian, toByteOffset: p + 2, as: UInt16.self)
    }

    /// The largest per-element reconstruction error of a stored row, from its stored parameters
    /// (for FP16, the bound for the largest magnitude `maxMagnitude` of the input).
    public func errorBound(of row: UnsafeRawPointer, maxMagnitude: Float = StorageFormat.maxMagnitude) -> Float {
        if let w = lloydMaxWidth {
            let n = norm(of: row)
            return (0..<headDim).reduce(0) { max($0, LloydMaxLevels.errorBound(code: code(at: $1, in: row), norm: n, headDim: headDim, width: w)) }
        }
        guard let w = width else { return max(0x1p-11 * maxMagnitude, 0x1p-25) }
        var b: Float = 0
        for k in 0..<groupCount { b = max(b, parameters(ofGroup: k, in: row).errorBound(width: w)) }
        return b
    }

    // MARK: Fast kernels

    /// Encodes `x[0..<headDim]` into `row[0..<rowByteCount]`.
    ///
    /// Validates the whole input first, so on error nothing has been written.
    ///
    /// - Throws: `QuantizationError` naming the first non-finite or out-of-range element (index in
    ///   `0..<headDim`).
    /// - Complexity: O(headDim).
    @inlinable
    public func encode(_ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer) throws(QuantizationError) {
        if let e = ValueCheck.firstInvalid(x, count: headDim) { throw e }
        if let w = lloydMaxWidth { return encodeLloydMax(w, x, into: row) }
        guard let w = width else { return encodeFP16(x, into: row) }
        encodeGrouped(w, x, into: row)
    }

    /// Decodes `row` into `out[0..<headDim]`.
    @inlinable
    public func decode(_ row: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        if let w = lloydMaxWidth { return decodeLloydMax(w, row, into: out) }
        guard let w = width else { return decodeFP16(row, into: out) }
        decodeGrouped(w, row, into: out)
    }

    /// The dot product of `q[0..<headDim]` with the decoded row, computed without decoding it (in
    /// code space for grouped rows: Σ_groups scale·Σq·c + zero·Σq; Lloyd–Max rows: norm·Σ qᵢ·L[cᵢ]).
    ///
    /// Error: |dot − Σ qᵢ·x̂ᵢ| ≤ `dotErrorBound(q, row)`.
    @inlinable
    public func dot(_ q: UnsafePointer<Float>, _ row: UnsafeRawPointer) -> Float {
        if let w = lloydMaxWidth { return dotLloydMax(w, q, row) }
        guard let w = width else { return dotFP16(q, row) }
        return dotGrouped(w, q, row)
    }

    /// Adds `weight · x̂` to `out[0..<headDim]`, where x̂ is the decoded row, without materialising
    /// x̂. Each element is `out[i] + weight · x̂[i]` rounded as written (two roundings).
    @inlinable
    public func accumulate(_ weight: Float, _ row: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        if let w = lloydMaxWidth { return accumulateLloydMax(w, weight, row, into: out) }
        guard let w = width else { return accumulateFP16(weight, row, into: out) }
        accumulateGrouped(w, weight, row, into: out)
    }

    /// The bound on |dot(q, row) − Σ qᵢ·x̂ᵢ| (and on the reference's error):
    ///
    ///     γ_{headDim+4} · Σ_groups Σ_{i ∈ group} |qᵢ|·(scale·cᵢ + |zero|)     (grouped)
    ///     γ_{headDim+4} · Σᵢ |qᵢ·x̂ᵢ|                                        (FP16)
    ///     γ_{headDim+4} · norm · Σᵢ |qᵢ·L[cᵢ]|                                (Lloyd–Max)
    ///
    /// with γₙ = n·u/(1 − n·u), u = 2⁻²⁴: every term passes through at most one product rounding,
    /// `headDim` additions (lane sums, reduction, tail, group total) and three roundings combining
    /// scale·S₁ + zero·S₂.
    public func dotErrorBound(_ q: UnsafePointer<Float>, _ row: UnsafeRawPointer) -> Double {
        let n = Double(headDim + 4), u = 0x1p-24
        let gamma = n * u / (1 - n * u)
        var magnitude = 0.0
        if lloydMaxWidth != nil {
            let n = Double(norm(of: row))
            for i in 0..<headDim { magnitude += n * abs(Double(q[i]) * Double(levelTable[code(at: i, in: row)])) }
        } else if let w = width {
            for k in 0..<groupCount {
                let a = parameters(ofGroup: k, in: row)
                let s = Double(a.scale), z = abs(Double(a.zero))
                for i in (k * groupSize)..<min((k + 1) * groupSize, headDim) {
                    magnitude += abs(Double(q[i])) * (s * Double(CodePacking.load(w, row, element: i)) + z)
                }
            }
        } else {
            for i in 0..<headDim {
                magnitude += abs(Double(q[i]) * Double(Float16Bits.halfToFloat(
                    UInt16(littleEndian: row.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))))
            }
        }
        return gamma * magnitude
    }
}

// MARK: Array conveniences

extension RowCodec {
    /// Encodes a row given as an array of `headDim` values.
    ///
    /// - Throws: `QuantizationError` for a non-finite or out-of-range element.
    public func encode(_ x: [Float]) throws(QuantizationError) -> [UInt8] {
        precondition(x.count == headDim, "RowCodec.encode: expected \(headDim) values, got \(x.count)")
        var row = [UInt8](repeating: 0, count: rowByteCount)
        let result: Result<Void, QuantizationError> = x.withUnsafeBufferPointer { xp in
            row.withUnsafeMutableBytes { rp in
                Result { () throws(QuantizationError) in try encode(xp.baseAddress!, into: rp.baseAddress!) }
            }
        }
        try result.get()
        return row
    }

    /// Decodes a row given as `rowByteCount` bytes.
    public func decode(_ row: [UInt8]) -> [Float] {
        precondition(row.count == rowByteCount, "RowCodec.decode: expected \(rowByteCount) bytes, got \(row.count)")
        return [Float](unsafeUninitializedCapacity: headDim) { out, n in
            row.withUnsafeBytes { decode($0.baseAddress!, into: out.baseAddress!) }
            n = headDim
        }
    }

    /// The dot product of `q` (`headDim` values) with a stored row.
    public func dot(_ q: [Float], _ row: [UInt8]) -> Float {
        precondition(q.count == headDim && row.count == rowByteCount, "RowCodec.dot: shape mismatch")
        return q.withUnsafeBufferPointer { qp in row.withUnsafeBytes { dot(qp.baseAddress!, $0.baseAddress!) } }
    }
}
