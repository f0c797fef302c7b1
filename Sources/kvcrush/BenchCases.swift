import Foundation
import KVCrush

/// One benchmarked layer: a store holding `tokens` random tokens of one shape at FP16 (and the
/// same tokens in FP32 for the baseline loop), the cases timed on it, and the side costs measured
/// on the MHA layer.
struct BenchLayer {
    struct Shape {
        let name: String, kvHeads: Int, group: Int, headDim: Int
    }
    /// mha-8x128 has the KV heads of gqa-8x4x128 with one query head each: the same cache, so GQA
    /// costs what its KV heads cost when the two take the same time.
    static let shapes = [Shape(name: "mha-32x128", kvHeads: 32, group: 1, headDim: 128),
                         Shape(name: "mha-8x128", kvHeads: 8, group: 1, headDim: 128),
                         Shape(name: "gqa-8x4x128", kvHeads: 8, group: 4, headDim: 128),
                         Shape(name: "smollm2-3x3x64", kvHeads: 3, group: 3, headDim: 64)]

    /// The run's fixed settings.
    struct Settings {
        var threadCounts: [Int], tierNames: [String], seconds: Double, quick: Bool, llcBytes: Int
        /// The store's tier formats and rotation (`--formats`, `--rotate`; default the standard formats, no rotation).
        var tierFormats = TierFormats.standard, rotation = RotationSettings.none
        /// Tiers with mixed-width keys at these average bits (`--formats int4=mix3.5/channel:…`): each
        /// shape gets a seeded synthetic allocation (speed depends on the segments' sizes, not on which
        /// channels they hold).
        var mixedKeys = [Tier: Double]()
        var minReps: Int { quick ? 3 : 7 }
        var maxReps: Int { quick ? 10 : 100_000 }
        var rounds: Int { quick ? 1 : 5 }
    }

    let shape: Shape
    let tokens: Int
    let settings: Settings
    let config: KVStoreConfiguration
    let store: KVStore
    /// The FP16 sequence every tier forks from.
    let sequence: SequenceID
    /// The tokens in FP32, `[kvHead][token][headDim]` (also the baseline loop's cache).
    let keys: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>
    /// One decode query per query head.
    let queries: [Float]
    /// Prefill append throughput (token positions per second).
    private(set) var prefillRate = 0.0

    /// Builds the layer: random tokens appended in 1,024-token chunks (timed).
    init(shape: Shape, tokens n: Int, settings: Settings) throws {
        self.shape = shape
        self.tokens = n
        self.settings = settings
        let kv = shape.kvHeads, d = shape.headDim, qh = kv * shape.group
        var formats = settings.tierFormats
        for (tier, bits) in settings.mixedKeys.sorted(by: { $0.key < $1.key }) {
            // Channel importance spread over four decades, as RoPE'd keys' outlier channels are.
            var u = [Float](repeating: 0, count: kv * d)
            u.withUnsafeMutableBufferPointer { BenchHarness.fillRandom($0.baseAddress!, kv * d, seed: 5) }
            let importance = (0..<kv).map { h in (0..<d).map { c in pow(10, 2 * (Double(u[h * d + c]) + 1)) } }
            let ones = [[Double]](repeating: [Double](repeating: 1, count: d), count: kv)
            guard (bits * Double(d) / 8).rounded() == bits * Double(d) / 8 else {
                throw UsageError(message: "--formats: mix\(bits)/channel is not a whole number of bytes at head dim \(d) (\(shape.name))", command: "bench")
            }
            formats.keys[tier] = .mixedChannelwise(ChannelWidths.allocate(ranges: ones, weights: importance, rowByteCount: Int(bits * Double(d) / 8)))
        }
        config = KVStoreConfiguration(layerCount: 1, queryHeadCount: qh, kvHeadCount: kv, headDim: d, tierFormats: formats,
                                      rotation: settings.rotation)
        store = try KVStore(config)
        sequence = store.addSequence()
        keys = UnsafeMutablePointer<Float>.allocate(capacity: kv * n * d)
        values = UnsafeMutablePointer<Float>.allocate(capacity: kv * n * d)
        BenchHarness.fillRandom(keys, kv * n * d, seed: 2)
        BenchHarness.fillRandom(values, kv * n * d, seed: 3)
        let chunk = 1024
        let chunkK = UnsafeMutablePointer<Float>.allocate(capacity: kv * chunk * d), chunkV = UnsafeMutablePointer<Float>.allocate(capacity: kv * chunk * d)
        defer { chunkK.deallocate(); chunkV.deallocate() }
        let t0 = BenchHarness.now()
        var done = 0
        while done < n {
            let c = min(chunk, n - done)
            for h in 0..<kv {
                (chunkK + h * c * d).update(from: keys + (h * n + done) * d, count: c * d)
                (chunkV + h * c * d).update(from: values + (h * n + done) * d, count: c * d)
            }
            try store.append(sequence, layer: 0, keys: UnsafeBufferPointer(start: chunkK, count: kv * c * d).span,
                             values: UnsafeBufferPointer(start: chunkV, count: kv * c * d).span)
            done += c
        }
        prefillRate = Double(n) / ((BenchHarness.now() - t0) / 1000)
        var q = [Float](repeating: 0, count: qh * d)
        q.withUnsafeMutableBufferPointer { BenchHarness.fillRandom($0.baseAddress!, qh * d, seed: 4) }
        queries = q
    }

