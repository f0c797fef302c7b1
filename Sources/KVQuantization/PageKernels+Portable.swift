// The Swift page kernels: what the `portable` kernel path runs (Apple silicon and every CPU without
// the C kernels), and every path for the shapes the C kernels do not take. Same contracts as the
// entries in PageKernels.swift, same structure as the C kernels:
// - query and output rows in tiles of up to four, so each K/V row is decoded once per tile (a GQA
//   group, a prefill chunk), with the tile's accumulators in SIMD registers;
// - rows read in units of 16 bytes as four `UInt32` lanes, each lane's codes (or halves) taken out
//   by one shift and mask per plane: plane t of a unit at element c0 holds elements
//   c0 + P·k + t (k = 0..<4, P = 32/bits codes per lane, 2 halves). The prepared query and the
//   output are permuted to match once per page; a scalar tail takes the rest of the head dim;
// - the row format and the tile size are generic parameters (`PortableRowFormat`, `PortableTile`),
//   so each kernel is specialised with both as constants: no branches on them in the loops, and
//   only SIMD operators in the hot loops (no conversion initialisers, which the optimiser may
//   leave as calls: a call inside the loop spills every accumulator);
// - no allocation (the caller's `work`), and no fused multiply-add: on CPUs without FMA in the
//   baseline instruction set (x86-64 as Swift compiles it) `addingProduct` is a library call per
//   lane. Products and sums round separately, the same on every CPU; the twins say so.
//
// The lanes are little-endian words; on a big-endian CPU the entries take the scalar references.

/// A row format of the Swift kernels: FP16 (`bits` 0) or codes of `bits` bits.
protocol PortableRowFormat {
    static var bits: Int { get }
}

enum PortableFP16: PortableRowFormat { static var bits: Int { 0 } }
enum PortableInt8: PortableRowFormat { static var bits: Int { 8 } }
enum PortableInt4: PortableRowFormat { static var bits: Int { 4 } }
enum PortableInt2: PortableRowFormat { static var bits: Int { 2 } }

extension PortableRowFormat {
    /// Elements per 32-bit lane of a unit: P.
    @inline(__always) static var planes: Int { bits == 0 ? 2 : 32 / bits }
    /// Elements per 16-byte unit: 4P.
    @inline(__always) static var unitElements: Int { 4 * planes }

    /// Byte offset of the unit that starts at element c0 (a multiple of `unitElements`).
    @inline(__always) static func unitOffset(_ c0: Int) -> Int { bits == 0 ? 2 * c0 : c0 * bits / 8 }

    /// Plane t of a unit's lanes as `Float`: the codes, or the halves converted exactly.
    @inline(__always) static func plane(_ w: SIMD4<UInt32>, _ t: Int) -> SIMD4<Float> {
        if bits == 0 { return PageKernels.halfLanesHigh(t == 0 ? w &<< 16 : w & 0xFFFF_0000) }
        return PageKernels.codeLanes((w &>> UInt32(bits * t)) & UInt32((1 << bits) - 1))
    }

    /// Element c of a row as `Float` (the scalar tails).
    @inline(__always) static func element(_ row: UnsafeRawPointer, _ c: Int) -> Float {
        if bits == 0 { return Float16Bits.halfToFloat(UInt16(littleEndian: row.loadUnaligned(fromByteOffset: 2 * c, as: UInt16.self))) }
        let perByte = 8 / bits
        return Float((row.load(fromByteOffset: c / perByte, as: UInt8.self) >> UInt8(bits * (c % perByte))) & UInt8((1 << bits) - 1))
    }
}

/// The number of query or output rows a Swift kernel holds in registers at once.
protocol PortableTile {
    static var rows: Int { get }
}

enum PortableTile1: PortableTile { static var rows: Int { 1 } }
enum PortableTile2: PortableTile { static var rows: Int { 2 } }
enum PortableTile3: PortableTile { static var rows: Int { 3 } }
enum PortableTile4: PortableTile { static var rows: Int { 4 } }

extension PageKernels {
    // MARK: Lanes

    /// Codes below 2²³ as `Float`, exactly: 2²³ + c has c in its mantissa.
    @inline(__always)
    static func codeLanes(_ v: SIMD4<UInt32>) -> SIMD4<Float> {
        unsafeBitCast(v | 0x4B00_0000, to: SIMD4<Float>.self) - 0x1p23
    }

