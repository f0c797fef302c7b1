import KVQuantization

/// A caller's buffer of `heads × tokens` rows of `headDim` FP32 or FP16 values in a
/// `KVBufferLayout`, read in place: the one path under every `append` and `attend` form.
///
/// Valid only while the caller's buffer is lent (inside the public call that made it); threads
/// may share it because they only read it.
struct UnsafeCallerRows: @unchecked Sendable {
    enum Element { case float, half }

    let base: UnsafeRawPointer
    let element: Element
    let layout: KVBufferLayout
    let heads: Int, tokens: Int, headDim: Int

    init(_ values: UnsafeBufferPointer<Float>, layout: KVBufferLayout, heads: Int, tokens: Int, headDim: Int) {
        self.init(UnsafeRawPointer(values.baseAddress), .float, layout, heads, tokens, headDim)
    }

    init(_ values: UnsafeBufferPointer<Float16>, layout: KVBufferLayout, heads: Int, tokens: Int, headDim: Int) {
        self.init(UnsafeRawPointer(values.baseAddress), .half, layout, heads, tokens, headDim)
    }

    private init(_ base: UnsafeRawPointer?, _ element: Element, _ layout: KVBufferLayout, _ heads: Int, _ tokens: Int, _ headDim: Int) {
        // An empty buffer may have no address; nothing is then read.
        self.base = base ?? UnsafeRawPointer(bitPattern: MemoryLayout<Float>.alignment)!
        (self.element, self.layout, self.heads, self.tokens, self.headDim) = (element, layout, heads, tokens, headDim)
    }

    var count: Int { heads * tokens * headDim }
    var elementSize: Int { element == .float ? 4 : 2 }

    /// Row (`head`, `token`).
    @inline(__always)
    func row(head: Int, token: Int) -> UnsafeRawPointer {
        base + layout.rowOffset(head: head, token: token, heads: heads, tokens: tokens, headDim: headDim) * elementSize
    }

    /// Rows `rows` of heads `firstHead…` taken as one `[head][token]` sequence (row `r` is head
    /// `firstHead + r / tokens`, token `r % tokens`) as consecutive `headDim`-float rows: the
    /// caller's memory when it already is that order in FP32, else a copy gathered (FP16 widened)
    /// into `scratch` (`rows.count · headDim` floats; see `needsScratch`).
    func headMajorFloats(firstHead: Int, rows: Range<Int>, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
        let d = headDim
        if element == .float, layout.isHeadMajor(heads: heads, tokens: tokens) {
            return base.assumingMemoryBound(to: Float.self) + (firstHead * tokens + rows.lowerBound) * d
        }
        for r in rows {
            let source = row(head: firstHead + r / tokens, token: r % tokens), target = scratch + (r - rows.lowerBound) * d
            switch element {
            case .float: target.update(from: source.assumingMemoryBound(to: Float.self), count: d)
            case .half: EncodeKernels.halfToFloat(source, target, count: d)
            }
        }
        return UnsafePointer(scratch)
    }

    /// Σ|x| over row (`head`, `token`) in `Double`: infinite or NaN when an element is not finite.
    func l1Norm(head: Int, token: Int) -> Double {
        let r = row(head: head, token: token)
        var sum = 0.0
        switch element {
        case .float:
            let x = r.assumingMemoryBound(to: Float.self)
            for i in 0..<headDim { sum += Double(abs(x[i])) }
        case .half:
            let x = r.assumingMemoryBound(to: UInt16.self)
            // `halfToFloat` is exact for finite halves only: an all-ones exponent is ±inf or NaN.
            for i in 0..<headDim {
                if x[i] & 0x7C00 == 0x7C00 { return .infinity }
                sum += Double(abs(Float16Bits.halfToFloat(x[i])))
            }
        }
        return sum
    }

    /// Whether `headMajorFloats` needs its scratch.
    var needsScratch: Bool { !(element == .float && layout.isHeadMajor(heads: heads, tokens: tokens)) }

