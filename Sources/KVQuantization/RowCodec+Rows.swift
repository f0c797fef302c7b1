// Whole runs of rows at once, for the store's rebuilds: rows lie back to back (`rowByteCount`
// apart), values are known storable (validated when they entered the store, clamped since).

extension RowCodec {
    /// Decodes `count` consecutive rows at `rows` into `out` (`count · headDim` floats), exactly as
    /// `decode` does each.
    package func decodeRows(_ rows: UnsafeRawPointer, count: Int, into out: UnsafeMutablePointer<Float>) {
        if format == .fp16 { return EncodeKernels.halfToFloat(rows, out, count: count * headDim) }
        for r in 0..<count { decode(rows + r * rowByteCount, into: out + r * headDim) }
    }

    /// Encodes `count` rows of `x` (`headDim` each) into consecutive rows at `rows`, exactly as
    /// `encode` does each (`EncodeKernels`), without checking the values.
    ///
    /// - Precondition: every value is finite with magnitude ≤ 65504 (not checked).
    package func encodeRowsUnchecked(_ x: UnsafePointer<Float>, count: Int, into rows: UnsafeMutableRawPointer) {
        guard count > 0 else { return }
        if format == .fp16 { return EncodeKernels.floatToHalf(x, rows, count: count * headDim) }
        if let w = lloydMaxWidth {
            for r in 0..<count { encodeLloydMax(w, x + r * headDim, into: rows + r * rowByteCount) }
            return
        }
        EncodeKernels.encodeGrouped(self, x, count: count, into: rows)
    }
}

extension ChannelwiseKeyCodec {
    /// Decodes `count` consecutive code rows of one page (parameters `params`) into `out`
    /// (`count · headDim` floats), exactly as `decode` does each: the parameters converted once,
    /// then zero + scale·code eight channels at a time.
    package func decodeRows(_ codes: UnsafeRawPointer, count: Int, params: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        let d = headDim, full = d / 8 * 8
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * d) { buffer in
            let zero = buffer.baseAddress!, scale = zero + d
            for c in 0..<d {
                let a = parameters(ofChannel: c, in: params)
                zero[c] = a.zero
                scale[c] = a.scale
            }
            let z = UnsafeRawPointer(zero), s = UnsafeRawPointer(scale)
            for r in 0..<count {
                let row = codes + r * rowByteCount, o = UnsafeMutableRawPointer(out + r * d)
                var c = 0
                while c < full {
                    let v = z.loadUnaligned(fromByteOffset: 4 * c, as: SIMD8<Float>.self)
                        + s.loadUnaligned(fromByteOffset: 4 * c, as: SIMD8<Float>.self) * CodePacking.load8f(width, row, element: c)
                    o.storeBytes(of: v, toByteOffset: 4 * c, as: SIMD8<Float>.self)
                    c += 8
                }
                while c < d {
                    out[r * d + c] = zero[c] + scale[c] * Float(CodePacking.load(width, row, element: c))
                    c += 1
                }
            }
        }
    }
}

/// The first of `x[0..<count]` that no format may store (non-finite, or beyond ±65504), with its flat
/// index, or `nil`: `RowCodec.encode`'s check over a whole buffer at once.
///
/// - Complexity: O(count), vectorised.
package func firstUnstorableValue(_ x: UnsafePointer<Float>, count: Int) -> QuantizationError? {
    ValueCheck.firstInvalid(x, count: count)
}

extension QuantizationError {
    /// The same error reported at `index`.
    package func reindexed(_ index: Int) -> QuantizationError {
        switch self {
        case .nonFinite(_, let v): .nonFinite(index: index, value: v)
        case .outOfRange(_, let v): .outOfRange(index: index, value: v)
        }
    }
}