    /// Half bit patterns in the high 16 bits of each lane (the low 16 zero) as `Float`, exactly (as
    /// `Float16Bits.halfToFloat`):
    /// an arithmetic shift by 3 puts the sign in bit 31 and the 15 magnitude bits in bits 27…13
    /// (bits 30…28 become copies of the sign, cleared by the mask), then ×2¹¹² rebiases the
    /// exponent as in `Float16Bits.halfToFloat` (a sign-symmetric product, so the sign stays). Three
    /// operations instead of the five of masking the sign and magnitude apart.
    @inline(__always)
    static func halfLanesHigh(_ x: SIMD4<UInt32>) -> SIMD4<Float> {
        let s = unsafeBitCast(unsafeBitCast(x, to: SIMD4<Int32>.self) &>> 3, to: SIMD4<UInt32>.self)
        return unsafeBitCast(s & 0x8FFF_FFFF, to: SIMD4<Float>.self) * 0x1p112
    }

    @inline(__always)
    static func lanes(_ p: UnsafeRawPointer, _ byte: Int) -> SIMD4<UInt32> { p.loadUnaligned(fromByteOffset: byte, as: SIMD4<UInt32>.self) }

    @inline(__always)
    static func floats(_ p: UnsafeRawPointer, _ index: Int) -> SIMD4<Float> { p.loadUnaligned(fromByteOffset: 4 * index, as: SIMD4<Float>.self) }

    @inline(__always)
    static func total(_ v: SIMD4<Float>) -> Float { (v[0] + v[1]) + (v[2] + v[3]) }

    /// Permutes `d` floats of natural order at `x` into the unit order of `F` at `out` (full units;
    /// the tail is copied as it is).
    @inline(__always)
    static func permuteToUnits<F: PortableRowFormat>(_: F.Type, _ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, d: Int) {
        let p = F.planes, e = F.unitElements, whole = d / e * e
        var c0 = 0
        while c0 < whole {
            for t in 0..<p { for k in 0..<4 { out[c0 + 4 * t + k] = x[c0 + p * k + t] } }
            c0 += e
        }
        for c in whole..<d { out[c] = x[c] }
    }

    // MARK: Scores

    /// `scores[r·stride + j] = scale · (Σ_c q_r[c]·x_jc + zt_r)` for `T.rows` query rows (`d` each,
    /// full units in the unit order of `F`, the tail natural) against `n` rows of `F`.
    static func portableScoresTile<F: PortableRowFormat, T: PortableTile>(_: F.Type, _: T.Type, _ q: UnsafePointer<Float>,
                                                                         zt: UnsafePointer<Float>?, d: Int, rows: UnsafeRawPointer,
                                                                         rowBytes: Int, n: Int, scale: Float,
                                                                         scores: UnsafeMutablePointer<Float>, stride: Int) {
        let p = F.planes, e = F.unitElements, whole = d / e * e, qr = UnsafeRawPointer(q)
        @inline(__always) func finish(_ r: Int, _ a: SIMD4<Float>, _ row: UnsafeRawPointer) -> Float {
            var s = total(a)
            for c in whole..<d { s += q[r * d + c] * F.element(row, c) }
            if let zt { s += zt[r] }
            return s * scale
        }
        var j = 0
        if T.rows == 1 {
            // One row (a decode step without GQA): two tokens at a time, two chains each.
            while j + 2 <= n {
                let row0 = rows + j * rowBytes, row1 = row0 + rowBytes
                var a0 = SIMD4<Float>(), a1 = SIMD4<Float>(), b0 = SIMD4<Float>(), b1 = SIMD4<Float>()
                var c0 = 0
                while c0 < whole {
                    let w0 = lanes(row0, F.unitOffset(c0)), w1 = lanes(row1, F.unitOffset(c0))
                    for t in 0..<p {
                        let qv = floats(qr, c0 + 4 * t)
                        if t % 2 == 0 { a0 += qv * F.plane(w0, t); b0 += qv * F.plane(w1, t) }
                        else { a1 += qv * F.plane(w0, t); b1 += qv * F.plane(w1, t) }
                    }
                    c0 += e
                }
                scores[j] = finish(0, a0 + a1, row0)
                scores[j + 1] = finish(0, b0 + b1, row1)
                j += 2
            }
        }
        while j < n {
            let row = rows + j * rowBytes
            var a0 = SIMD4<Float>(), a1 = SIMD4<Float>(), b0 = SIMD4<Float>(), b1 = SIMD4<Float>()
            var e0 = SIMD4<Float>(), e1 = SIMD4<Float>(), f0 = SIMD4<Float>(), f1 = SIMD4<Float>()
            var c0 = 0
            while c0 < whole {
                let w = lanes(row, F.unitOffset(c0))
                for t in 0..<p {
                    let x = F.plane(w, t), i = c0 + 4 * t
                    if t % 2 == 0 {
                        a0 += floats(qr, i) * x
                        if T.rows > 1 { b0 += floats(qr, d + i) * x }
                        if T.rows > 2 { e0 += floats(qr, 2 * d + i) * x }
                        if T.rows > 3 { f0 += floats(qr, 3 * d + i) * x }
                    } else {
                        a1 += floats(qr, i) * x
                        if T.rows > 1 { b1 += floats(qr, d + i) * x }
                        if T.rows > 2 { e1 += floats(qr, 2 * d + i) * x }
                        if T.rows > 3 { f1 += floats(qr, 3 * d + i) * x }
                    }
                }
                c0 += e
            }
            scores[j] = finish(0, a0 + a1, row)
            if T.rows > 1 { scores[stride + j] = finish(1, b0 + b1, row) }
            if T.rows > 2 { scores[2 * stride + j] = finish(2, e0 + e1, row) }
            if T.rows > 3 { scores[3 * stride + j] = finish(3, f0 + f1, row) }
            j += 1
        }
    }

