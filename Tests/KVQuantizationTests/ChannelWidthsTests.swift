import Foundation
import Testing
import TestSupport
import KVExperiments
@testable import KVQuantization

/// `ChannelWidths`: the greedy allocation (budget, monotonicity, edge budgets, determinism), the
/// byte arithmetic and names, and on the real SmolLM2 dump that the allocation beats uniform
/// per-channel INT4 keys at the same bytes.
@Suite struct ChannelWidthsTests {
    /// The predicted error the allocation minimises for one head: Σ_c w_c·(r_c/(2^b_c − 1))².
    static func predictedError(_ head: [CodeWidth], ranges r: [Double], weights w: [Double]) -> Double {
        head.indices.reduce(0) { sum, c in sum + w[c] * pow(r[c] / Double(head[c].maxCode), 2) }
    }

    /// Random per-head ranges and weights: log-uniform spreads, some zeros, some ties, an outlier.
    static func randomInputs(heads: Int, d: Int, using g: inout SeededGenerator) -> (ranges: [[Double]], weights: [[Double]]) {
        var ranges = [[Double]](), weights = [[Double]]()
        for _ in 0..<heads {
            var r = (0..<d).map { _ in pow(10, Double.random(in: -2...1, using: &g)) }
            var w = (0..<d).map { _ in pow(10, Double.random(in: -3...1, using: &g)) }
            for c in 0..<d where Int.random(in: 0..<8, using: &g) == 0 { if Bool.random(using: &g) { r[c] = 0 } else { w[c] = 0 } }
            if Bool.random(using: &g) { r[Int.random(in: 0..<d, using: &g)] = 300 }
            if Bool.random(using: &g), d > 1 { r[1] = r[0]; w[1] = w[0] }  // a tie
            ranges.append(r)
            weights.append(w)
        }
        return (ranges, weights)
    }

    static let ladder: [CodeWidth] = [.int2, .int3, .int4, .int8]

    @Test func allocationRespectsTheBudgetOfEveryHead() {
        forEachSeededCase(150, base: 12_100) { g in
            let granularity = [1, 8, 4, 16].randomElement(using: &g)!
            let d = granularity * Int.random(in: 1...(granularity == 1 ? 40 : 128 / granularity), using: &g)
            let heads = Int.random(in: 1...4, using: &g)
            var candidates = Self.ladder.filter { _ in Bool.random(using: &g) }
            if candidates.isEmpty { candidates = [Self.ladder.randomElement(using: &g)!] }
            candidates.shuffle(using: &g)
            let narrowest = candidates.min { $0.bits < $1.bits }!, widest = candidates.max { $0.bits < $1.bits }!
            let lo = narrowest.packedByteCount(codes: d), hi = widest.packedByteCount(codes: d)
            let budget = Int.random(in: lo...(hi + 3), using: &g)
            let (r, w) = Self.randomInputs(heads: heads, d: d, using: &g)
            let a = ChannelWidths.allocate(ranges: r, weights: w, rowByteCount: budget, candidates: candidates, granularity: granularity)
            let context = "seed \(g.seed) d \(d) heads \(heads) g \(granularity) candidates \(candidates) budget \(budget)"
            #expect(a.rowByteCount == budget && a.kvHeadCount == heads && a.headDim == d, "\(context)")
            for (h, head) in a.widths.enumerated() {
                #expect(ChannelWidths.segmentByteCount(head) <= budget, "\(context) head \(h): \(ChannelWidths.segmentByteCount(head)) bytes")
                #expect(head.allSatisfy(candidates.contains), "\(context) head \(h): a width outside the candidates")
                // Units of `granularity` channels: every width's channel count is a multiple of it.
                for wd in CodeWidth.allCases { #expect(head.filter { $0 == wd }.count % granularity == 0, "\(context) head \(h) \(wd)") }
                // The greedy stops only when no unit can take its next width: at unit granularity,
                // no channel below the widest candidate can be raised one step within the budget.
                if granularity == 1 {
                    let sorted = candidates.sorted { $0.bits < $1.bits }
                    for c in 0..<d {
                        guard let l = sorted.firstIndex(of: head[c]), l + 1 < sorted.count else { continue }
                        var raised = head
                        raised[c] = sorted[l + 1]
                        #expect(ChannelWidths.segmentByteCount(raised) > budget, "\(context) head \(h) channel \(c): \(head[c]) could be raised")
                    }
                }
            }
        }
    }

    /// More important channels (weight·range²) never get fewer bits, at unit granularity and in
    /// units of 8 (units are runs of adjacent importance, and their importances are monotone too).
    @Test func moreImportantChannelsNeverGetFewerBits() {
        forEachSeededCase(120, base: 12_200) { g in
            let granularity = Bool.random(using: &g) ? 1 : 8
            let d = granularity == 1 ? Int.random(in: 1...48, using: &g) : 8 * Int.random(in: 1...16, using: &g)
            let budget = Int.random(in: (d * 2 + 7) / 8...d, using: &g)
            let (r, w) = Self.randomInputs(heads: 2, d: d, using: &g)
            let a = ChannelWidths.allocate(ranges: r, weights: w, rowByteCount: budget, granularity: granularity)
            for h in 0..<2 {
                let importance = (0..<d).map { w[h][$0] * r[h][$0] * r[h][$0] }
                for i in 0..<d {
                    for j in 0..<d where importance[i] > importance[j] {
                        #expect(a.widths[h][i].bits >= a.widths[h][j].bits,
                                "seed \(g.seed) d \(d) g \(granularity) budget \(budget) head \(h): channel \(i) (\(importance[i])) has \(a.widths[h][i]), channel \(j) (\(importance[j])) \(a.widths[h][j])")
                    }
                }
            }
        }
    }