    func deallocate() {
        keys.deallocate()
        values.deallocate()
    }

    /// The tiers' sequences, each a fork of the FP16 one (pages shared until moved): `mix` (10% of
    /// the tokens at FP16, 30% at INT4, the rest dropped, chosen at random), `fp16`, `int8`, `int4`, `int2`;
    /// and the quantisation throughput of the uniform tiers (token positions per second).
    func tierSequences() throws -> (sequences: [(tier: String, id: SequenceID)], quantizeRates: [String: Double]) {
        let n = tokens, kv = shape.kvHeads
        var sequences: [(tier: String, id: SequenceID)] = []
        var rates = [String: Double]()
        if settings.tierNames.contains("mix") {
            let mixed = store.fork(sequence)
            try store.apply(mixPlan(), to: mixed)
            sequences.append(("mix", mixed))
        }
        if settings.tierNames.contains("fp16") { sequences.append(("fp16", sequence)) }
        for (name, tier) in [("int8", Tier.int8), ("int4", Tier.int4), ("int2", Tier.int2)] where settings.tierNames.contains(name) {
            let quantised = store.fork(sequence)
            let t0 = BenchHarness.now()
            try store.apply(.uniform(tier, positions: 0..<Int32(n), layerCount: 1, kvHeadCount: kv), to: quantised)
            rates["quantizeTo" + name.capitalized] = Double(n) / ((BenchHarness.now() - t0) / 1000)
            sequences.append((name, quantised))
        }
        return (sequences, rates)
    }

    /// The `mix` plan: 10% of the tokens stay at FP16, 30% go to INT4, the rest are dropped, chosen
    /// at random (the same for every KV head).
    func mixPlan() -> RetentionPlan {
        var rng = SplitMix64(seed: 5)
        let mixTiers: [Tier] = (0..<tokens).map { _ in
            let u = Double(rng.next() >> 11) * 0x1p-53
            return u < 0.1 ? .fp16 : u < 0.4 ? .int4 : .dropped
        }
        return RetentionPlan(streams: (0..<shape.kvHeads).map { h in
            StreamPlan(layer: 0, kvHead: h, moves: (0..<Int32(tokens)).compactMap { p in
                mixTiers[Int(p)] == .fp16 ? nil : StreamPlan.Move(position: p, tier: mixTiers[Int(p)])
            })
        })
    }

