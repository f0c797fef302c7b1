import Foundation
import Testing
import TestSupport
@testable import KVQuantization

private let lloydMaxWidths: [CodeWidth] = [.int2, .int3, .int4]

/// One Lloyd–Max row with everything the properties look at.
private struct LMRow {
    let codec: RowCodec
    let width: CodeWidth
    let x: [Float]
    let row: [UInt8]
    let decoded: [Float]

    init(_ codec: RowCodec, _ width: CodeWidth, _ x: [Float]) throws {
        self.codec = codec
        self.width = width
        self.x = x
        row = try codec.encode(x)
        decoded = codec.decode(row)
    }

    var norm: Float { row.withUnsafeBytes { codec.norm(of: $0.baseAddress!) } }
    func code(_ i: Int) -> Int { row.withUnsafeBytes { codec.code(at: i, in: $0.baseAddress!) } }
    func bound(_ i: Int) -> Float { LloydMaxLevels.errorBound(code: code(i), norm: norm, headDim: x.count, width: width) }
}

@Suite struct LloydMaxCodecTests {
    /// Runs `body` on `perShape` rows of every family for every width and head dim.
    private func sweep(perShape: Int, base: UInt64, _ body: (LMRow, inout SeededGenerator, String) throws -> Void) throws {
        var shapeIndex: UInt64 = 0
        for w in lloydMaxWidths {
            for d in propertyHeadDims {
                let codec = try RowCodec(.lloydMax(w), headDim: d)
                for family in RowFamily.allCases {
                    shapeIndex += 1
                    try forEachSeededCase(perShape, base: base &+ shapeIndex) { g in
                        let x = family.row(d, using: &g)
                        try body(try LMRow(codec, w, x), &g, "seed \(g.seed) lm\(w.bits) headDim \(d) family \(family)")
                    }
                }
            }
        }
    }

