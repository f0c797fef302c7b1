/// Packing and unpacking of 8-, 4- and 2-bit codes, little-end first: element `i` of a row sits in
/// byte `i / (8/b)` at bit `(i mod (8/b))·b`.
///
/// The SIMD routines move eight codes starting at an element index that is a multiple of 8 (so they
/// start on a byte boundary for every width); the scalar ones move single codes for tails and for
/// the reference kernels.
@usableFromInline
enum CodePacking {
    @usableFromInline static let shifts4 = SIMD8<UInt32>(0, 4, 8, 12, 16, 20, 24, 28)
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
        case .int2:
            codes.storeBytes(of: UInt16(truncatingIfNeeded: (c &<< shifts2).wrappedSum()).littleEndian,
                             toByteOffset: e / 4, as: UInt16.self)
        }
    }

    /// The code of element `i`.
    @inlinable @inline(__always)
    static func load(_ width: CodeWidth, _ codes: UnsafeRawPointer, element i: Int) -> UInt32 {
        let perByte = width.codesPerByte
        let byte = codes.load(fromByteOffset: i / perByte, as: UInt8.self)
        return UInt32(byte >> UInt8((i % perByte) * width.bits)) & UInt32(width.maxCode)
    }

    /// Sets the code of element `i`, leaving the other codes of its byte unchanged.
    @inlinable @inline(__always)
    static func store(_ width: CodeWidth, _ code: UInt32, _ codes: UnsafeMutableRawPointer, element i: Int) {
        let perByte = width.codesPerByte
        let shift = UInt8((i % perByte) * width.bits)
        let mask = UInt8(width.maxCode) << shift
        let old = codes.load(fromByteOffset: i / perByte, as: UInt8.self)
        let new = (old & ~mask) | (UInt8(truncatingIfNeeded: code) << shift)
        codes.storeBytes(of: new, toByteOffset: i / perByte, as: UInt8.self)
    }
}