    /// The first value no format may store (non-finite; for FP32, also beyond ±65504) in the
    /// buffer's own order, as (head, token, element, error), or `nil`. O(count), vectorised.
    func firstUnstorable() -> (head: Int, token: Int, element: Int, error: QuantizationError)? {
        let found: QuantizationError?
        switch element {
        case .float: found = firstUnstorableValue(base.assumingMemoryBound(to: Float.self), count: count)
        case .half: found = Self.firstNonFinite(base.assumingMemoryBound(to: UInt16.self), count: count)
        }
        guard let found else { return nil }
        let r = found.index / headDim, e = found.index % headDim
        let (h, t) = layout == .headMajor ? (r / tokens, r % tokens) : (r % heads, r / heads)
        return (h, t, e, found.reindexed(e))
    }

    /// The first NaN or infinity among `count` FP16 bit patterns (every finite half is storable).
    static func firstNonFinite(_ x: UnsafePointer<UInt16>, count: Int) -> QuantizationError? {
        let raw = UnsafeRawPointer(x)
        var i = 0
        while i + 16 <= count {
            let v = raw.loadUnaligned(fromByteOffset: 2 * i, as: SIMD16<UInt16>.self)
            if any(v & 0x7C00 .== 0x7C00) { break }
            i += 16
        }
        while i < count {
            if x[i] & 0x7C00 == 0x7C00 { return .nonFinite(index: i, value: Float(Float16(bitPattern: x[i]))) }
            i += 1
        }
        return nil
    }

    /// Writes tokens `tokens` of `head` as consecutive FP16 rows at `out` (`2 · headDim` bytes each),
    /// exactly as `RowCodec.encodeRowsUnchecked` for `.fp16` does.
    ///
    /// - Precondition: every value is storable (`firstUnstorable() == nil`).
    func encodeFP16(head: Int, tokens range: Range<Int>, into out: UnsafeMutableRawPointer) {
        let d = headDim, rowBytes = 2 * d
        // Contiguous runs: the whole range when head-major, else one row at a time.
        let run = layout.isHeadMajor(heads: heads, tokens: tokens) ? range.count : 1
        var t = range.lowerBound
        while t < range.upperBound {
            let source = row(head: head, token: t), target = out + (t - range.lowerBound) * rowBytes
            switch element {
            case .float: EncodeKernels.floatToHalf(source.assumingMemoryBound(to: Float.self), target, count: run * d)
            // Stored rows are little-endian half bit patterns, as `Float16` is in memory on every
            // platform Swift targets here (x86_64, arm64).
            case .half: target.copyMemory(from: source, byteCount: run * rowBytes)
            }
            t += run
        }
    }
}

/// A caller's output buffer of `heads × tokens` FP32 rows in a `KVBufferLayout`, written in place.
struct UnsafeCallerOutput: @unchecked Sendable {
    let base: UnsafeMutablePointer<Float>
    let layout: KVBufferLayout
    let heads: Int, tokens: Int, headDim: Int

    /// Where `attend` writes rows `rows` of heads `firstHead…` (taken as one `[head][token]`
    /// sequence, as in `UnsafeCallerRows.headMajorFloats`) as consecutive rows: the caller's memory
    /// when it is that order, else `scratch` (`rows.count · headDim` floats), which `finish` then scatters.
    func headMajorRows(firstHead: Int, rows: Range<Int>, scratch: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        layout.isHeadMajor(heads: heads, tokens: tokens) ? base + (firstHead * tokens + rows.lowerBound) * headDim : scratch
    }

    var needsScratch: Bool { !layout.isHeadMajor(heads: heads, tokens: tokens) }

    /// Scatters rows written to `scratch` by `headMajorRows` into the caller's order.
    func finish(firstHead: Int, rows: Range<Int>, scratch: UnsafePointer<Float>) {
        guard needsScratch else { return }
        let d = headDim
        for r in rows {
            (base + layout.rowOffset(head: firstHead + r / tokens, token: r % tokens, heads: heads, tokens: tokens, headDim: d))
                .update(from: scratch + (r - rows.lowerBound) * d, count: d)
        }
    }
}