    /// The tables are the Lloyd–Max fixed point for N(0, 1): symmetric, each threshold the midpoint
    /// of its levels, each level the conditional mean of its cell (exact Gaussian integrals in FP64),
    /// and the mean squared errors the documented ones.
    @Test func levelsAreTheLloydMaxFixedPoint() {
        func phi(_ x: Double) -> Double { x.isInfinite ? 0 : exp(-x * x / 2) / (2 * Double.pi).squareRoot() }
        func cdf(_ x: Double) -> Double { x == -.infinity ? 0 : x == .infinity ? 1 : 0.5 * erfc(-x / 2.0.squareRoot()) }
        let documentedMSE: [CodeWidth: Double] = [.int2: 0.1175, .int3: 0.03455, .int4: 0.009501]
        for w in lloydMaxWidths {
            let l = LloydMaxLevels.levels(w).map(Double.init), t = LloydMaxLevels.thresholds(w).map(Double.init)
            #expect(l.count == 1 << w.bits && t.count == l.count - 1)
            for k in l.indices {
                #expect(l[k] == -l[l.count - 1 - k], "lm\(w.bits): level \(k) not symmetric")
                if k > 0 { #expect(l[k] > l[k - 1]) }
            }
            for k in t.indices { #expect(abs(t[k] - (l[k] + l[k + 1]) / 2) <= 1e-7, "lm\(w.bits) threshold \(k)") }
            var mse = 0.0
            for k in l.indices {
                let a = k == 0 ? -Double.infinity : t[k - 1], b = k == l.count - 1 ? Double.infinity : t[k]
                let p = cdf(b) - cdf(a), mean = (phi(a) - phi(b)) / p
                #expect(abs(mean - l[k]) <= 2e-6, "lm\(w.bits) level \(k): \(l[k]) but the cell's mean is \(mean)")
                // E[(Z − L)² | cell]·P = ∫(z² − 2Lz + L²)φ = [Φ − zφ] − 2L[−φ] + L²[Φ] over the cell.
                let second = p - ((b.isInfinite ? 0 : b * phi(b)) - (a.isInfinite ? 0 : a * phi(a)))
                mse += second - 2 * l[k] * (phi(a) - phi(b)) + l[k] * l[k] * p
            }
            #expect(abs(mse - documentedMSE[w]!) <= 2e-5, "lm\(w.bits): MSE \(mse)")
        }
    }

    /// Every element within `LloydMaxLevels.errorBound` of its code and the stored norm; elements
    /// inside the outer levels within the inner half gaps (the usual case), attained to within a
    /// factor of about two there.
    @Test func perElementErrorWithinBound() throws {
        var worst: Float = 0
        try sweep(perShape: 4, base: 3100) { e, _, context in
            let d = e.x.count, n = e.norm
            let levels = LloydMaxLevels.levels(e.width), thresholds = LloydMaxLevels.thresholds(e.width)
            for i in 0..<d {
                let err = abs(e.x[i] - e.decoded[i]), b = e.bound(i)
                #expect(err <= b, "\(context) element \(i): |\(e.x[i]) − \(e.decoded[i])| = \(err) > \(b)")
                guard n > 0, abs(e.x[i] / n) <= levels.last! else { continue }
                // Inside: the half gap of the cell's nearer side … the farther, and the FP32 terms.
                let c = e.code(i)
                let lo = c == 0 ? Double(levels[0]) : Double(thresholds[c - 1]), hi = c == levels.count - 1 ? Double(levels.last!) : Double(thresholds[c])
                let h = max(Double(levels[c]) - lo, hi - Double(levels[c]))
                let inner = Float(Double(n) * (h + 0x1p-24 * (1.0001 * Double(d).squareRoot() + Double(abs(levels[c])))))
                #expect(err <= inner.nextUp, "\(context) element \(i): inside the levels, \(err) > \(inner)")
                if inner > 0 { worst = max(worst, err / inner) }
            }
            // The norm is the RMS rounded up (or the clamp at 65504, which is at least max|x|).
            let rms = (e.x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(d)).squareRoot()
            #expect(Double(n) >= rms || (n == 65504 && e.x.allSatisfy { abs($0) <= 65504 }), "\(context): norm \(n) below the RMS \(rms)")
            #expect(Double(n) <= max(rms * (1 + 0x1p-10) * (1 + 0x1p-30), rms + 0x1p-24), "\(context): norm \(n) above the rounded-up RMS \(rms)")
        }
        #expect(worst > 0.5, "the inner bound is not attained: \(worst)")
    }

    @Test func fastKernelsEqualTheirReferences() throws {
        try sweep(perShape: 3, base: 3200) { e, g, context in
            var refRow = [UInt8](repeating: 0xAA, count: e.codec.rowByteCount)
            try e.x.withUnsafeBufferPointer { xp in
                try refRow.withUnsafeMutableBytes { try e.codec.encodeReference(xp.baseAddress!, into: $0.baseAddress!) }
            }
            #expect(firstDifference(refRow, e.row) == nil, "\(context): encode differs at byte \(firstDifference(refRow, e.row) ?? -1)")
            var refDecoded = [Float](repeating: .nan, count: e.x.count)
            e.row.withUnsafeBytes { rp in refDecoded.withUnsafeMutableBufferPointer { e.codec.decodeReference(rp.baseAddress!, into: $0.baseAddress!) } }
            #expect(firstDifference(refDecoded, e.decoded) == nil, "\(context): decode differs at \(firstDifference(refDecoded, e.decoded) ?? -1)")
            // Accumulate bit for bit; dots within the reordering bound of the exact dot with x̂.
            let w = Float(g.nextGaussian()), start = (0..<e.x.count).map { _ in Float(g.nextGaussian()) }
            var fast = start, ref = start
            let q = (0..<e.x.count).map { _ in Float(g.nextGaussian()) }
            var exact = 0.0
            for i in q.indices { exact += Double(q[i]) * Double(e.decoded[i]) }
            e.row.withUnsafeBytes { rp in
                fast.withUnsafeMutableBufferPointer { e.codec.accumulate(w, rp.baseAddress!, into: $0.baseAddress!) }
                ref.withUnsafeMutableBufferPointer { e.codec.accumulateReference(w, rp.baseAddress!, into: $0.baseAddress!) }
                q.withUnsafeBufferPointer { qp in
                    let bound = e.codec.dotErrorBound(qp.baseAddress!, rp.baseAddress!)
                    let f = e.codec.dot(qp.baseAddress!, rp.baseAddress!), r = e.codec.dotReference(qp.baseAddress!, rp.baseAddress!)
                    #expect(abs(Double(f) - exact) <= bound, "\(context): fast dot \(f) vs exact \(exact), bound \(bound)")
                    #expect(abs(Double(r) - exact) <= bound, "\(context): reference dot \(r) vs exact \(exact), bound \(bound)")
                }
            }
            #expect(firstDifference(fast, ref) == nil, "\(context): accumulate differs at \(firstDifference(fast, ref) ?? -1)")
        }
    }

    /// A vector of zeros is exact (+0 everywhere); a constant vector decodes to one value.
    @Test func zerosAndConstants() throws {
        for w in lloydMaxWidths {
            for d in propertyHeadDims {
                let codec = try RowCodec(.lloydMax(w), headDim: d)
                let zeros = [Float](repeating: 0, count: d)
                let y = codec.decode(try codec.encode(zeros))
                #expect(y.allSatisfy { $0.bitPattern == 0 }, "lm\(w.bits) d \(d): zeros decode to \(y)")
                let c = codec.decode(try codec.encode([Float](repeating: -3.5, count: d)))
                #expect(Set(c).count == 1 && c[0] < 0, "lm\(w.bits) d \(d): a constant row decodes to \(Set(c))")
            }
        }
    }

    /// On Gaussian rows the relative error is the Lloyd–Max one (0.343, 0.186, 0.0975 at 2, 3, 4
    /// bits), and with a few outlier channels it is far worse unrotated than rotated: what the
    /// rotation is for.
    @Test func gaussianErrorAndTheRotationsEffect() throws {
        let expected: [CodeWidth: Double] = [.int2: 0.343, .int3: 0.186, .int4: 0.0975]
        let d = 128
        let rotation = HadamardRotation(dimension: d, seed: 7)!
        for w in lloydMaxWidths {
            let codec = try RowCodec(.lloydMax(w), headDim: d)
            var num = 0.0, den = 0.0, plainOutlier = 0.0, rotatedOutlier = 0.0, outlierDen = 0.0
            try forEachSeededCase(200, base: 3300) { g in
                let x = RowFamily.gaussian.row(d, using: &g)
                let y = codec.decode(try codec.encode(x))
                for i in 0..<d { num += Double(x[i] - y[i]) * Double(x[i] - y[i]); den += Double(x[i]) * Double(x[i]) }
                let o = RowFamily.outlierChannels.row(d, using: &g)
                let p = codec.decode(try codec.encode(o))
                let r = rotation.unrotated(codec.decode(try codec.encode(rotation.rotated(o))))
                for i in 0..<d {
                    plainOutlier += Double(o[i] - p[i]) * Double(o[i] - p[i])
                    rotatedOutlier += Double(o[i] - r[i]) * Double(o[i] - r[i])
                    outlierDen += Double(o[i]) * Double(o[i])
                }
            }
            let rel = (num / den).squareRoot()
            #expect(abs(rel - expected[w]!) <= 0.1 * expected[w]!, "lm\(w.bits): Gaussian relative error \(rel)")
            let plain = (plainOutlier / outlierDen).squareRoot(), rotated = (rotatedOutlier / outlierDen).squareRoot()
            #expect(rotated < 0.6 * plain, "lm\(w.bits) outlier channels: rotated \(rotated) vs unrotated \(plain)")
        }
    }

    @Test func rejectsUnstorableValuesAndEightBits() throws {
        #expect(throws: FormatError.unsupportedWidth(.lloydMax(.int8))) { try RowCodec(.lloydMax(.int8), headDim: 64) }
        for w in lloydMaxWidths {
            let codec = try RowCodec(.lloydMax(w), headDim: 9)
            for bad in [Float.nan, .infinity, 65520] {
                var x = [Float](repeating: 1, count: 9)
                x[4] = bad
                x[8] = .nan
                do { _ = try codec.encode(x); Issue.record("lm\(w.bits): \(bad) accepted") } catch { #expect(error.index == 4) }
            }
        }
        #expect(StorageFormat.lloydMax(.int3).rowByteCount(headDim: 64) == 26)
        #expect(StorageFormat.lloydMax(.int3).bytesPerElement(headDim: 64) * 8 == 3.25)
        #expect(StorageFormat.lloydMax(.int4).rowByteCount(headDim: 7) == 4 + 2)
        #expect(StorageFormat.grouped(.int3, groupSize: 32).rowByteCount(headDim: 64) == 24 + 8)
        #expect(StorageFormat.channelwise(.int3).pageByteCount(headDim: 64, pageCapacity: 32) == 32 * 24 + 256)
    }
}
