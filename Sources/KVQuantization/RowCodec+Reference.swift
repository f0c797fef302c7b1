// The scalar reference twins of the row kernels: one element at a time, Swift's own `Float16`
// conversions, no SIMD. They define what the fast kernels must compute.

extension RowCodec {
    /// Scalar reference of `encode`: identical bytes.
    public func encodeReference(_ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer) throws(QuantizationError) {
        if let e = ValueCheck.firstInvalidReference(x, count: headDim) { throw e }
        if let w = lloydMaxWidth {
            let bits = LloydMaxLevels.normBits(sumOfSquares: sumOfSquares(x), headDim: headDim)
            row.storeBytes(of: bits.littleEndian, toByteOffset: codeByteCount, as: UInt16.self)
            for b in 0..<codeByteCount { row.storeBytes(of: 0, toByteOffset: b, as: UInt8.self) }
            let n = Float(Float16(bitPattern: bits)), thresholds = LloydMaxLevels.thresholds(w)
            for i in 0..<headDim {
                // Zeros: the smallest positive level (decodes to +0).
                let c = n == 0 ? thresholds.count / 2 + 1 : thresholds.filter { x[i] / n > $0 }.count
                CodePacking.store(w, UInt32(c), row, element: i)
            }
            return
        }
        guard let w = width else {
            for i in 0..<headDim {
                row.storeBytes(of: Float16(x[i]).bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            }
            return
        }
        for b in 0..<codeByteCount { row.storeBytes(of: 0, toByteOffset: b, as: UInt8.self) }
        for k in 0..<groupCount {
            let range = (k * groupSize)..<min((k + 1) * groupSize, headDim)
            var lo = x[range.lowerBound], hi = lo
            for i in range { lo = min(lo, x[i]); hi = max(hi, x[i]) }
            let a = AffineParameters(lo: lo, hi: hi, width: w)
            storeParameters(a, ofGroup: k, in: row)
            let s = Float(Float16(bitPattern: a.scaleBits)), z = Float(Float16(bitPattern: a.zeroBits))
            for i in range {
                var c: Float = 0
                if s != 0 { c = min(max(((x[i] - z) / s).rounded(.toNearestOrEven), 0), Float(w.maxCode)) }
                CodePacking.store(w, UInt32(c), row, element: i)
            }
        }
    }

    /// Scalar reference of `decode`: identical values.
    public func decodeReference(_ row: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        for i in 0..<headDim { out[i] = referenceElement(row, i) }
    }

    /// Scalar reference of `dot`: Σ over groups of scale·Σq·c + zero·Σq, summed left to right
    /// (FP16: Σ qᵢ·xᵢ left to right; Lloyd–Max: norm · Σ qᵢ·L[cᵢ], the sum left to right).
    public func dotReference(_ q: UnsafePointer<Float>, _ row: UnsafeRawPointer) -> Float {
        if let w = lloydMaxWidth {
            let levels = LloydMaxLevels.levels(w)
            var s: Float = 0
            for i in 0..<headDim { s += q[i] * levels[Int(CodePacking.load(w, row, element: i))] }
            return referenceNorm(row) * s
        }
        guard let w = width else {
            var s: Float = 0
            for i in 0..<headDim { s += q[i] * referenceElement(row, i) }
            return s
        }
        var total: Float = 0
        for k in 0..<groupCount {
            var sqc: Float = 0, sq: Float = 0
            for i in (k * groupSize)..<min((k + 1) * groupSize, headDim) {
                sqc += q[i] * Float(CodePacking.load(w, row, element: i))
                sq += q[i]
            }
            let a = parameters(ofGroup: k, in: row)
            total += Float(Float16(bitPattern: a.scaleBits)) * sqc + Float(Float16(bitPattern: a.zeroBits)) * sq
        }
        return total
    }

    /// Scalar reference of `accumulate`: identical values.
    public func accumulateReference(_ weight: Float, _ row: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        for i in 0..<headDim { out[i] = out[i] + weight * referenceElement(row, i) }
    }

    /// Element `i` of a stored row, decoded the plain way.
    func referenceElement(_ row: UnsafeRawPointer, _ i: Int) -> Float {
        if let w = lloydMaxWidth { return referenceNorm(row) * LloydMaxLevels.levels(w)[Int(CodePacking.load(w, row, element: i))] }
        guard let w = width else {
            return Float(Float16(bitPattern: UInt16(littleEndian: row.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
        }
        let a = parameters(ofGroup: i / groupSize, in: row)
        let s = Float(Float16(bitPattern: a.scaleBits)), z = Float(Float16(bitPattern: a.zeroBits))
        return z + s * Float(CodePacking.load(w, row, element: i))
    }

    /// The norm of a Lloyd–Max row, read the plain way.
    func referenceNorm(_ row: UnsafeRawPointer) -> Float {
        Float(Float16(bitPattern: UInt16(littleEndian: row.loadUnaligned(fromByteOffset: codeByteCount, as: UInt16.self))))
    }

    /// The code of element `i` of a grouped or Lloyd–Max row (for tests, diagnostics and bounds).
    public func code(at i: Int, in row: UnsafeRawPointer) -> Int {
        guard let w = width ?? lloydMaxWidth else { preconditionFailure("RowCodec.code: an FP16 row has no codes") }
        precondition(0 <= i && i < headDim, "RowCodec.code: element \(i) outside 0..<\(headDim)")
        return Int(CodePacking.load(w, row, element: i))
    }
}