    /// Zero weights or zero ranges predict no error whatever the widths: the allocation is still
    /// valid, within budget and deterministic.
    @Test func allZeroWeightsAndRanges() {
        for d in [8, 64, 24] {
            for budget in [d / 4, d / 2, 3 * d / 8 + 1, d] {
                for (r, w) in [(0.0, 1.0), (1.0, 0.0), (0.0, 0.0)] {
                    let ranges = [[Double](repeating: r, count: d)], weights = [[Double](repeating: w, count: d)]
                    let a = ChannelWidths.allocate(ranges: ranges, weights: weights, rowByteCount: budget)
                    let b = ChannelWidths.allocate(ranges: ranges, weights: weights, rowByteCount: budget)
                    #expect(a == b && ChannelWidths.segmentByteCount(a.widths[0]) <= budget, "d \(d) budget \(budget) r \(r) w \(w)")
                    #expect(Self.predictedError(a.widths[0], ranges: ranges[0], weights: weights[0]) == 0)
                }
            }
        }
    }

    @Test func edgeBudgets() {
        var g = SeededGenerator(seed: 12_300)
        for d in [8, 16, 64, 128] {
            let (r, w) = Self.randomInputs(heads: 3, d: d, using: &g)
            // Exactly the narrowest codes: nothing can be raised.
            let narrow = ChannelWidths.allocate(ranges: r, weights: w, rowByteCount: d / 4)
            #expect(narrow.widths.allSatisfy { $0.allSatisfy { $0 == .int2 } } && narrow.averageBits == 2, "d \(d): all INT2")
            // Room for INT8 everywhere: everything ends at INT8 (the greedy climbs every step).
            let wide = ChannelWidths.allocate(ranges: r, weights: w, rowByteCount: d)
            #expect(wide.widths.allSatisfy { $0.allSatisfy { $0 == .int8 } } && wide.averageBits == 8, "d \(d): all INT8")
            // More room than that changes nothing but the padding.
            let padded = ChannelWidths.allocate(ranges: r, weights: w, rowByteCount: d + 5)
            #expect(padded.widths == wide.widths && padded.rowByteCount == d + 5)
            // One candidate: every channel takes it.
            let only4 = ChannelWidths.allocate(ranges: r, weights: w, rowByteCount: d / 2, candidates: [.int4])
            #expect(only4.widths.allSatisfy { $0.allSatisfy { $0 == .int4 } })
            // Two candidates far apart: a unit of 8 channels going from INT2 to INT8 costs 6 bytes, so
            // a budget of k such steps above all-INT2 (plus 5 bytes too few for another) gives
            // exactly 8k INT8 channels.
            let k = min(2, d / 8)
            let split = ChannelWidths.allocate(ranges: r, weights: w, rowByteCount: d / 4 + 6 * k + (k < d / 8 ? 5 : 0), candidates: [.int8, .int2])
            for head in split.widths {
                #expect(head.allSatisfy { $0 == .int2 || $0 == .int8 } && head.filter { $0 == .int8 }.count == 8 * k, "d \(d): \(head)")
            }
        }
    }

