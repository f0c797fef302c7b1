/// Packing and unpacking of 8-, 4-, 3- and 2-bit codes as a little-end-first bit stream: element
/// `i` of a row occupies bits `i·b ..< (i+1)·b` of the code bytes, bit `k` of the stream being bit
/// `k mod 8` of byte `k / 8`. For 8, 4 and 2 bits this is element `i` in byte `i / (8/b)` at bit
/// `(i mod (8/b))·b`; 3-bit codes straddle bytes (eight codes fill exactly three bytes):
///
///     byte 0: c0 c0 c0 c1 c1 c1 c2 c2    (bit 0 first)
///     byte 1: c2 c3 c3 c3 c4 c4 c4 c5
///     byte 2: c5 c5 c6 c6 c6 c7 c7 c7
///
/// The SIMD routines move eight codes starting at an element index that is a multiple of 8 (so they
/// start on a byte boundary for every width, and touch exactly `b` bytes); the scalar ones move
/// single codes for tails and for the reference kernels, and never touch a byte outside
/// `packedByteCount(codes: i + 1)`.
@usableFromInline
enum CodePacking {
    @usableFromInline static let shifts4 = SIMD8<UInt32>(0, 4, 8, 12, 16, 20, 24, 28)
    @usableFromInline static let shifts3 = SIMD8<UInt32>(0, 3, 6, 9, 12, 15, 18, 21)
    @usableFromInline static let shifts2 = SIMD8<UInt32>(0, 2, 4, 6, 8, 10, 12, 14)

    /// Eight codes starting at element `e` (a multiple of 8).
    @inlinable @inline(__always)
    static func load8(_ width: CodeWidth, _ codes: UnsafeRawPointer, element e: Int) -> SIMD8<UInt32> {
        switch width {
        case .int8:
            return SIMD8<UInt32>(truncatingIfNeeded: codes.loadUnaligned(fromByteOffset: e, as: SIMD8<UInt8>.self))
        case .int4:
            let w = codes.loadUnaligned(fromByteOffset: e / 2, as: UInt32.self)
            return (SIMD8<UInt32>(repeating: UInt32(littleEndian: w)) &>> shifts4) & 0xF
        case .int3:
            // Three bytes, read as two loads so nothing past them is touched.
            let b = e / 8 * 3
            let w = UInt32(UInt16(littleEndian: codes.loadUnaligned(fromByteOffset: b, as: UInt16.self)))
                | UInt32(codes.load(fromByteOffset: b + 2, as: UInt8.self)) << 16
            return (SIMD8<UInt32>(repeating: w) &>> shifts3) & 0x7
        case .int2:
            let w = codes.loadUnaligned(fromByteOffset: e / 4, as: UInt16.self)
            return (SIMD8<UInt32>(repeating: UInt32(UInt16(littleEndian: w))) &>> shifts2) & 0x3
        }
    }

    /// Eight codes starting at element `e` (a multiple of 8), as `Float`s (codes < 2^8 convert
    /// exactly through `Int32`, which every SIMD ISA converts natively).
    @inlinable @inline(__always)
    static func load8f(_ width: CodeWidth, _ codes: UnsafeRawPointer, element e: Int) -> SIMD8<Float> {
        SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: load8(width, codes, element: e)))
    }

    /// Stores eight codes (each ≤ `width.maxCode`) starting at element `e` (a multiple of 8).
    @inlinable @inline(__always)
    static func store8(_ width: CodeWidth, _ c: SIMD8<UInt32>, _ codes: UnsafeMutableRawPointer, element e: Int) {
        switch width {
        case .int8:
            codes.storeBytes(of: SIMD8<UInt8>(truncatingIfNeeded: c), toByteOffset: e, as: SIMD8<UInt8>.self)
        case .int4:
            codes.storeBytes(of: (c &<< shifts4).wrappedSum().littleEndian, toByteOffset: e / 2, as: UInt32.self)
        case .int3:
            let w = (c &<< shifts3).wrappedSum(), b = e / 8 * 3
            codes.storeBytes(of: UInt16(truncatingIfNeeded: w).littleEndian, toByteOffset: b, as: UInt16.self)
            codes.storeBytes(of: UInt8(truncatingIfNeeded: w >> 16), toByteOffset: b + 2, as: UInt8.self)
        case .int2:
            codes.storeBytes(of: UInt16(truncatingIfNeeded: (c &<< shifts2).wrappedSum()).littleEndian,
                             toByteOffset: e / 4, as: UInt16.self)
        }
    }

    /// The code of element `i`.
    @inlinable @inline(__always)
    static func load(_ width: CodeWidth, _ codes: UnsafeRawPointer, element i: Int) -> UInt32 {
        let bit = i * width.bits, byte = bit >> 3, shift = UInt32(bit & 7)
        var v = UInt32(codes.load(fromByteOffset: byte, as: UInt8.self)) >> shift
        // Only 3-bit codes straddle two bytes (shift + bits > 8 never holds for 8, 4 or 2 bits).
        if Int(shift) + width.bits > 8 { v |= UInt32(codes.load(fromByteOffset: byte + 1, as: UInt8.self)) << (8 - shift) }
        return v & UInt32(width.maxCode)
    }

    /// Sets the code of element `i`, leaving every other code unchanged.
    @inlinable @inline(__always)
    static func store(_ width: CodeWidth, _ code: UInt32, _ codes: UnsafeMutableRawPointer, element i: Int) {
        let bit = i * width.bits, byte = bit >> 3, shift = bit & 7
        let mask = UInt32(width.maxCode) << UInt32(shift), value = (code & UInt32(width.maxCode)) << UInt32(shift)
        let old0 = codes.load(fromByteOffset: byte, as: UInt8.self)
        codes.storeBytes(of: (old0 & ~UInt8(truncatingIfNeeded: mask)) | UInt8(truncatingIfNeeded: value), toByteOffset: byte, as: UInt8.self)
        if shift + width.bits > 8 {
            let old1 = codes.load(fromByteOffset: byte + 1, as: UInt8.self)
            codes.storeBytes(of: (old1 & ~UInt8(truncatingIfNeeded: mask >> 8)) | UInt8(truncatingIfNeeded: value >> 8),
                             toByteOffset: byte + 1, as: UInt8.self)
        }
    }
}