    /// Every query row in tiles of four, then the rest.
    static func portableScores<F: PortableRowFormat>(_ f: F.Type, _ q: UnsafePointer<Float>, zt: UnsafePointer<Float>?, rowCount: Int,
                                                    d: Int, rows: UnsafeRawPointer, rowBytes: Int, n: Int, scale: Float,
                                                    scores: UnsafeMutablePointer<Float>, stride: Int) {
        var r = 0
        while r + 4 <= rowCount {
            portableScoresTile(f, PortableTile4.self, q + r * d, zt: zt.map { $0 + r }, d: d, rows: rows, rowBytes: rowBytes, n: n,
                               scale: scale, scores: scores + r * stride, stride: stride)
            r += 4
        }
        let (qt, zr, st) = (q + r * d, zt.map { $0 + r }, scores + r * stride)
        switch rowCount - r {
        case 3: portableScoresTile(f, PortableTile3.self, qt, zt: zr, d: d, rows: rows, rowBytes: rowBytes, n: n, scale: scale, scores: st, stride: stride)
        case 2: portableScoresTile(f, PortableTile2.self, qt, zt: zr, d: d, rows: rows, rowBytes: rowBytes, n: n, scale: scale, scores: st, stride: stride)
        case 1: portableScoresTile(f, PortableTile1.self, qt, zt: zr, d: d, rows: rows, rowBytes: rowBytes, n: n, scale: scale, scores: st, stride: stride)
        default: break
        }
    }

    /// The Swift path of `scoresFP16`: the query rows permuted into unit order once (`work`,
    /// `rowCount·headDim` floats), then every key row scored against the tile.
    static func scoresFP16Portable(_ q: UnsafePointer<Float>, rowCount: Int, headDim d: Int, keys: UnsafeRawPointer, tokenCount n: Int,
                                   scale: Float, into scores: UnsafeMutablePointer<Float>, stride: Int, work: UnsafeMutablePointer<Float>) {
        #if _endian(little)
        for r in 0..<rowCount { permuteToUnits(PortableFP16.self, q + r * d, into: work + r * d, d: d) }
        portableScores(PortableFP16.self, work, zt: nil, rowCount: rowCount, d: d, rows: keys, rowBytes: 2 * d, n: n, scale: scale,
                       scores: scores, stride: stride)
        #else
        scoresReference(try! RowCodec(.fp16, headDim: d), q, rowCount: rowCount, keys: keys, tokenCount: n, scale: scale, into: scores, stride: stride)
        #endif
    }

