import Foundation
import KVCrush
import KVExperiments
import KVModel

/// `kvcrush bench`: decode read-path speed against the machine's memory bandwidth and a plain FP32
/// attention loop, KVCrush planning cost, and append/quantise throughput.
enum BenchCommand {
    static let subcommand = Subcommand(
        name: "bench",
        summary: "decode attention speed vs memory bandwidth and an FP32 loop; planning and append costs",
        help: """
            usage: kvcrush bench [--quick] [--json] [--tokens N,N] [--threads T,T] [--shapes S,S] [--tiers T,T] [--seconds S] [--json-file FILE]
                                 [--formats TIER=KEY:VALUE,…] [--rotate keys|values|keys+values]

            Builds a one-layer cache of random keys and values for each shape (mha-32x128: 32 KV heads
            × 128; mha-8x128: 8 KV heads × 128, the cache of gqa-8x4x128: 8 KV heads × 4 query heads
            × 128; smollm2-3x3x64) and token count
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
            to INT4, in token positions (all KV heads of the layer) per second. On the same layer, the
            write path (JSON "apply" and "append"): apply FP16 → INT8, INT4, INT2, INT8 → INT4, dropping
            every other token, and the mix plan, each from a fresh fork, and the prefill append into a
            fresh store: median ms and the ratio to the time to read the source bytes and write the
            result at the one-thread read bandwidth ("boundRatio").

            --quick    reduced run for CI smoke tests (1024 tokens, few repetitions)
            --json     one JSON object instead of the table
            --json-file  also write that JSON object to FILE
            --seconds  target time per case (default 0.4)
            --tiers    any of mix, fp16, int8, int4, int2 (default mix,fp16,int8,int4)

            \(StoreFormatOptions.help)
            """,
        run: run)

    static func run(_ args: inout CommandLineArguments) throws {
        let quick = args.flag("quick"), json = args.flag("json")
        let tokenCounts = try args.list("tokens", default: quick ? [1024] : [4096, 16384, 65536], expected: "positive token counts") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let threadCounts = try args.list("threads", default: [1, 2], expected: "positive thread counts") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let shapeNames = try args.list("shapes", default: BenchLayer.shapes.map(\.name), expected: "shape names") { n in BenchLayer.shapes.contains { $0.name == n } ? n : nil }
        let tierNames = try args.list("tiers", default: ["mix", "fp16", "int8", "int4"], expected: "mix, fp16, int8, int4, int2") { ["mix", "fp16", "int8", "int4", "int2"].contains($0) ? $0 : nil }
        let storeFormats = try StoreFormatOptions.parse(&args)
        let jsonFile = args.string("json-file")
        let seconds = try args.value("seconds", default: quick ? 0.05 : 0.4, expected: "seconds per case") { Double($0).flatMap { $0 > 0 ? $0 : nil } }
        try args.finish()
        let llc = BenchHarness.lastLevelCacheBytes()
        func log(_ s: String) { if !json { FileHandle.standardError.write(Data((s + "\n").utf8)) } }

        let probe = BenchHarness.Probe(llcBytes: llc, threadCounts: threadCounts, reps: quick ? 3 : 9)
        log("read bandwidth: " + threadCounts.map { "\($0) thread(s) \(String(format: "%.1f", probe.startGBs[$0]!)) GB/s" }.joined(separator: ", "))
        let settings = BenchLayer.Settings(threadCounts: threadCounts, tierNames: tierNames, seconds: seconds, quick: quick, llcBytes: llc,
                                           tierFormats: storeFormats.formats, rotation: storeFormats.rotation,
                                           mixedKeys: storeFormats.mixedKeys.compactMapValues(KeyChannelStatistics.mixedBits(named:)))
        var report = BenchReport(bandwidthGBs: probe.startGBs, probeBytes: probe.byteCount, llcBytes: llc, threadCounts: threadCounts)
        // The side costs (planning, append, quantisation) are measured on the MHA layer of 16k tokens
        // (or the largest count run).
        let sideAt = tokenCounts.contains(16384) ? 16384 : tokenCounts.max()!

        for shape in BenchLayer.shapes where shapeNames.contains(shape.name) {
            for n in tokenCounts {
                let layer = try BenchLayer(shape: shape, tokens: n, settings: settings)
                defer { layer.deallocate() }
                let isSideCase = shape.name == "mha-32x128" && n == sideAt
                let (sequences, quantizeRates) = try layer.tierSequences()
                let cases = layer.measure(sequences, probe: probe)
                for c in cases {
                    log(String(format: "%@ %6d tokens %d thr %-4@ %8.3f ms  ×%.2f bound", c.shape, c.tokens, c.threads, c.tier, c.ms.median, c.boundRatio))
                }
                report.cases += cases
                for (_, seq) in sequences where seq != layer.sequence { layer.store.removeSequence(seq) }
                if isSideCase {
                    report.side = try layer.sideCosts()
                    report.side.rates["prefill"] = layer.prefillRate
                    report.side.rates.merge(quantizeRates) { a, _ in a }
                    report.side.decodeMs = cases.first { $0.tier == "fp16" && $0.threads == threadCounts.max()! }?.ms.median ?? .nan
                    report.writeBandwidthGBs = probe.bandwidth(threads: 1, reps: quick ? 3 : 9)
                    report.writes = try layer.writeCases(bandwidthGBs: report.writeBandwidthGBs)
                    for w in report.writes {
                        log(String(format: "%@ %@ %8.2f ms  ×%.2f bound  %.0f tokens/s", w.operation, w.name, w.ms.median, w.boundRatio, w.tokensPerSecond))
                    }
                }
            }
        }
        let text = report.json()
        if let jsonFile { try Data(text.utf8).write(to: URL(fileURLWithPath: jsonFile), options: .atomic) }
        print(json ? text : report.table(), terminator: "")
    }
}
