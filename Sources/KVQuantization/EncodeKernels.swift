import CKVKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#elseif canImport(ucrt)
import ucrt
#endif

/// The write path's kernels — the value check, FP32 ↔ FP16 rows, the grouped and per-channel
/// affine encoders — and which implementation runs them: the AVX2 + F16C + FMA C kernels of
/// `CKVKernels` (`encode_avx2.c`) or Swift SIMD. The C encoders take 8-, 4- and 2-bit codes; 3-bit
/// codes are encoded by the Swift SIMD code on every path, and Lloyd–Max rows by
/// `RowCodec.encodeLloydMax`.
///
/// Chosen once per process (`current`): `avx2` on an x86-64 CPU with AVX2, F16C and FMA unless
/// `KVCRUSH_KERNELS=portable` forces the Swift code everywhere; else `portable`. (The read path's
/// `KernelPath` has no `avx2` case yet; once it has, `current` is `avx2` exactly when
/// `KernelPath.current` is `avx2` or `avx512`.) On the `avx512` path the value check and FP16
/// conversion of single rows keep their AVX-512 kernels.
///
/// Every entry computes exactly what its scalar reference twin does, bit for bit, on every path:
/// `ValueCheck.firstInvalidReference`, `Float16Bits.floatToHalfReference`/`halfToFloatReference`,
/// `RowCodec.encodeReference`, `ChannelwiseKeyCodec.encodePageReference` (tested on each path the
/// machine can run). Values must be finite with magnitude ≤ 65504 where an entry says so
/// ("storable": the store checks on append and clamps decoded values since).
@usableFromInline package enum EncodeKernels {
    @usableFromInline package enum Path: Sendable, Hashable, CaseIterable, CustomStringConvertible {
        case avx2
        case portable
        @usableFromInline package var description: String { self == .avx2 ? "avx2" : "portable" }
    }

    /// The path of this process (see the type).
    @usableFromInline package static let current: Path = {
        _ = KernelPath.current  // a bad KVCRUSH_KERNELS traps here first, with its message
        if let v = getenv(KernelPath.environmentVariable), String(cString: v) == KernelPath.portable.rawValue { return .portable }
        return CPUFeatures.detected.contains(.avx2) ? .avx2 : .portable
    }()

    /// The paths this CPU can run (for tests that hold each to the reference).
    package static var available: [Path] { CPUFeatures.detected.contains(.avx2) ? [.avx2, .portable] : [.portable] }

    // MARK: Value check

    /// The index of the first of `x[0..<count]` no format may store (NaN, ±∞, |x| > 65504), or
    /// `nil`: `ValueCheck.firstInvalid` on `path`.
    package static func firstInvalid(_ x: UnsafePointer<Float>, count: Int, path: Path = current) -> Int? {
        #if arch(x86_64)
        if path == .avx2 {
            let i = kvk_encode_first_invalid_avx2(x, count)
            return i < 0 ? nil : i
        }
        #endif
        return ValueCheck.firstInvalidPortable(x, count: count)?.index
    }

    // MARK: FP16 rows

    /// `out[i]` = the FP16 bit pattern of `x[i]`, round to nearest even (storable `x`).
    package static func floatToHalf(_ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer, count: Int, path: Path = current) {
        #if arch(x86_64)
        if KernelSet.current.avx512 { return kvk_float_to_half(x, out.assumingMemoryBound(to: UInt16.self), count) }
        if path == .avx2 { return kvk_encode_fp16_avx2(x, out.assumingMemoryBound(to: UInt16.self), count) }
        #endif
        let raw = UnsafeRawPointer(x)
        var i = 0
        while i + 8 <= count {
            out.storeBytes(of: Float16Bits.floatToHalf(raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)),
                           toByteOffset: 2 * i, as: SIMD8<UInt16>.self)
            i += 8
        }
        while i < count {
            out.storeBytes(of: Float16Bits.floatToHalf(x[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            i += 1
        }
    }

    /// `out[i]` = the float of FP16 bit pattern `h[i]` (exact).
    package static func halfToFloat(_ h: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>, count: Int, path: Path = current) {
        #if arch(x86_64)
        if path == .avx2 { return kvk_decode_fp16_avx2(h.assumingMemoryBound(to: UInt16.self), out, count) }
        #endif
        let o = UnsafeMutableRawPointer(out)
        var i = 0
        while i + 8 <= count {
            o.storeBytes(of: Float16Bits.halfToFloat(h.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<UInt16>.self)),
                         toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        while i < count {
            out[i] = Float16Bits.halfToFloat(UInt16(littleEndian: h.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            i += 1
        }
    }

    // MARK: Affine encoders

    /// `count` rows of `x` (storable) encoded by `codec` (grouped) into consecutive rows at `rows`.
    package static func encodeGrouped(_ codec: RowCodec, _ x: UnsafePointer<Float>, count: Int, into rows: UnsafeMutableRawPointer,
                                      path: Path = current) {
        guard let w = codec.width else { preconditionFailure("EncodeKernels.encodeGrouped: not a grouped codec") }
        #if arch(x86_64)
        // The C encoder packs 8-, 4- and 2-bit codes; 3-bit codes take the Swift path.
        if path == .avx2, w != .int3 {
            return kvk_encode_grouped_avx2(Int32(w.bits), codec.groupSize, x, count, codec.headDim,
                                           rows.assumingMemoryBound(to: UInt8.self), codec.rowByteCount, codec.codeByteCount)
        }
        #endif
        for r in 0..<count { codec.encodeGrouped(w, x + r * codec.headDim, into: rows + r * codec.rowByteCount) }
    }

    /// Lloyd–Max level codes of `count8` values (a multiple of 8): `codes[i]` = the number of the
    /// first `thresholdCount` lanes of `thresholds` (ascending) strictly below `x[i] / norm`, exactly
    /// `RowCodec.levelCode` of that quotient, on every path (`kvk_encode_lloydmax_codes_avx2`, or
    /// `lloydMaxCodesPortable`).
    ///
    /// - Precondition: `norm > 0`; the values finite (not checked).
    @usableFromInline package static func lloydMaxCodes(_ x: UnsafePointer<Float>, count8: Int, norm: Float, thresholds: SIMD16<Float>,
                                                        thresholdCount: Int, into codes: UnsafeMutablePointer<UInt32>, path: Path = current) {
        #if arch(x86_64)
        if path == .avx2 {
            return withUnsafeBytes(of: thresholds) { t in
                kvk_encode_lloydmax_codes_avx2(x, count8, norm, t.baseAddress!.assumingMemoryBound(to: Float.self), Int32(thresholdCount), codes)
            }
        }
        #endif
        lloydMaxCodesPortable(x, count8: count8, norm: norm, thresholds: thresholds, thresholdCount: thresholdCount, into: codes)
    }

    /// The Swift SIMD path of `lloydMaxCodes`: eight quotients at a time, one compare per threshold.
    @usableFromInline package static func lloydMaxCodesPortable(_ x: UnsafePointer<Float>, count8: Int, norm: Float, thresholds: SIMD16<Float>,
                                                                thresholdCount: Int, into codes: UnsafeMutablePointer<UInt32>) {
        let raw = UnsafeRawPointer(x), out = UnsafeMutableRawPointer(codes), n8 = SIMD8<Float>(repeating: norm)
        var i = 0
        while i + 8 <= count8 {
            let z = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) / n8
            var c = SIMD8<UInt32>()
            for k in 0..<thresholdCount { c &+= SIMD8<UInt32>(repeating: 0).replacing(with: 1, where: z .> SIMD8(repeating: thresholds[k])) }
            out.storeBytes(of: c, toByteOffset: 4 * i, as: SIMD8<UInt32>.self)
            i += 8
        }
    }

    /// A page of `tokenCount` storable keys quantised per channel by `codec`.
    package static func encodeChannelwise(_ codec: ChannelwiseKeyCodec, _ x: UnsafePointer<Float>, tokenCount: Int,
                                          codes: UnsafeMutableRawPointer, params: UnsafeMutableRawPointer, path: Path = current) {
        #if arch(x86_64)
        if path == .avx2, codec.width != .int3 {
            return kvk_encode_channelwise_avx2(Int32(codec.width.bits), x, tokenCount, codec.headDim, codes.assumingMemoryBound(to: UInt8.self),
                                               codec.rowByteCount, params.assumingMemoryBound(to: UInt16.self))
        }
        #endif
        codec.encodePagePortable(x, tokenCount: tokenCount, codes: codes, params: params)
    }
}
