import Dispatch
import Foundation
import Synchronization
import KVCrush

/// `kvcrush bench`: decode read-path speed against the machine's memory bandwidth and a plain FP32
/// attention loop, KVCrush planning cost, and append/quantise throughput.
enum BenchCommand {
    static let subcommand = Subcommand(
        name: "bench",
        summary: "decode attention speed vs memory bandwidth and an FP32 loop; planning and append costs",
        help: """
            usage: kvcrush bench [--quick] [--json] [--tokens N,N] [--threads T,T] [--shapes S,S] [--tiers T,T] [--seconds S] [--json-file FILE]

            Builds a one-layer cache of random keys and values for each shape (mha-32x128: 32 KV heads
            × 128; gqa-8x4x128: 8 KV heads × 4 query heads × 128; smollm2-3x3x64) and token count
            (default 4096,16384,65536), with every token at FP16, INT8, INT4, or a mix (a compressed
            cache: 10% of the tokens at FP16, 30% at INT4, the rest dropped, chosen at random), default tier formats (per-channel keys, grouped values,
            32-token pages), and times one decode `attend` (one query per query head, all tokens
            visible) with 1 and 2 threads. Per case: median, min and max milliseconds per step, cache
            bytes (the layer's pages, including page-wise parameters, positions and slack), effective
            GB/s, the ratio to the time to read those bytes at the read bandwidth measured in the same
            run for that thread count (`boundRatio`), and the speed-up over a plain FP32 loop (SIMD
            dot, softmax, SIMD weighted sum; K/V re-read per query head) over the same tokens.
            Against noise on shared machines: the cases of one shape and token count (every tier and
            thread count, and the FP32 loop) are timed in 5 interleaved rounds; for memory-sized
            caches each timed step is followed by one bandwidth probe read and `boundRatio` is the
            median of the per-step ratios (the JSON's per-case `bandwidthGBs` is the median of those
            probes).

            Caches larger than the last-level cache (read from sysfs) give memory figures ("dram");
            smaller ones stay cached between steps ("llc"): those are cache figures.

            Also: KVCrush planning (per-head signatures, random anchor, selection of 10% of the
            tokens) for one layer of the MHA shape at 16384 tokens (or the largest count run), against
            one decode attend and against that layer's prefill attention (estimated from a 64-query
            chunk attending to all tokens: × tokens / 128); append throughput at decode (one token)
            and prefill (1024-token chunks), and quantisation (apply) throughput from FP16 to INT8 and
            to INT4, in token positions (all KV heads of the layer) per second.

            --quick    reduced run for CI smoke tests (1024 tokens, few repetitions)
            --json     one JSON object instead of the table
            --json-file  also write that JSON object to FILE
            --seconds  target time per case (default 0.4)
            """,
        run: run)

    struct Shape {
        let name: String, kvHeads: Int, group: Int, headDim: Int
    }
    static let shapes = [Shape(name: "mha-32x128", kvHeads: 32, group: 1, headDim: 128),
                         Shape(name: "gqa-8x4x128", kvHeads: 8, group: 4, headDim: 128),
                         Shape(name: "smollm2-3x3x64", kvHeads: 3, group: 3, headDim: 64)]

    struct Case {
        var shape: String, tokens: Int, threads: Int, tier: String
        var ms: Timing, cacheBytes: Int, effectiveGBs: Double, boundRatio: Double, speedupVsFP32: Double, inLLC: Bool
        /// The bandwidth the ratio is against: the median of the probes paired with the repetitions
        /// (memory cases), or the start-of-run probe (cache cases).
        var bandwidthGBs: Double
    }

    struct Timing {
        var median: Double, min: Double, max: Double
        init(_ samples: [Double]) {
            let s = samples.sorted()
            median = s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
            min = s.first!
            max = s.last!
        }
    }

