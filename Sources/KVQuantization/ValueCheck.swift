import CKVKernels

/// Finds values no format may store: non-finite, or finite with magnitude above 65504.
@usableFromInline
enum ValueCheck {
    /// Bit pattern of 65504 (the largest half); a non-negative `Float` is finite and ≤ 65504 exactly
    /// when its bit pattern is ≤ this (NaN and ∞ patterns are larger).
    @usableFromInline static let maxBits: UInt32 = 0x477F_E000

    /// The error for the first invalid element of `x[0..<count]`, reported at `indexOffset + i`, or
    /// `nil` if all are storable.
    ///
    /// - Complexity: O(count), vectorised (AVX-512 C on the `avx512` kernel path, AVX2 C on `avx2` or
    ///   where `EncodeKernels.current` is `avx2`, else Swift SIMD).
    @inlinable
    static func firstInvalid(_ x: UnsafePointer<Float>, count: Int, indexOffset: Int = 0) -> QuantizationError? {
        #if arch(x86_64)
        if KernelSet.current.avx512 || KernelSet.current.avx2 {
            let i = KernelSet.current.avx512 ? kvk_first_invalid(x, count) : kvk_first_invalid_avx2(x, count)
            return i < 0 ? nil : firstInvalidReference(x + i, count: count - i, indexOffset: indexOffset + i)
        }
        if EncodeKernels.current == .avx2 {
            let i = kvk_encode_first_invalid_avx2(x, count)
            return i < 0 ? nil : firstInvalidReference(x + i, count: count - i, indexOffset: indexOffset + i)
        }
        #endif
        return firstInvalidPortable(x, count: count, indexOffset: indexOffset)
    }

    /// The Swift SIMD path of `firstInvalid`.
    @inlinable
    static func firstInvalidPortable(_ x: UnsafePointer<Float>, count: Int, indexOffset: Int = 0) -> QuantizationError? {
        var i = 0
        var bad = false
        let raw = UnsafeRawPointer(x)
        // |x| bits are non-negative as Int32, so the signed compare (one SSE2 instruction) is the
        // unsigned one; 32 values per test of the accumulated mask.
        let limit = SIMD8<Int32>(repeating: Int32(maxBits))
        while i + 32 <= count {
            var m = SIMDMask<SIMD8<Int32>>()
            for k in 0..<4 {
                m = m .| ((raw.loadUnaligned(fromByteOffset: 4 * (i + 8 * k), as: SIMD8<Int32>.self) & 0x7FFF_FFFF) .> limit)
            }
            if any(m) { break }
            i += 32
        }
        while i + 8 <= count, !bad {
            let u = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Int32>.self)
            if any((u & 0x7FFF_FFFF) .> limit) { bad = true; break }
            i += 8
        }
        if !bad {
            while i < count {
                if x[i].bitPattern & 0x7FFF_FFFF > maxBits { bad = true; break }
                i += 1
            }
        }
        guard bad else { return nil }
        return firstInvalidReference(x, count: count, indexOffset: indexOffset)
    }

    /// Scalar reference of `firstInvalid`.
    @inlinable
    static func firstInvalidReference(_ x: UnsafePointer<Float>, count: Int, indexOffset: Int = 0) -> QuantizationError? {
        for i in 0..<count {
            let v = x[i]
            if !v.isFinite { return .nonFinite(index: indexOffset + i, value: v) }
            if abs(v) > StorageFormat.maxMagnitude { return .outOfRange(index: indexOffset + i, value: v) }
        }
        return nil
    }
}