    /// Times one decode `attend` of every tier sequence and the FP32 loop, per thread count, in
    /// interleaved rounds: every case gets a slice of its time in each round, in a rotating order,
    /// so a burst of noise from other tenants of a shared host spreads over the cases instead of
    /// ruining one. Memory-sized cases pair each step with a bandwidth probe read right after it;
    /// their ratio is the median of the per-step ratios (noise that slows both cancels).
    func measure(_ sequences: [(tier: String, id: SequenceID)], probe: BenchHarness.Probe) -> [BenchReport.Case] {
        struct Slot {
            var tier: String, id: SequenceID?, threads: Int, bytes: Int
            var samples: [Double] = [], ratios: [Double] = [], probes: [Double] = []
        }
        let n = tokens, d = shape.headDim, qh = shape.kvHeads * shape.group, seconds = settings.seconds
        let out = UnsafeMutablePointer<Float>.allocate(capacity: qh * d)
        defer { out.deallocate() }
        var slots = [Slot]()
        for t in settings.threadCounts { slots.append(Slot(tier: "fp32", id: nil, threads: t, bytes: 0)) }
        for (tier, seq) in sequences {
            for t in settings.threadCounts { slots.append(Slot(tier: tier, id: seq, threads: t, bytes: store.byteCount(of: seq))) }
        }
        let rounds = settings.rounds
        func step(_ slot: Slot) {
            if let seq = slot.id {
                _ = store.attend(seq, layer: 0, queries: queries, threadCount: slot.threads)
            } else {
                queries.withUnsafeBufferPointer { q in
                    BenchHarness.fp32Attention(q: q.baseAddress!, k: keys, v: values, out: out, queryHeads: qh, group: shape.group,
                                               tokens: n, d: d, threads: slot.threads)
                }
            }
        }
        for slot in slots { step(slot) }  // warm-up
        for round in 0..<rounds {
            for offset in slots.indices {
                let i = (offset + round * 3) % slots.count
                let paired = slots[i].id != nil && slots[i].bytes > settings.llcBytes
                let start = BenchHarness.now()
                var reps = 0
                while reps < (settings.minReps + rounds - 1) / rounds
                        || (slots[i].samples.count < settings.maxReps
                            && BenchHarness.now() - start < (paired ? 2 : 1) * seconds * 1000 / Double(rounds)) {
                    let t0 = BenchHarness.now()
                    step(slots[i])
                    let a = BenchHarness.now() - t0
                    slots[i].samples.append(a)
                    if paired {
                        let p = probe.bandwidth(threads: slots[i].threads, reps: 1)
                        slots[i].probes.append(p)
                        slots[i].ratios.append(a / (Double(slots[i].bytes) / (p * 1e6)))
                    }
                    reps += 1
                }
            }
        }
        var fp32 = [Int: Double]()
        for slot in slots where slot.id == nil { fp32[slot.threads] = BenchHarness.Timing(slot.samples).median }
        var cases = [BenchReport.Case]()
        for slot in slots where slot.id != nil {
            let ms = BenchHarness.Timing(slot.samples), inLLC = slot.bytes <= settings.llcBytes
            let caseBW = inLLC ? probe.startGBs[slot.threads]! : BenchHarness.Timing(slot.probes).median
            let ratio = inLLC ? ms.median / (Double(slot.bytes) / (caseBW * 1e6)) : BenchHarness.Timing(slot.ratios).median
            cases.append(BenchReport.Case(shape: shape.name, tokens: n, threads: slot.threads, tier: slot.tier, ms: ms, cacheBytes: slot.bytes,
                                          effectiveGBs: Double(slot.bytes) / (ms.median * 1e6), boundRatio: ratio,
                                          speedupVsFP32: fp32[slot.threads]! / ms.median, inLLC: inLLC, bandwidthGBs: caseBW))
        }
        return cases
    }

