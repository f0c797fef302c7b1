// SIMD kernels for affine grouped rows: packed codes, then (scale, zero) per group.
// Groups start at multiples of `groupSize` (a multiple of 8), so every 8-element chunk of a group
// starts on a byte boundary; a group's last chunk may be shorter (ragged last group) and is handled
// element by element.

extension RowCodec {
    @inlinable
    func encodeGrouped(_ w: CodeWidth, _ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer) {
        let raw = UnsafeRawPointer(x)
        // Codes as float bit patterns: t = min(max(q, 0) + 2^23, 2^23 + M) holds the integer
        // round-half-even(min(max(q, 0), M)) in its low bits (2^23 ≤ t < 2^24): no float-to-int
        // conversion, which has no SIMD form on baseline x86-64.
        let top = SIMD8<Float>(repeating: 0x1p23 + Float(w.maxCode))
        // Partial trailing code bytes are filled bit by bit: clear them first.
        let fullChunks = headDim / 8 * 8
        for b in w.packedByteCount(codes: fullChunks)..<codeByteCount {
            row.storeBytes(of: 0, toByteOffset: b, as: UInt8.self)
        }
        for k in 0..<groupCount {
            let start = k * groupSize, end = min(start + groupSize, headDim)
            // Group minimum and maximum.
            var lo8 = SIMD8<Float>(repeating: x[start]), hi8 = lo8
            var i = start
            while i + 8 <= end {
                let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                lo8 = lo8.lanewiseMin(v)
                hi8 = hi8.lanewiseMax(v)
                i += 8
            }
            var lo = lo8.min(), hi = hi8.max()
            while i < end { lo = Swift.min(lo, x[i]); hi = Swift.max(hi, x[i]); i += 1 }

            let a = AffineParameters(lo: lo, hi: hi, width: w)
            storeParameters(a, ofGroup: k, in: row)
            let s = a.scale, z = a.zero
            i = start
            if s == 0 {
                while i + 8 <= end { CodePacking.store8(w, .zero, row, element: i); i += 8 }
                while i < end { CodePacking.store(w, 0, row, element: i); i += 1 }
                continue
            }
            let s8 = SIMD8<Float>(repeating: s), z8 = SIMD8<Float>(repeating: z)
            while i + 8 <= end {
                let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                // Clamped below at 0, the quotient is in [0, M + 1/2] ⊂ [0, 2^22], where adding and
                // removing 2^23 rounds to nearest even (what `.rounded(.toNearestOrEven)` does, without
                // a libm call per element on targets without SSE4.1).
                let t = (((v - z8) / s8).lanewiseMax(.zero) + 0x1p23).lanewiseMin(top)
                CodePacking.store8(w, unsafeBitCast(t, to: SIMD8<UInt32>.self) &- 0x4B00_0000, row, element: i)
                i += 8
            }
            while i < end {
                let c = Swift.min((Swift.max((x[i] - z) / s, 0) + 0x1p23) - 0x1p23, Float(w.maxCode))
                CodePacking.store(w, UInt32(c), row, element: i)
                i += 1
            }
        }
    }

    /// Walks a grouped row's decoded values zero + scale·code in element order: eight at a time
    /// (`chunk(firstElement, values)`) while a group has eight left, then one at a time
    /// (`element(index, value)`). The one decoding loop `decode` and `accumulate` share.
    @inlinable @inline(__always)
    func forEachDecoded(_ w: CodeWidth, _ row: UnsafeRawPointer,
                        chunk: (Int, SIMD8<Float>) -> Void, element: (Int, Float) -> Void) {
        for k in 0..<groupCount {
            let start = k * groupSize, end = min(start + groupSize, headDim)
            let a = parameters(ofGroup: k, in: row)
            let s = a.scale, z = a.zero
            let s8 = SIMD8<Float>(repeating: s), z8 = SIMD8<Float>(repeating: z)
            var i = start
            while i + 8 <= end {
                chunk(i, z8 + s8 * CodePacking.load8f(w, row, element: i))
                i += 8
            }
            while i < end {
                element(i, z + s * Float(CodePacking.load(w, row, element: i)))
                i += 1
            }
        }
    }

    @inlinable
    func decodeGrouped(_ w: CodeWidth, _ row: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        let o = UnsafeMutableRawPointer(out)
        forEachDecoded(w, row,
                       chunk: { i, x in o.storeBytes(of: x, toByteOffset: 4 * i, as: SIMD8<Float>.self) },
                       element: { i, x in out[i] = x })
    }

    @inlinable
    func dotGrouped(_ w: CodeWidth, _ q: UnsafePointer<Float>, _ row: UnsafeRawPointer) -> Float {
        let qr = UnsafeRawPointer(q)
        var total: Float = 0
        for k in 0..<groupCount {
            let start = k * groupSize, end = min(start + groupSize, headDim)
            var qc = SIMD8<Float>(), qs = SIMD8<Float>()
            var i = start
            while i + 8 <= end {
                let qv = qr.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                qc += qv * CodePacking.load8f(w, row, element: i)
                qs += qv
                i += 8
            }
            var sqc = qc.sum(), sq = qs.sum()
            while i < end {
                sqc += q[i] * Float(CodePacking.load(w, row, element: i))
                sq += q[i]
                i += 1
            }
            let a = parameters(ofGroup: k, in: row)
            total += a.scale * sqc + a.zero * sq
        }
        return total
    }

    @inlinable
    func accumulateGrouped(_ w: CodeWidth, _ weight: Float, _ row: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        let o = UnsafeMutableRawPointer(out)
        forEachDecoded(w, row,
                       chunk: { i, x in
                           let acc = o.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                           o.storeBytes(of: acc + weight * x, toByteOffset: 4 * i, as: SIMD8<Float>.self)
                       },
                       element: { i, x in out[i] = out[i] + weight * x })
    }
}