    /// The Swift path of `scoresChannelwise`: the query rows folded into the page's parameters once
    /// (`work`: qs, `rowCount·headDim` floats in unit order; then zt, `rowCount` floats), then every
    /// code row scored against the tile.
    static func scoresChannelwisePortable(_ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, rowCount: Int,
                                          codes: UnsafeRawPointer, params: UnsafeRawPointer, tokenCount n: Int, scale: Float,
                                          into scores: UnsafeMutablePointer<Float>, stride: Int, work: UnsafeMutablePointer<Float>) {
        #if _endian(little)
        switch codec.width {
        case .int8: channelwisePortable(PortableInt8.self, codec, q, rowCount: rowCount, codes: codes, params: params, n: n, scale: scale, scores: scores, stride: stride, work: work)
        case .int4: channelwisePortable(PortableInt4.self, codec, q, rowCount: rowCount, codes: codes, params: params, n: n, scale: scale, scores: scores, stride: stride, work: work)
        case .int2: channelwisePortable(PortableInt2.self, codec, q, rowCount: rowCount, codes: codes, params: params, n: n, scale: scale, scores: scores, stride: stride, work: work)
        case .int3: scoresChannelwiseInt3Portable(codec, q, rowCount: rowCount, codes: codes, params: params, tokenCount: n, scale: scale,
                                                  into: scores, stride: stride, work: work)
        }
        #else
        scoresChannelwiseReference(codec, q, rowCount: rowCount, codes: codes, params: params, tokenCount: n, scale: scale, into: scores, stride: stride)
        #endif
    }

    static func channelwisePortable<F: PortableRowFormat>(_ f: F.Type, _ codec: ChannelwiseKeyCodec, _ q: UnsafePointer<Float>, rowCount: Int,
                                                         codes: UnsafeRawPointer, params: UnsafeRawPointer, n: Int, scale: Float,
                                                         scores: UnsafeMutablePointer<Float>, stride: Int, work: UnsafeMutablePointer<Float>) {
        let d = codec.headDim, whole4 = d / 4 * 4
        let qs = work, zt = work + rowCount * d
        let qraw = UnsafeRawPointer(q), natural = UnsafeMutableRawPointer(zt + rowCount)  // d floats of scratch after zt
        for r in 0..<rowCount {
            // qs = q·scale in natural order (four channels' (scale, zero) pairs per 16-byte load),
            // then permuted into unit order.
            var z = SIMD4<Float>()
            var c = 0
            while c < whole4 {
                let w = lanes(params, 4 * c), qv = floats(qraw, r * d + c)
                natural.storeBytes(of: qv * halfLanesHigh(w &<< 16), toByteOffset: 4 * c, as: SIMD4<Float>.self)
                z += qv * halfLanesHigh(w & 0xFFFF_0000)
                c += 4
            }
            var zs = total(z)
            let nq = natural.assumingMemoryBound(to: Float.self)
            for c in whole4..<d {
                let a = codec.parameters(ofChannel: c, in: params)
                nq[c] = q[r * d + c] * Float16Bits.halfToFloat(a.scaleBits)
                zs += q[r * d + c] * Float16Bits.halfToFloat(a.zeroBits)
            }
            zt[r] = zs
            permuteToUnits(f, nq, into: qs + r * d, d: d)
        }
        portableScores(f, qs, zt: zt, rowCount: rowCount, d: d, rows: codes, rowBytes: codec.rowByteCount, n: n, scale: scale,
                       scores: scores, stride: stride)
    }

    // MARK: Accumulate

