// SIMD kernels for Lloyd–Max rows: packed b-bit level indices, then the row's FP16 norm. Element i
// decodes to norm · L[code i] (one rounding); codes are looked up in the codec's 16-lane level table.

extension RowCodec {
    /// The FP64 sum of squares of `x[0..<headDim]`, left to right (exact products; shared by `encode`
    /// and its reference so both store the same norm).
    @inlinable
    func sumOfSquares(_ x: UnsafePointer<Float>) -> Double {
        var s = 0.0
        for i in 0..<headDim { s += Double(x[i]) * Double(x[i]) }
        return s
    }

    /// The code of a normalised value z: the number of thresholds strictly below it.
    @inlinable @inline(__always)
    func levelCode(_ z: Float, _ w: CodeWidth) -> UInt32 {
        var c: UInt32 = 0
        for k in 0..<((1 << w.bits) - 1) where z > thresholdTable[k] { c += 1 }
        return c
    }

    /// The levels of eight codes.
    @inlinable @inline(__always)
    func levels8(_ c: SIMD8<UInt32>) -> SIMD8<Float> {
        let t = levelTable
        return SIMD8(t[Int(c[0])], t[Int(c[1])], t[Int(c[2])], t[Int(c[3])], t[Int(c[4])], t[Int(c[5])], t[Int(c[6])], t[Int(c[7])])
    }

    @inlinable
    func storeNorm(_ bits: UInt16, in row: UnsafeMutableRawPointer) {
        row.storeBytes(of: bits.littleEndian, toByteOffset: codeByteCount, as: UInt16.self)
    }

    @inlinable
    func encodeLloydMax(_ w: CodeWidth, _ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer) {
        let bits = LloydMaxLevels.normBits(sumOfSquares: sumOfSquares(x), headDim: headDim)
        storeNorm(bits, in: row)
        let fullChunks = headDim / 8 * 8
        for b in w.packedByteCount(codes: fullChunks)..<codeByteCount { row.storeBytes(of: 0, toByteOffset: b, as: UInt8.self) }
        let n = Float16Bits.halfToFloat(bits)
        guard n > 0 else {
            // A vector of zeros: the smallest positive level, so every element decodes to +0.
            let c = UInt32(1 << (w.bits - 1))
            var i = 0
            while i + 8 <= headDim { CodePacking.store8(w, SIMD8(repeating: c), row, element: i); i += 8 }
            while i < headDim { CodePacking.store(w, c, row, element: i); i += 1 }
            return
        }
        let top = (1 << w.bits) - 1
        if fullChunks > 0 {
            // The level search of eight values at a time (`EncodeKernels.lloydMaxCodes`: AVX2 where it
            // runs; measured, the Swift loop compiled to scalar compares, 15% of a decode re-plan).
            withUnsafeTemporaryAllocation(of: UInt32.self, capacity: fullChunks) { codes in
                let c = codes.baseAddress!
                EncodeKernels.lloydMaxCodes(x, count8: fullChunks, norm: n, thresholds: thresholdTable, thresholdCount: top, into: c)
                let raw = UnsafeRawPointer(c)
                var i = 0
                while i < fullChunks {
                    CodePacking.store8(w, raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<UInt32>.self), row, element: i)
                    i += 8
                }
            }
        }
        var i = fullChunks
        while i < headDim { CodePacking.store(w, levelCode(x[i] / n, w), row, element: i); i += 1 }
    }

    @inlinable
    func decodeLloydMax(_ w: CodeWidth, _ row: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        let n = norm(of: row), n8 = SIMD8<Float>(repeating: n), o = UnsafeMutableRawPointer(out)
        var i = 0
        while i + 8 <= headDim {
            o.storeBytes(of: n8 * levels8(CodePacking.load8(w, row, element: i)), toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        while i < headDim { out[i] = n * levelTable[Int(CodePacking.load(w, row, element: i))]; i += 1 }
    }

    @inlinable
    func dotLloydMax(_ w: CodeWidth, _ q: UnsafePointer<Float>, _ row: UnsafeRawPointer) -> Float {
        let qr = UnsafeRawPointer(q)
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= headDim {
            acc += qr.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * levels8(CodePacking.load8(w, row, element: i))
            i += 8
        }
        var s = acc.sum()
        while i < headDim { s += q[i] * levelTable[Int(CodePacking.load(w, row, element: i))]; i += 1 }
        return norm(of: row) * s
    }

    @inlinable
    func accumulateLloydMax(_ w: CodeWidth, _ weight: Float, _ row: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        let n = norm(of: row), n8 = SIMD8<Float>(repeating: n), o = UnsafeMutableRawPointer(out)
        var i = 0
        while i + 8 <= headDim {
            let acc = o.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            let x = n8 * levels8(CodePacking.load8(w, row, element: i))
            o.storeBytes(of: acc + weight * x, toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        while i < headDim { out[i] = out[i] + weight * (n * levelTable[Int(CodePacking.load(w, row, element: i))]); i += 1 }
    }
}