    /// A pointer shared by threads that touch disjoint parts of it.
    struct Shared<T>: @unchecked Sendable { let p: UnsafeMutablePointer<T> }

    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e6 }

    /// Times `body` (milliseconds): one warm-up, then repetitions until `seconds` or `maxReps`.
    static func time(seconds: Double, minReps: Int, maxReps: Int, _ body: () -> Void) -> Timing {
        body()
        var samples = [Double]()
        let start = now()
        while samples.count < minReps || (samples.count < maxReps && now() - start < seconds * 1000) {
            let t0 = now()
            body()
            samples.append(now() - t0)
        }
        return Timing(samples)
    }

    static func lastLevelCacheBytes() -> Int {
        for index in (0...4).reversed() {
            let path = "/sys/devices/system/cpu/cpu0/cache/index\(index)/size"
            guard let s = try? String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
                  !s.isEmpty else { continue }
            let unit = s.last!, number = Int(s.dropLast()) ?? Int(s) ?? 0
            switch unit {
            case "K": return number << 10
            case "M": return number << 20
            default: return number
            }
        }
        return 32 << 20
    }

    /// Fills `n` floats with uniform values in [−1, 1) from a 64-bit LCG (fast, repeatable).
    static func fillRandom(_ p: UnsafeMutablePointer<Float>, _ n: Int, seed: UInt64) {
        var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        for i in 0..<n {
            x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            p[i] = Float(Int32(truncatingIfNeeded: x >> 32)) * 0x1p-31
        }
    }

    /// Median read bandwidth (GB/s) over a buffer of `byteCount` bytes split among `threads`.
    static func bandwidth(_ buffer: UnsafeMutablePointer<Float>, count: Int, threads: Int, reps: Int) -> Double {
        let shared = Shared(p: buffer), per = count / threads
        let sink = Shared(p: UnsafeMutablePointer<Double>.allocate(capacity: threads))
        defer { sink.p.deallocate() }
        let t = time(seconds: 0, minReps: reps, maxReps: reps) {
            DispatchQueue.concurrentPerform(iterations: threads) { i in
                sink.p[i] = PageKernels.readSum(shared.p + i * per, count: per)
            }
        }
        return Double(per * threads * 4) / (t.median * 1e6)
    }

    /// The FP32 loop a user would write: per query head, SIMD dot products with every key, max,
    /// exp, sum, then a SIMD weighted sum of the values. K and V are `[kvHead][token][d]`.
    static func fp32Attention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                              queryHeads: Int, group: Int, tokens n: Int, d: Int, threads: Int) {
        let qs = Shared(p: UnsafeMutablePointer(mutating: q)), ks = Shared(p: UnsafeMutablePointer(mutating: k))
        let vs = Shared(p: UnsafeMutablePointer(mutating: v)), os = Shared(p: out)
        let scale = 1 / Float(d).squareRoot()
        let next = Atomic<Int>(0)  // heads handed out as threads finish, as `attend` does
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: n)
            defer { scores.deallocate() }
            while true {
                let h = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard h < queryHeads else { break }
                let qh = UnsafeRawPointer(qs.p + h * d), kh = ks.p + (h / group) * n * d, vh = vs.p + (h / group) * n * d
                var m = -Float.infinity
                for j in 0..<n {
                    let kr = UnsafeRawPointer(kh + j * d)
                    var acc = SIMD16<Float>()
                    for i in stride(from: 0, to: d, by: 16) {
                        acc += qh.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self) * kr.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
                    }
                    scores[j] = acc.sum() * scale
                    m = max(m, scores[j])
                }
                var l: Float = 0
                for j in 0..<n { scores[j] = Foundation.exp(scores[j] - m); l += scores[j] }
                let o = UnsafeMutableRawPointer(os.p + h * d)
                for i in stride(from: 0, to: d, by: 16) { o.storeBytes(of: SIMD16<Float>(), toByteOffset: 4 * i, as: SIMD16<Float>.self) }
                for j in 0..<n {
                    let vr = UnsafeRawPointer(vh + j * d), w = scores[j] / l
                    for i in stride(from: 0, to: d, by: 16) {
                        let a = o.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
                        o.storeBytes(of: a + w * vr.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self), toByteOffset: 4 * i, as: SIMD16<Float>.self)
                    }
                }
            }
        }
    }

    static func run(_ args: inout CommandLineArguments) throws {
        let quick = args.flag("quick"), json = args.flag("json")
        let tokenCounts = try args.list("tokens", default: quick ? [1024] : [4096, 16384, 65536], expected: "positive token counts") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let threadCounts = try args.list("threads", default: [1, 2], expected: "positive thread counts") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let shapeNames = try args.list("shapes", default: shapes.map(\.name), expected: "shape names") { n in shapes.contains { $0.name == n } ? n : nil }
        let tierNames = try args.list("tiers", default: ["mix", "fp16", "int8", "int4"], expected: "mix, fp16, int8, int4") { ["mix", "fp16", "int8", "int4"].contains($0) ? $0 : nil }
        let jsonFile = args.string("json-file")
        let seconds = try args.value("seconds", default: quick ? 0.05 : 0.4, expected: "seconds per case") { Double($0).flatMap { $0 > 0 ? $0 : nil } }
        try args.finish()
        let minReps = quick ? 3 : 7, maxReps = quick ? 10 : 100_000
        let llc = lastLevelCacheBytes()
        func log(_ s: String) { if !json { FileHandle.standardError.write(Data((s + "\n").utf8)) } }

        // Read bandwidth: a buffer far larger than the LLC.
        // 256 MiB (8× this LLC): a 1 GiB probe read only ~14 GB/s on one thread here (against ~26 at
        // 256 MiB, and ~25 GB/s quoted in issue 6), so the smaller, harsher figure is the bound.
        let probeCount = max(256 << 20, 8 * llc) / 4
        let probe = UnsafeMutablePointer<Float>.allocate(capacity: probeCount)
        fillRandom(probe, probeCount, seed: 1)
        var bw = [Int: Double]()
        for t in threadCounts { bw[t] = bandwidth(probe, count: probeCount, threads: t, reps: quick ? 3 : 9) }
        defer { probe.deallocate() }
        log("read bandwidth: " + threadCounts.map { "\($0) thread(s) \(String(format: "%.1f", bw[$0]!)) GB/s" }.joined(separator: ", "))

        var cases = [Case]()
        var planMs = Double.nan, prefillMs = Double.nan, decodeMsForPlan = Double.nan, planTokens = 0
        var rates = [String: Double]()
        let planAt = tokenCounts.contains(16384) ? 16384 : tokenCounts.max()!

        for shape in shapes where shapeNames.contains(shape.name) {
            for n in tokenCounts {
                let kv = shape.kvHeads, d = shape.headDim, qh = kv * shape.group
                let config = KVStoreConfiguration(layerCount: 1, queryHeadCount: qh, kvHeadCount: kv, headDim: d)
                let store = try KVStore(config)
                let id = store.addSequence()
                // The tokens, FP32, [kvHead][token][d] (also the baseline's cache).
                let k = UnsafeMutablePointer<Float>.allocate(capacity: kv * n * d), v = UnsafeMutablePointer<Float>.allocate(capacity: kv * n * d)
                defer { k.deallocate(); v.deallocate() }
                fillRandom(k, kv * n * d, seed: 2)
                fillRandom(v, kv * n * d, seed: 3)
                let chunk = 1024
                let chunkK = UnsafeMutablePointer<Float>.allocate(capacity: kv * chunk * d), chunkV = UnsafeMutablePointer<Float>.allocate(capacity: kv * chunk * d)
                defer { chunkK.deallocate(); chunkV.deallocate() }
                let t0 = now()
                var done = 0
                while done < n {
                    let c = min(chunk, n - done)
                    for h in 0..<kv {
                        (chunkK + h * c * d).update(from: k + (h * n + done) * d, count: c * d)
                        (chunkV + h * c * d).update(from: v + (h * n + done) * d, count: c * d)
                    }
                    try store.append(id, layer: 0, keys: UnsafeBufferPointer(start: chunkK, count: kv * c * d),
                                     values: UnsafeBufferPointer(start: chunkV, count: kv * c * d), tokenCount: c)
                    done += c
                }
                if shape.name == "mha-32x128" && n == planAt { rates["prefill"] = Double(n) / ((now() - t0) / 1000) }
                var queries = [Float](repeating: 0, count: qh * d)
                queries.withUnsafeMutableBufferPointer { fillRandom($0.baseAddress!, qh * d, seed: 4) }
                let out = UnsafeMutablePointer<Float>.allocate(capacity: qh * d)
                defer { out.deallocate() }

                // Interleaved rounds: every (tier, threads) case and the FP32 loop per thread count get
                // a slice of their time in each of `rounds` rounds, in a rotating order, so a burst of
                // noise from other tenants of a shared host spreads over the cases instead of ruining
                // one. Memory-sized cases pair each step with a bandwidth probe read right after it;
                // their ratio is the median of the per-step ratios (noise that slows both cancels).
                func measureInterleaved(_ sequences: [(tier: String, id: SequenceID)]) {
                    struct Slot {
                        var tier: String, id: SequenceID?, threads: Int, bytes: Int
                        var samples: [Double] = [], ratios: [Double] = [], probes: [Double] = []
                    }
                    var slots = [Slot]()
                    for t in threadCounts { slots.append(Slot(tier: "fp32", id: nil, threads: t, bytes: 0)) }
                    for (tier, seq) in sequences {
                        for t in threadCounts { slots.append(Slot(tier: tier, id: seq, threads: t, bytes: store.byteCount(of: seq))) }
                    }
                    let rounds = quick ? 1 : 5
                    func step(_ slot: Slot) {
                        if let seq = slot.id {
                            _ = store.attend(seq, layer: 0, queries: queries, threadCount: slot.threads)
                        } else {
                            queries.withUnsafeBufferPointer { q in
                                fp32Attention(q: q.baseAddress!, k: k, v: v, out: out, queryHeads: qh, group: shape.group, tokens: n, d: d,
                                              threads: slot.threads)
                            }
                        }
                    }
                    for slot in slots { step(slot) }  // warm-up
                    for round in 0..<rounds {
                        for offset in slots.indices {
                            let i = (offset + round * 3) % slots.count
                            let paired = slots[i].id != nil && slots[i].bytes > llc
                            let start = now()
                            var reps = 0
                            while reps < (minReps + rounds - 1) / rounds
                                    || (slots[i].samples.count < maxReps && now() - start < (paired ? 2 : 1) * seconds * 1000 / Double(rounds)) {
                                let t0 = now()
                                step(slots[i])
                                let a = now() - t0
                                slots[i].samples.append(a)
                                if paired {
                                    let p = bandwidth(probe, count: probeCount, threads: slots[i].threads, reps: 1)
                                    slots[i].probes.append(p)
                                    slots[i].ratios.append(a / (Double(slots[i].bytes) / (p * 1e6)))
                                }
                                reps += 1
                            }
                        }
                    }
                    var fp32 = [Int: Double]()
                    for slot in slots where slot.id == nil { fp32[slot.threads] = Timing(slot.samples).median }
                    for slot in slots where slot.id != nil {
                        let ms = Timing(slot.samples), inLLC = slot.bytes <= llc
                        let caseBW = inLLC ? bw[slot.threads]! : Timing(slot.probes).median
                        let ratio = inLLC ? ms.median / (Double(slot.bytes) / (caseBW * 1e6)) : Timing(slot.ratios).median
                        cases.append(Case(shape: shape.name, tokens: n, threads: slot.threads, tier: slot.tier, ms: ms, cacheBytes: slot.bytes,
                                          effectiveGBs: Double(slot.bytes) / (ms.median * 1e6), boundRatio: ratio,
                                          speedupVsFP32: fp32[slot.threads]! / ms.median, inLLC: inLLC, bandwidthGBs: caseBW))
                        log(String(format: "%@ %6d tokens %d thr %-4@ %8.3f ms  ×%.2f bound", shape.name, n, slot.threads, slot.tier,
                                   ms.median, ratio))
                    }
                }
                func plan(_ tierOf: (Int32) -> Tier) -> RetentionPlan {
                    RetentionPlan(streams: (0..<kv).map { h in
                        StreamPlan(layer: 0, kvHead: h, moves: (0..<Int32(n)).compactMap { p in
                            let t = tierOf(p)
                            return t == .fp16 ? nil : StreamPlan.Move(position: p, tier: t)
                        })
                    })
                }
                // Every tier on its own fork of the FP16 sequence (pages shared until moved).
                var rng = SplitMix64(seed: 5)
                let mixTiers: [Tier] = (0..<n).map { _ in
                    let u = Double(rng.next() >> 11) * 0x1p-53
                    return u < 0.1 ? .fp16 : u < 0.4 ? .int4 : .dropped
                }
                var sequences: [(tier: String, id: SequenceID)] = []
                if tierNames.contains("mix") {
                    let mixed = store.fork(id)
                    try store.apply(plan { mixTiers[Int($0)] }, to: mixed)
                    sequences.append(("mix", mixed))
                }
                if tierNames.contains("fp16") { sequences.append(("fp16", id)) }
                for (name, tier) in [("int8", Tier.int8), ("int4", Tier.int4)] where tierNames.contains(name) {
                    let quantised = store.fork(id)
                    let t2 = now()
                    try store.apply(plan { _ in tier }, to: quantised)
                    if shape.name == "mha-32x128" && n == planAt { rates["quantizeTo" + name.capitalized] = Double(n) / ((now() - t2) / 1000) }
                    sequences.append((name, quantised))
                }
                measureInterleaved(sequences)
                for (_, seq) in sequences where seq != id { store.removeSequence(seq) }
                if shape.name == "mha-32x128" && n == planAt {
                    // Decode append: one token at a time on a fresh store.
                    let s2 = try KVStore(config)
                    let id2 = s2.addSequence()
                    let steps = quick ? 256 : 2048
                    let t1 = now()
                    for i in 0..<steps {
                        try s2.append(id2, layer: 0, keys: UnsafeBufferPointer(start: k + (i % n) * d, count: kv * d),
                                      values: UnsafeBufferPointer(start: v + (i % n) * d, count: kv * d), tokenCount: 1)
                    }
                    rates["decode"] = Double(steps) / ((now() - t1) / 1000)
                    // Prefill attention of this layer, estimated from a 64-query chunk over all tokens.
                    let chunkQueries = 64
                    var pq = [Float](repeating: 0, count: qh * chunkQueries * d)
                    pq.withUnsafeMutableBufferPointer { fillRandom($0.baseAddress!, $0.count, seed: 6) }
                    let positions = [Int32](repeating: Int32(n - 1), count: chunkQueries)
                    let tc = time(seconds: seconds, minReps: quick ? 1 : 3, maxReps: quick ? 2 : 10) {
                        _ = store.attend(id, layer: 0, queries: pq, queryCount: chunkQueries, queryPositions: positions,
                                         threadCount: threadCounts.max()!)
                    }
                    prefillMs = tc.median * Double(n) / Double(2 * chunkQueries)
                    // KVCrush planning: signatures + anchor + selection over one layer's scores.
                    var srng = SplitMix64(seed: 7)
                    let scores = ImportanceScores(headCount: qh, tokenCount: n,
                                                  values: (0..<(qh * n)).map { _ in Float(srng.next() >> 40) * 0x1p-24 })
                    let kept = Array(stride(from: 0, to: n, by: 5))
                    let selector = KVCrushSelector()
                    planMs = time(seconds: seconds, minReps: quick ? 1 : 3, maxReps: quick ? 3 : 20) {
                        _ = selector.selectTokens(middleScores: scores, hostKept: kept, count: n / 10)
                    }.median
                    planTokens = n
                }
                if shape.name == "mha-32x128" && n == planAt {
                    decodeMsForPlan = cases.first { $0.shape == shape.name && $0.tokens == n && $0.tier == "fp16" && $0.threads == threadCounts.max()! }?.ms.median ?? .nan
                }
            }
        }

        do {
            func num(_ x: Double) -> String { x.isFinite ? String(format: "%.6g", x) : "null" }
            let bwText = threadCounts.map { "\"\($0)\": \(num(bw[$0]!))" }.joined(separator: ", ")
            let caseText = cases.map { c in
                "{\"shape\": \"\(c.shape)\", \"tokens\": \(c.tokens), \"threads\": \(c.threads), \"tier\": \"\(c.tier)\", \"msMedian\": \(num(c.ms.median)), \"msMin\": \(num(c.ms.min)), \"msMax\": \(num(c.ms.max)), \"cacheBytes\": \(c.cacheBytes), \"effectiveGBs\": \(num(c.effectiveGBs)), \"boundRatio\": \(num(c.boundRatio)), \"speedupVsFP32\": \(num(c.speedupVsFP32)), \"bandwidthGBs\": \(num(c.bandwidthGBs)), \"memory\": \"\(c.inLLC ? "llc" : "dram")\"}"
            }.joined(separator: ",\n    ")
            let rateText = rates.keys.sorted().map { "\"\($0)\": \(num(rates[$0]!))" }.joined(separator: ", ")
            let text = "{\"kernels\": \"\(KernelPath.current)\", \"bandwidthGBs\": {\(bwText)}, \"llcBytes\": \(llc), \"cases\": [\n    \(caseText)\n  ],\n  \"kvcrushPlanMs\": \(num(planMs)), \"prefillAttentionMs\": \(num(prefillMs)), \"appendTokensPerSecond\": {\(rateText)}}\n"
            if let jsonFile { try Data(text.utf8).write(to: URL(fileURLWithPath: jsonFile), options: .atomic) }
            if json { print(text, terminator: ""); return }
        }
        var s = "kvcrush bench — \(Date()), \(ProcessInfo.processInfo.activeProcessorCount) cores, last-level cache \(llc >> 20) MiB"
        s += ", kernel path \(KernelSet.current)\n"
        s += "read bandwidth (multi-stream read of \((probeCount * 4) >> 20) MiB): " + threadCounts.map { "\($0) thread(s) \(String(format: "%.1f", bw[$0]!)) GB/s" }.joined(separator: ", ") + "\n"
        s += "mem: dram = cache larger than the LLC (memory figure); llc = fits in the LLC (cache figure)\n\n"
        s += "×bound: dram rows, median over repetitions of (step time ÷ time to read the cache at the bandwidth of a probe\n"
        s += "read right after that step; its median is the bw column); llc rows, against the start-of-run probe\n\n"
        s += "shape            tokens thr tier   ms median   [min – max]          cache MiB   GB/s  ×bound  ×FP32  mem   bw GB/s\n"
        s += String(repeating: "-", count: 114) + "\n"
        for c in cases {
            s += c.shape.padding(toLength: 16, withPad: " ", startingAt: 0)
            s += String(format: " %6d %3d %-5@ %10.3f   [%8.3f – %8.3f] %9.1f %6.1f %7.2f %6.2f  %-4@ %7.1f\n", c.tokens, c.threads, c.tier,
                        c.ms.median, c.ms.min, c.ms.max, Double(c.cacheBytes) / 1048576, c.effectiveGBs, c.boundRatio, c.speedupVsFP32,
                        c.inLLC ? "llc" : "dram", c.bandwidthGBs)
        }
        s += "\nKVCrush planning, one layer of \(planTokens) tokens (mha-32x128, 32 heads): \(String(format: "%.2f", planMs)) ms"
        s += String(format: " = %.2f decode attends (fp16, %d threads), %.4f%% of the layer's prefill attention (%.0f ms, estimated)\n",
                    planMs / decodeMsForPlan, threadCounts.max()!, 100 * planMs / prefillMs, prefillMs)
        s += "append/quantise throughput (token positions × all 32 KV heads per second): "
        s += rates.keys.sorted().map { "\($0) \(String(format: "%.0f", rates[$0]!))" }.joined(separator: ", ") + "\n"
        print(s, terminator: "")
    }
}