    /// `out_r[i] ← out_r[i] + w_rj·x̂_ji` for `T.rows` output rows over the unit at c0 (planes
    /// t0 ..< t0 + `planeCount`), every token in order; x̂ = zero + scale·code (the scale and zero
    /// of token j's group for lane k at `sc`/`ze[j·G + lg[k]]`), or the half exactly.
    @inline(__always)
    static func portableAccumulateChunk<F: PortableRowFormat, T: PortableTile>(_: F.Type, _: T.Type, c0: Int, t0: Int, planeCount: Int,
                                                                              w: UnsafePointer<Float>, stride: Int, n: Int,
                                                                              rows: UnsafeRawPointer, rowBytes: Int,
                                                                              sc: UnsafePointer<Float>, ze: UnsafePointer<Float>, groups: Int,
                                                                              lg: SIMD4<Int>, oneGroup: Bool, d: Int,
                                                                              out: UnsafeMutablePointer<Float>) {
        let p = F.planes
        // Accumulators: one row, up to 8 planes (a…h); or up to 4 rows (a, b, e, f) × 2 planes (0, 1).
        @inline(__always) func load(_ r: Int, _ t: Int) -> SIMD4<Float> {
            let o = out + r * d + c0 + t
            return SIMD4(o[0], o[p], o[2 * p], o[3 * p])
        }
        @inline(__always) func store(_ r: Int, _ t: Int, _ v: SIMD4<Float>) {
            let o = out + r * d + c0 + t
            o[0] = v[0]; o[p] = v[1]; o[2 * p] = v[2]; o[3 * p] = v[3]
        }
        @inline(__always) func params(_ j: Int) -> (SIMD4<Float>, SIMD4<Float>) {
            if F.bits == 0 { return (SIMD4(), SIMD4()) }
            let base = j * groups
            if oneGroup { return (SIMD4(repeating: sc[base + lg[0]]), SIMD4(repeating: ze[base + lg[0]])) }
            return (SIMD4(sc[base + lg[0]], sc[base + lg[1]], sc[base + lg[2]], sc[base + lg[3]]),
                    SIMD4(ze[base + lg[0]], ze[base + lg[1]], ze[base + lg[2]], ze[base + lg[3]]))
        }
        @inline(__always) func value(_ lw: SIMD4<UInt32>, _ t: Int, _ s: SIMD4<Float>, _ z: SIMD4<Float>) -> SIMD4<Float> {
            F.bits == 0 ? F.plane(lw, t) : z + s * F.plane(lw, t)
        }
        let unitByte = F.unitOffset(c0)
        if T.rows == 1 {
            let m = planeCount
            var a = load(0, t0), b = m > 1 ? load(0, t0 + 1) : SIMD4(), c = m > 2 ? load(0, t0 + 2) : SIMD4(), e = m > 3 ? load(0, t0 + 3) : SIMD4()
            var f = m > 4 ? load(0, t0 + 4) : SIMD4(), g = m > 5 ? load(0, t0 + 5) : SIMD4(), h = m > 6 ? load(0, t0 + 6) : SIMD4()
            var k = m > 7 ? load(0, t0 + 7) : SIMD4()
            for j in 0..<n {
                let lw = lanes(rows + j * rowBytes, unitByte), (s, z) = params(j), wr = SIMD4<Float>(repeating: w[j])
                a += wr * value(lw, t0, s, z)
                if m > 1 { b += wr * value(lw, t0 + 1, s, z) }
                if m > 2 { c += wr * value(lw, t0 + 2, s, z) }
                if m > 3 { e += wr * value(lw, t0 + 3, s, z) }
                if m > 4 { f += wr * value(lw, t0 + 4, s, z) }
                if m > 5 { g += wr * value(lw, t0 + 5, s, z) }
                if m > 6 { h += wr * value(lw, t0 + 6, s, z) }
                if m > 7 { k += wr * value(lw, t0 + 7, s, z) }
            }
            store(0, t0, a)
            if m > 1 { store(0, t0 + 1, b) }
            if m > 2 { store(0, t0 + 2, c) }
            if m > 3 { store(0, t0 + 3, e) }
            if m > 4 { store(0, t0 + 4, f) }
            if m > 5 { store(0, t0 + 5, g) }
            if m > 6 { store(0, t0 + 6, h) }
            if m > 7 { store(0, t0 + 7, k) }
            return
        }
        // planeCount is 2 (every width has at least two planes).
        var a0 = load(0, t0), a1 = load(0, t0 + 1)
        var b0 = load(1, t0), b1 = load(1, t0 + 1)
        var e0 = T.rows > 2 ? load(2, t0) : SIMD4(), e1 = T.rows > 2 ? load(2, t0 + 1) : SIMD4()
        var f0 = T.rows > 3 ? load(3, t0) : SIMD4(), f1 = T.rows > 3 ? load(3, t0 + 1) : SIMD4()
        for j in 0..<n {
            let lw = lanes(rows + j * rowBytes, unitByte), (s, z) = params(j)
            let x0 = value(lw, t0, s, z), x1 = value(lw, t0 + 1, s, z)
            let w0 = SIMD4<Float>(repeating: w[j]), w1 = SIMD4<Float>(repeating: w[stride + j])
            a0 += w0 * x0; a1 += w0 * x1
            b0 += w1 * x0; b1 += w1 * x1
            if T.rows > 2 { let w2 = SIMD4<Float>(repeating: w[2 * stride + j]); e0 += w2 * x0; e1 += w2 * x1 }
            if T.rows > 3 { let w3 = SIMD4<Float>(repeating: w[3 * stride + j]); f0 += w3 * x0; f1 += w3 * x1 }
        }
        store(0, t0, a0); store(0, t0 + 1, a1)
        store(1, t0, b0); store(1, t0 + 1, b1)
        if T.rows > 2 { store(2, t0, e0); store(2, t0 + 1, e1) }
        if T.rows > 3 { store(3, t0, f0); store(3, t0 + 1, f1) }
    }