    /// The write path on this layer, each case timed from a fresh fork of its source sequence (the
    /// fork's removal is not timed): `apply` of FP16 → INT8, INT4 and INT2 (all tokens), INT8 → INT4
    /// (per-channel key pages decoded and quantised again), dropping every other FP16 token
    /// (compaction), and the `mix` plan; and the prefill append of the whole layer in 1,024-token
    /// chunks into a fresh store. Each against the time to read the source bytes and write the
    /// result's at `bandwidthGBs` (one thread: `apply` and `append` run on the caller's thread).
    func writeCases(bandwidthGBs: Double) throws -> [BenchReport.WriteCase] {
        let n = tokens, kv = shape.kvHeads, d = shape.headDim, reps = settings.quick ? 2 : 5
        var cases = [BenchReport.WriteCase]()
        func timeApply(_ name: String, from source: SequenceID, _ plan: RetentionPlan) throws {
            var samples = [Double](), resultBytes = 0
            for _ in 0..<reps {
                let target = store.fork(source)
                let t0 = BenchHarness.now()
                try store.apply(plan, to: target)
                samples.append(BenchHarness.now() - t0)
                resultBytes = store.byteCount(of: target)
                store.removeSequence(target)
            }
            let sourceBytes = store.byteCount(of: source), ms = BenchHarness.Timing(samples)
            cases.append(BenchReport.WriteCase(name: name, operation: "apply", ms: ms, sourceBytes: sourceBytes, resultBytes: resultBytes,
                                               tokens: n, boundRatio: ms.median / (Double(sourceBytes + resultBytes) / (bandwidthGBs * 1e6))))
        }
        let all = 0..<Int32(n)
        for tier in [Tier.int8, .int4, .int2] {
            try timeApply(tier.description, from: sequence, .uniform(tier, positions: all, layerCount: 1, kvHeadCount: kv))
        }
        let int8 = store.fork(sequence)
        try store.apply(.uniform(.int8, positions: all, layerCount: 1, kvHeadCount: kv), to: int8)
        try timeApply("int8→int4", from: int8, .uniform(.int4, positions: all, layerCount: 1, kvHeadCount: kv))
        store.removeSequence(int8)
        try timeApply("drop-half", from: sequence, RetentionPlan(streams: (0..<kv).map { h in
            StreamPlan(layer: 0, kvHead: h, moves: stride(from: Int32(1), to: Int32(n), by: 2).map { .init(position: $0, tier: .dropped) })
        }))
        try timeApply("mix", from: sequence, mixPlan())
        // Prefill append: K and V floats read, FP16 pages written.
        var samples = [Double](), pageBytes = 0
        let chunk = 1024
        let chunkK = UnsafeMutablePointer<Float>.allocate(capacity: kv * chunk * d), chunkV = UnsafeMutablePointer<Float>.allocate(capacity: kv * chunk * d)
        defer { chunkK.deallocate(); chunkV.deallocate() }
        for _ in 0..<reps {
            let fresh = try KVStore(config)
            let id = fresh.addSequence()
            var elapsed = 0.0, done = 0
            while done < n {
                let c = min(chunk, n - done)
                for h in 0..<kv {
                    (chunkK + h * c * d).update(from: keys + (h * n + done) * d, count: c * d)
                    (chunkV + h * c * d).update(from: values + (h * n + done) * d, count: c * d)
                }
                let t0 = BenchHarness.now()
                try fresh.append(id, layer: 0, keys: UnsafeBufferPointer(start: chunkK, count: kv * c * d).span,
                                 values: UnsafeBufferPointer(start: chunkV, count: kv * c * d).span)
                elapsed += BenchHarness.now() - t0
                done += c
            }
            samples.append(elapsed)
            pageBytes = fresh.byteCount
        }
        let floatBytes = 2 * kv * n * d * 4, ms = BenchHarness.Timing(samples)
        cases.append(BenchReport.WriteCase(name: "prefill", operation: "append", ms: ms, sourceBytes: floatBytes, resultBytes: pageBytes,
                                           tokens: n, boundRatio: ms.median / (Double(floatBytes + pageBytes) / (bandwidthGBs * 1e6))))
        return cases
    }

    /// The side costs on this layer: decode append (one token at a time on a fresh store), the
    /// layer's prefill attention (estimated from a 64-query chunk over all tokens), and KVCrush
    /// planning (signatures, anchor, selection of 10% of the tokens) over one layer's scores.
    func sideCosts() throws -> BenchReport.SideCosts {
        let n = tokens, kv = shape.kvHeads, d = shape.headDim, qh = kv * shape.group, quick = settings.quick
        var side = BenchReport.SideCosts()
        side.tokens = n
        let s2 = try KVStore(config)
        let id2 = s2.addSequence()
        let steps = quick ? 256 : 2048
        let t1 = BenchHarness.now()
        for i in 0..<steps {
            let k = UnsafeBufferPointer(start: keys + (i % n) * d, count: kv * d), v = UnsafeBufferPointer(start: values + (i % n) * d, count: kv * d)
            try s2.append(id2, layer: 0, keys: k.span, values: v.span)
        }
        side.rates["decode"] = Double(steps) / ((BenchHarness.now() - t1) / 1000)
        let chunkQueries = 64
        var pq = [Float](repeating: 0, count: qh * chunkQueries * d)
        pq.withUnsafeMutableBufferPointer { BenchHarness.fillRandom($0.baseAddress!, $0.count, seed: 6) }
        let positions = [Int32](repeating: Int32(n - 1), count: chunkQueries)
        let tc = BenchHarness.time(seconds: settings.seconds, minReps: quick ? 1 : 3, maxReps: quick ? 2 : 10) {
            _ = store.attend(sequence, layer: 0, queries: pq, queryCount: chunkQueries, queryPositions: positions,
                             threadCount: settings.threadCounts.max()!)
        }
        side.prefillAttentionMs = tc.median * Double(n) / Double(2 * chunkQueries)
        var srng = SplitMix64(seed: 7)
        let scores = ImportanceScores(headCount: qh, tokenCount: n, values: (0..<(qh * n)).map { _ in Float(srng.next() >> 40) * 0x1p-24 })
        let kept = Array(stride(from: 0, to: n, by: 5))
        let selector = KVCrushSelector()
        side.planMs = BenchHarness.time(seconds: settings.seconds, minReps: quick ? 1 : 3, maxReps: quick ? 3 : 20) {
            _ = selector.selectTokens(middleScores: scores, hostKept: kept, count: n / 10)
        }.median
        return side
    }
}

