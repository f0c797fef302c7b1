// SIMD kernels for FP16 rows: `headDim` half bit patterns, little-endian.
import CKVKernels

extension RowCodec {
    @inlinable @inline(__always)
    func loadHalf8(_ row: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
        Float16Bits.halfToFloat(row.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<UInt16>.self))
    }

    @inlinable @inline(__always)
    func loadHalf(_ row: UnsafeRawPointer, _ i: Int) -> Float {
        Float16Bits.halfToFloat(UInt16(littleEndian: row.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
    }

    @inlinable
    func encodeFP16(_ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer) {
        #if arch(x86_64)
        if KernelSet.current.avx512 { return kvk_float_to_half(x, row.assumingMemoryBound(to: UInt16.self), headDim) }
        if KernelSet.current.avx2 { return kvk_float_to_half_avx2(x, row.assumingMemoryBound(to: UInt16.self), headDim) }
        #endif
        let raw = UnsafeRawPointer(x)
        var i = 0
        while i + 8 <= headDim {
            let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            row.storeBytes(of: Float16Bits.floatToHalf(v), toByteOffset: 2 * i, as: SIMD8<UInt16>.self)
            i += 8
        }
        while i < headDim {
            row.storeBytes(of: Float16Bits.floatToHalf(x[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            i += 1
        }
    }

    @inlinable
    func decodeFP16(_ row: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        let o = UnsafeMutableRawPointer(out)
        var i = 0
        while i + 8 <= headDim {
            o.storeBytes(of: loadHalf8(row, i), toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        while i < headDim { out[i] = loadHalf(row, i); i += 1 }
    }

    @inlinable
    func dotFP16(_ q: UnsafePointer<Float>, _ row: UnsafeRawPointer) -> Float {
        let qr = UnsafeRawPointer(q)
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= headDim {
            a0 += qr.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * loadHalf8(row, i)
            a1 += qr.loadUnaligned(fromByteOffset: 4 * i + 32, as: SIMD8<Float>.self) * loadHalf8(row, i + 8)
            i += 16
        }
        if i + 8 <= headDim {
            a0 += qr.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * loadHalf8(row, i)
            i += 8
        }
        var s = (a0 + a1).sum()
        while i < headDim { s += q[i] * loadHalf(row, i); i += 1 }
        return s
    }

    @inlinable
    func accumulateFP16(_ w: Float, _ row: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        let o = UnsafeMutableRawPointer(out)
        var i = 0
        while i + 8 <= headDim {
            let acc = o.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            o.storeBytes(of: acc + w * loadHalf8(row, i), toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        while i < headDim { out[i] = out[i] + w * loadHalf(row, i); i += 1 }
    }
}