    /// `T.rows` rows over the whole row: every unit in plane chunks, then the scalar tail.
    static func portableAccumulateTile<F: PortableRowFormat, T: PortableTile>(_ f: F.Type, _ tile: T.Type, groupSize g: Int,
                                                                             w: UnsafePointer<Float>, stride: Int, n: Int,
                                                                             rows: UnsafeRawPointer, rowBytes: Int, codeBytes: Int,
                                                                             sc: UnsafePointer<Float>, ze: UnsafePointer<Float>, groups: Int,
                                                                             d: Int, out: UnsafeMutablePointer<Float>) {
        let p = F.planes, e = F.unitElements, whole = d / e * e
        let chunk = T.rows == 1 ? Swift.min(p, 8) : 2
        var c0 = 0
        while c0 < whole {
            // Lane k covers elements c0 + p·k ..< c0 + p·(k + 1): one group (p divides the group size).
            let lg = SIMD4(c0 / g, (c0 + p) / g, (c0 + 2 * p) / g, (c0 + 3 * p) / g)
            let oneGroup = lg[0] == lg[3]
            var t0 = 0
            while t0 < p {
                portableAccumulateChunk(f, tile, c0: c0, t0: t0, planeCount: chunk, w: w, stride: stride, n: n, rows: rows, rowBytes: rowBytes,
                                        sc: sc, ze: ze, groups: groups, lg: lg, oneGroup: oneGroup, d: d, out: out)
                t0 += chunk
            }
            c0 += e
        }
        guard whole < d else { return }
        for j in 0..<n {
            let row = rows + j * rowBytes
            for c in whole..<d {
                var x = F.element(row, c)
                if F.bits != 0 { x = ze[j * groups + c / g] + sc[j * groups + c / g] * x }
                for r in 0..<T.rows { out[r * d + c] += w[r * stride + j] * x }
            }
        }
    }