    /// The same inputs give the same widths; heads are allocated independently (permuting the heads
    /// permutes the result).
    @Test func deterministicAndPerHead() {
        forEachSeededCase(30, base: 12_400) { g in
            let d = 8 * Int.random(in: 1...16, using: &g), heads = Int.random(in: 2...4, using: &g)
            let budget = Int.random(in: d / 4...d, using: &g)
            let (r, w) = Self.randomInputs(heads: heads, d: d, using: &g)
            let a = ChannelWidths.allocate(ranges: r, weights: w, rowByteCount: budget)
            #expect(a == ChannelWidths.allocate(ranges: r, weights: w, rowByteCount: budget), "seed \(g.seed)")
            let p = (0..<heads).shuffled(using: &g)
            let b = ChannelWidths.allocate(ranges: p.map { r[$0] }, weights: p.map { w[$0] }, rowByteCount: budget)
            #expect(b.widths == p.map { a.widths[$0] }, "seed \(g.seed): heads are not independent")
            for h in 0..<heads {
                let alone = ChannelWidths.allocate(ranges: [r[h]], weights: [w[h]], rowByteCount: budget)
                #expect(alone.widths[0] == a.widths[h], "seed \(g.seed) head \(h)")
            }
        }
    }

    @Test func segmentBytesAverageBitsAndNames() throws {
        // 2 INT8 (2 B) + 0 INT4 + 5 INT3 (⌈15/8⌉ = 2 B) + 3 INT2 (⌈6/8⌉ = 1 B).
        let head: [CodeWidth] = [.int3, .int8, .int2, .int3, .int3, .int8, .int2, .int3, .int2, .int3]
        #expect(ChannelWidths.segmentByteCount(head) == 5)
        #expect(ChannelWidths.segmentByteCount([CodeWidth](repeating: .int4, count: 64)) == 32)
        #expect(ChannelWidths.segmentByteCount([CodeWidth](repeating: .int3, count: 64)) == 24)
        #expect(ChannelWidths.segmentByteCount([.int4]) == 1 && ChannelWidths.segmentByteCount([.int8]) == 1)
        #expect(ChannelWidths.segmentOrder == [.int8, .int4, .int3, .int2])
        // rowByteCount defaults to the largest head's segments.
        let two = ChannelWidths(widths: [head, [CodeWidth](repeating: .int2, count: 10)])
        #expect(two.rowByteCount == 5 && two.headDim == 10 && two.kvHeadCount == 2 && two.averageBits == 4)
        // 3.5 bits: 8 INT8 + 24 INT4 + 32 INT3 = 8 + 12 + 12 = 32 bytes at d 64 is 4; 28 bytes is 3.5.
        let mix = [CodeWidth](repeating: .int8, count: 8) + [CodeWidth](repeating: .int4, count: 24) + [CodeWidth](repeating: .int3, count: 32)
        #expect(ChannelWidths.segmentByteCount(mix) == 32)
        #expect(ChannelWidths(widths: [mix]).description == "mix4/channel")
        let m35 = ChannelWidths(widths: [[CodeWidth](repeating: .int3, count: 32) + [CodeWidth](repeating: .int4, count: 32)])
        #expect(m35.rowByteCount == 28 && m35.averageBits == 3.5 && m35.description == "mix3.5/channel")
        #expect(ChannelWidths(widths: [[CodeWidth](repeating: .int2, count: 64)], rowByteCount: 18).description == "mix2.25/channel")
        #expect(ChannelWidths(widths: [[.int4, .int4, .int3]], rowByteCount: 2).description == "mix5.33/channel")
        // The storage format around it.
        let f = StorageFormat.mixedChannelwise(m35)
        #expect(f.description == "mix3.5/channel" && StorageFormat(name: f.description) == nil)
        #expect(f.isPageWise && f.bitsPerCode == 4 && f.codeWidth == .int4)
        #expect(f.rowByteCount(headDim: 64) == 28 && f.pageParameterByteCount(headDim: 64) == 256)
        #expect(f.pageByteCount(headDim: 64, pageCapacity: 64) == 64 * 28 + 256)
        #expect(throws: Never.self) { try f.validate(headDim: 64) }
        #expect(throws: FormatError.widthsDoNotMatch(f, headDim: 128)) { try f.validate(headDim: 128) }
        #expect(throws: FormatError.notRowWise(f)) { try RowCodec(f, headDim: 64) }
    }

    // MARK: Real data

    /// The dump the check reads: `$KVCRUSH_DATA` or `<repo>/../shared/data`, else the bundled F16
    /// fixture of the same tensors (layers 1, 15, 29).
    static let dumpURL: URL = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized
        let dir = ProcessInfo.processInfo.environment["KVCRUSH_DATA"].map { URL(fileURLWithPath: $0) }
            ?? root.appendingPathComponent("../shared/data").standardized
        let shared = dir.appendingPathComponent("smollm2-135m-heapq.safetensors")
        return FileManager.default.fileExists(atPath: shared.path) ? shared : KVDump.bundledFixtureURL
    }()

    /// At the bytes of `.channelwise(.int4)` (32 B per token at d 64, pages of 64), widths allocated
    /// from ranges and query energies measured on held-out data score real SmolLM2 keys with less
    /// error than uniform INT4: ranges (RMS over pages of each channel's range) from tokens
    /// 0..<1024, weights E[q_c²] from the even query positions of the head's query group; the error
    /// Σ (q·k̂ − q·k)² over the odd query positions and tokens 1024..<2048, per channel codes by
    /// the codecs themselves.
    @Test func beatsUniformINT4AtTheSameBytesOnRealKeys() throws {
        let dump = try KVDump(contentsOf: Self.dumpURL, layers: [1, 15, 29])
        let s = dump.shape, d = s.headDim, P = 64, calibration = 1024
        try #require(d == 64 && s.tokenCount >= 2 * calibration)
        let uniform = try ChannelwiseKeyCodec(.int4, headDim: d)
        for layer in dump.layers {
            var errUniform = 0.0, errMixed = 0.0, report = [String]()
            for kv in 0..<s.kvHeadCount {
                let keys = Array(layer.keys(kvHead: kv))
                var rangeSquares = [Double](repeating: 0, count: d)
                for p in stride(from: 0, to: calibration, by: P) {
                    for c in 0..<d {
                        let column = (p..<(p + P)).map { keys[$0 * d + c] }
                        rangeSquares[c] += pow(Double(column.max()! - column.min()!), 2) / Double(calibration / P)
                    }
                }
                var energy = [Double](repeating: 0, count: d), calibrationQueries = 0
                var evaluation = [Float]()
                for h in (kv * s.groupSize)..<((kv + 1) * s.groupSize) {
                    for i in 0..<s.queryCount {
                        let q = layer.query(head: h, position: s.queryStart + i)
                        if i % 2 == 0 {
                            for (c, v) in q.enumerated() { energy[c] += Double(v) * Double(v) }
                            calibrationQueries += 1
                        } else {
                            evaluation += q
                        }
                    }
                }
                let widths = ChannelWidths.allocate(ranges: [rangeSquares.map { $0.squareRoot() }],
                                                    weights: [energy.map { $0 / Double(calibrationQueries) }], rowByteCount: uniform.rowByteCount)
                let mixed = MixedChannelwiseKeyCodec(widths, kvHead: 0)
                #expect(mixed.rowByteCount == uniform.rowByteCount && StorageFormat.mixedChannelwise(widths).pageByteCount(headDim: d, pageCapacity: P)
                        == StorageFormat.channelwise(.int4).pageByteCount(headDim: d, pageCapacity: P))
                let evalKeys = Array(keys[(calibration * d)..<(s.tokenCount / P * P * d)]), n = evalKeys.count / d
                var a = [Float](repeating: 0, count: n * d), b = a
                var codes = [UInt8](repeating: 0, count: P * uniform.rowByteCount), params = [UInt8](repeating: 0, count: 4 * d)
                try evalKeys.withUnsafeBufferPointer { x in
                    try codes.withUnsafeMutableBytes { cp in
                        try params.withUnsafeMutableBytes { pp in
                            for p in stride(from: 0, to: n, by: P) {
                                try uniform.encodePage(x.baseAddress! + p * d, tokenCount: P, codes: cp.baseAddress!, params: pp.baseAddress!)
                                a.withUnsafeMutableBufferPointer {
                                    uniform.decodeRows(cp.baseAddress!, count: P, params: pp.baseAddress!, into: $0.baseAddress! + p * d)
                                }
                                try mixed.encodePage(x.baseAddress! + p * d, tokenCount: P, codes: cp.baseAddress!, params: pp.baseAddress!)
                                b.withUnsafeMutableBufferPointer {
                                    mixed.decodeRows(slot: 0, count: P, tokenCount: P, codes: cp.baseAddress!, params: pp.baseAddress!, into: $0.baseAddress! + p * d)
                                }
                            }
                        }
                    }
                }
                // Σ_q Σ_t (q·Δ_t)² = Σ_t Δ_tᵀ·C·Δ_t, C = Σ_q q·qᵀ over the evaluation queries.
                var gram = [Double](repeating: 0, count: d * d)
                for q in stride(from: 0, to: evaluation.count, by: d) {
                    for i in 0..<d { for j in 0..<d { gram[i * d + j] += Double(evaluation[q + i]) * Double(evaluation[q + j]) } }
                }
                func scoreError(_ decoded: [Float]) -> Double {
                    decoded.withUnsafeBufferPointer { y in
                        evalKeys.withUnsafeBufferPointer { x in
                            gram.withUnsafeBufferPointer { c in
                                var total = 0.0
                                var delta = [Double](repeating: 0, count: d)
                                for t in 0..<n {
                                    for i in 0..<d { delta[i] = Double(y[t * d + i]) - Double(x[t * d + i]) }
                                    for i in 0..<d {
                                        var row = 0.0
                                        for j in 0..<d { row += c[i * d + j] * delta[j] }
                                        total += delta[i] * row
                                    }
                                }
                                return total
                            }
                        }
                    }
                }
                let eu = scoreError(a), em = scoreError(b)
                errUniform += eu
                errMixed += em
                let counts = ChannelWidths.segmentOrder.map { w in "\(widths.widths[0].filter { $0 == w }.count)×\(w)" }.joined(separator: " ")
                report.append("kv \(kv) [\(counts)] \(String(format: "%.3f", em / eu))")
                // A head whose allocation is uniform INT4 encodes exactly as the uniform codec.
                if widths.widths[0].allSatisfy({ $0 == .int4 }) { #expect(a == b) } else { #expect(em < eu, "layer \(layer.index) kv \(kv)") }
            }
            print("ChannelWidthsTests: \(Self.dumpURL.lastPathComponent) layer \(layer.index): mixed/uniform score error \(String(format: "%.3f", errMixed / errUniform)) (\(report.joined(separator: ", ")))")
            #expect(errMixed < errUniform, "layer \(layer.index): mixed \(errMixed) vs uniform INT4 \(errUniform)")
        }
    }
}