    static func portableAccumulate<F: PortableRowFormat>(_ f: F.Type, groupSize g: Int, w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                                        n: Int, rows: UnsafeRawPointer, rowBytes: Int, codeBytes: Int, groups: Int,
                                                        d: Int, out: UnsafeMutablePointer<Float>, work: UnsafeMutablePointer<Float>) {
        // Every token's scales and zeros as floats, once for all rows: four groups per 16-byte load.
        let sc = work, ze = work + n * groups
        if F.bits != 0 {
            for j in 0..<n {
                let row = rows + j * rowBytes
                var k = 0
                while k + 4 <= groups {
                    let pw = lanes(row, codeBytes + 4 * k)
                    UnsafeMutableRawPointer(sc + j * groups + k).storeBytes(of: halfLanesHigh(pw &<< 16), as: SIMD4<Float>.self)
                    UnsafeMutableRawPointer(ze + j * groups + k).storeBytes(of: halfLanesHigh(pw & 0xFFFF_0000), as: SIMD4<Float>.self)
                    k += 4
                }
                while k < groups {
                    sc[j * groups + k] = Float16Bits.halfToFloat(UInt16(littleEndian: row.loadUnaligned(fromByteOffset: codeBytes + 4 * k, as: UInt16.self)))
                    ze[j * groups + k] = Float16Bits.halfToFloat(UInt16(littleEndian: row.loadUnaligned(fromByteOffset: codeBytes + 4 * k + 2, as: UInt16.self)))
                    k += 1
                }
            }
        }
        var r = 0
        while r + 4 <= rowCount {
            portableAccumulateTile(f, PortableTile4.self, groupSize: g, w: w + r * stride, stride: stride, n: n, rows: rows, rowBytes: rowBytes,
                                   codeBytes: codeBytes, sc: sc, ze: ze, groups: groups, d: d, out: out + r * d)
            r += 4
        }
        let (wt, ot) = (w + r * stride, out + r * d)
        switch rowCount - r {
        case 3: portableAccumulateTile(f, PortableTile3.self, groupSize: g, w: wt, stride: stride, n: n, rows: rows, rowBytes: rowBytes, codeBytes: codeBytes, sc: sc, ze: ze, groups: groups, d: d, out: ot)
        case 2: portableAccumulateTile(f, PortableTile2.self, groupSize: g, w: wt, stride: stride, n: n, rows: rows, rowBytes: rowBytes, codeBytes: codeBytes, sc: sc, ze: ze, groups: groups, d: d, out: ot)
        case 1: portableAccumulateTile(f, PortableTile1.self, groupSize: g, w: wt, stride: stride, n: n, rows: rows, rowBytes: rowBytes, codeBytes: codeBytes, sc: sc, ze: ze, groups: groups, d: d, out: ot)
        default: break
        }
    }

    /// Floats of `work` that `accumulate` needs for `tokenCount` rows of `codec`: every token's
    /// scales and zeros (2·tokenCount·groupCount; 0 for FP16).
    public static func accumulateWorkCount(_ codec: RowCodec, tokenCount: Int) -> Int {
        codec.format == .fp16 ? 0 : 2 * tokenCount * codec.groupCount
    }

    /// The Swift path of `accumulate`: bit-identical to `accumulateReference(…, fused: false)`.
    /// Grouped rows whose groups do not hold whole lanes (INT2 with a group size that is not a
    /// multiple of 16, below the head dim) take that reference itself.
    static func accumulatePortable(_ codec: RowCodec, weights w: UnsafePointer<Float>, rowCount: Int, stride: Int,
                                   rows: UnsafeRawPointer, tokenCount n: Int, into out: UnsafeMutablePointer<Float>,
                                   work: UnsafeMutablePointer<Float>) {
        let d = codec.headDim, rb = codec.rowByteCount, cb = codec.codeByteCount, groups = codec.groupCount
        #if _endian(little)
        switch codec.format {
        case .fp16:
            return portableAccumulate(PortableFP16.self, groupSize: d, w: w, rowCount: rowCount, stride: stride, n: n, rows: rows, rowBytes: rb,
                                      codeBytes: 0, groups: 1, d: d, out: out, work: work)
        case .grouped(.int8, let g):
            return portableAccumulate(PortableInt8.self, groupSize: g, w: w, rowCount: rowCount, stride: stride, n: n, rows: rows, rowBytes: rb,
                                      codeBytes: cb, groups: groups, d: d, out: out, work: work)
        case .grouped(.int4, let g):
            return portableAccumulate(PortableInt4.self, groupSize: g, w: w, rowCount: rowCount, stride: stride, n: n, rows: rows, rowBytes: rb,
                                      codeBytes: cb, groups: groups, d: d, out: out, work: work)
        case .grouped(.int2, let g) where g % 16 == 0 || g >= d:
            return portableAccumulate(PortableInt2.self, groupSize: g, w: w, rowCount: rowCount, stride: stride, n: n, rows: rows, rowBytes: rb,
                                      codeBytes: cb, groups: groups, d: d, out: out, work: work)
        default:
            break
        }
        #endif
        accumulateReference(codec, weights: w, rowCount: rowCount, stride: stride, rows: rows, tokenCount: n, into: out, fused: false)
    }

    // MARK: Softmax

    /// Four lanes of `expUnfusedReference`, bit for bit: the rounding of n by adding and removing
    /// M = 1.5·2²³ (exact, ties to even, for |x·log₂e| < 2²²; n + M then has n in its low mantissa
    /// bits), and 2ⁿ as one product, or for n < −126 (a subnormal result) as an exact product by
    /// 2ⁿ⁺⁶⁴ and one rounding by 2⁻⁶⁴. x < −103, −∞ and NaN give 0.
    @inline(__always)
    static func exp4Unfused(_ x0: SIMD4<Float>) -> SIMD4<Float> {
        // live: x ≥ −103 (false for NaN), as an all-ones lane mask.
        let live = unsafeBitCast(SIMD4<Int32>(repeating: 0).replacing(with: -1, where: x0 .>= -103), to: SIMD4<UInt32>.self)
        let x = x0.replacing(with: -103, where: x0 .< -103 .| x0 .!= x0)
        let magic = SIMD4<Float>(repeating: 0x1.8p23)
        let shifted = x * 1.44269504088896341 + magic
        let n = shifted - magic
        var r = x - n * 0.693359375
        r = r - n * -2.12194440e-4
        var p = SIMD4<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let y = (r + p * (r * r)) + 1
        let ni = unsafeBitCast(shifted, to: SIMD4<Int32>.self) &- unsafeBitCast(magic, to: SIMD4<Int32>.self)
        let tiny = ni .< -126
        let e = ni &+ SIMD4<Int32>(repeating: 127).replacing(with: 127 + 64, where: tiny)
        let scaled = (y * unsafeBitCast(e &<< 23, to: SIMD4<Float>.self)) * SIMD4<Float>(repeating: 1).replacing(with: 0x1p-64, where: tiny)
        return unsafeBitCast(unsafeBitCast(scaled, to: SIMD4<UInt32>.self) & live, to: SIMD4<Float>.self)
    }

    /// The Swift path of `softmaxPage`: bit-identical to `softmaxPageReference(…, fusedExp: false)`
    /// but for l (4-lane partial sums).
    static func softmaxPagePortable(_ s: UnsafeMutablePointer<Float>, rowCount: Int, tokenCount n: Int, stride: Int,
                                    m: UnsafeMutablePointer<Float>, l: UnsafeMutablePointer<Float>,
                                    out: UnsafeMutablePointer<Float>, headDim d: Int) {
        let whole = n / 4 * 4
        for r in 0..<rowCount {
            let sr = s + r * stride, raw = UnsafeMutableRawPointer(sr)
            var mx = SIMD4<Float>(repeating: -.infinity)
            var j = 0
            while j < whole {
                let v = floats(raw, j)
                mx.replace(with: v, where: v .> mx)
                j += 4
            }
            var pm = Swift.max(Swift.max(mx[0], mx[1]), Swift.max(mx[2], mx[3]))
            for k in whole..<n { pm = Swift.max(pm, sr[k]) }
            guard pm > -.infinity else {
                sr.update(repeating: 0, count: n)
                continue
            }
            let nm = Swift.max(m[r], pm)
            let c = exp4Unfused(SIMD4(repeating: m[r] - nm))[0]
            if c != 1 {
                l[r] *= c
                let o = UnsafeMutableRawPointer(out + r * d)
                var i = 0
                while i + 4 <= d { o.storeBytes(of: floats(o, i) * c, toByteOffset: 4 * i, as: SIMD4<Float>.self); i += 4 }
                while i < d { out[r * d + i] *= c; i += 1 }
            }
            var sum = SIMD4<Float>()
            j = 0
            while j < whole {
                let e = exp4Unfused(floats(raw, j) - nm)
                raw.storeBytes(of: e, toByteOffset: 4 * j, as: SIMD4<Float>.self)
                sum += e
                j += 4
            }
            var t = total(sum)
            if whole < n {
                // The tail, padded with −∞ (whose exp is 0).
                var x = SIMD4<Float>(repeating: -.infinity)
                for k in whole..<n { x[k - whole] = sr[k] - nm }
                let e = exp4Unfused(x)
                for k in whole..<n { sr[k] = e[k - whole]; t += e[k - whole] }
            }
            l[r] += t
            m[r] = nm
        }
    }
}
