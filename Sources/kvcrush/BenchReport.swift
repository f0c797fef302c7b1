import Foundation
import KVCrush
import KVQuantization

/// What one `kvcrush bench` run measured, and its two renderings (the JSON object and the table).
struct BenchReport {
    /// One timed decode step configuration.
    struct Case {
        var shape: String, tokens: Int, threads: Int, tier: String
        var ms: BenchHarness.Timing, cacheBytes: Int, effectiveGBs: Double, boundRatio: Double, speedupVsFP32: Double, inLLC: Bool
        /// The bandwidth the ratio is against: the median of the probes paired with the repetitions
        /// (memory cases), or the start-of-run probe (cache cases).
        var bandwidthGBs: Double
    }

    /// The costs measured once, on one layer of the MHA shape.
    struct SideCosts {
        /// KVCrush planning of one layer (signatures, anchor, selection), ms.
        var planMs = Double.nan
        /// The layer's prefill attention (estimated from a 64-query chunk), ms.
        var prefillAttentionMs = Double.nan
        /// One FP16 decode attend of the layer on the most threads, ms.
        var decodeMs = Double.nan
        /// Tokens of that layer.
        var tokens = 0
        /// Token positions (all KV heads) per second: prefill and decode append, quantisation.
        var rates: [String: Double] = [:]
    }

    /// One timed write-path operation on the side layer (`BenchLayer.writeCases`).
    struct WriteCase {
        /// `int8`, `int4`, `int2`, `int8→int4`, `drop-half`, `mix` (apply) or `prefill` (append).
        var name: String
        var operation: String
        var ms: BenchHarness.Timing
        /// Bytes read (the source sequence's pages, or the appended floats) and written (the result's pages).
        var sourceBytes: Int, resultBytes: Int
        var tokens: Int
        /// `ms` ÷ the time to read `sourceBytes` and write `resultBytes` at the one-thread read bandwidth.
        var boundRatio: Double
        /// Token positions (all KV heads) per second.
        var tokensPerSecond: Double { Double(tokens) / (ms.median / 1000) }
    }

    var bandwidthGBs: [Int: Double]
    var probeBytes: Int
    var llcBytes: Int
    var threadCounts: [Int]
    var cases: [Case] = []
    var side = SideCosts()
    var writes: [WriteCase] = []
    /// The bandwidth `writes` are against (one thread).
    var writeBandwidthGBs = Double.nan

    func json() -> String {
        func num(_ x: Double) -> String { x.isFinite ? String(format: "%.6g", x) : "null" }
        let bwText = threadCounts.map { "\"\($0)\": \(num(bandwidthGBs[$0]!))" }.joined(separator: ", ")
        let caseText = cases.map { c in
            "{\"shape\": \"\(c.shape)\", \"tokens\": \(c.tokens), \"threads\": \(c.threads), \"tier\": \"\(c.tier)\", \"msMedian\": \(num(c.ms.median)), \"msMin\": \(num(c.ms.min)), \"msMax\": \(num(c.ms.max)), \"cacheBytes\": \(c.cacheBytes), \"effectiveGBs\": \(num(c.effectiveGBs)), \"boundRatio\": \(num(c.boundRatio)), \"speedupVsFP32\": \(num(c.speedupVsFP32)), \"bandwidthGBs\": \(num(c.bandwidthGBs)), \"memory\": \"\(c.inLLC ? "llc" : "dram")\"}"
        }.joined(separator: ",\n    ")
        let rateText = side.rates.keys.sorted().map { "\"\($0)\": \(num(side.rates[$0]!))" }.joined(separator: ", ")
        func writeText(_ operation: String) -> String {
            writes.filter { $0.operation == operation }.map { w in
                "{\"\(operation == "apply" ? "tier" : "kind")\": \"\(w.name)\", \"tokens\": \(w.tokens), \"msMedian\": \(num(w.ms.median)), \"msMin\": \(num(w.ms.min)), \"msMax\": \(num(w.ms.max)), \"sourceBytes\": \(w.sourceBytes), \"resultBytes\": \(w.resultBytes), \"boundRatio\": \(num(w.boundRatio)), \"tokensPerSecond\": \(num(w.tokensPerSecond))}"
            }.joined(separator: ",\n    ")
        }
        return "{\"kernels\": \"\(KernelPath.current)\", \"encodeKernels\": \"\(EncodeKernels.current)\", \"bandwidthGBs\": {\(bwText)}, \"llcBytes\": \(llcBytes), \"cases\": [\n    \(caseText)\n  ],\n  \"kvcrushPlanMs\": \(num(side.planMs)), \"prefillAttentionMs\": \(num(side.prefillAttentionMs)), \"appendTokensPerSecond\": {\(rateText)},\n  \"writeBandwidthGBs\": \(num(writeBandwidthGBs)), \"apply\": [\n    \(writeText("apply"))\n  ],\n  \"append\": [\n    \(writeText("append"))\n  ]}\n"
    }

    func table() -> String {
        var s = "kvcrush bench — \(Date()), \(ProcessInfo.processInfo.activeProcessorCount) cores, last-level cache \(llcBytes >> 20) MiB"
        s += ", kernel path \(KernelSet.current)\n"
        s += "read bandwidth (multi-stream read of \(probeBytes >> 20) MiB): " + threadCounts.map { "\($0) thread(s) \(String(format: "%.1f", bandwidthGBs[$0]!)) GB/s" }.joined(separator: ", ") + "\n"
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
        s += "\nKVCrush planning, one layer of \(side.tokens) tokens (mha-32x128, 32 heads): \(String(format: "%.2f", side.planMs)) ms"
        s += String(format: " = %.2f decode attends (fp16, %d threads), %.4f%% of the layer's prefill attention (%.0f ms, estimated)\n",
                    side.planMs / side.decodeMs, threadCounts.max()!, 100 * side.planMs / side.prefillAttentionMs, side.prefillAttentionMs)
        s += "append/quantise throughput (token positions × all 32 KV heads per second): "
        s += side.rates.keys.sorted().map { "\($0) \(String(format: "%.0f", side.rates[$0]!))" }.joined(separator: ", ") + "\n"
        if !writes.isEmpty {
            s += "\nwrite path (encoders: \(EncodeKernels.current)), one layer of \(writes[0].tokens) tokens (mha-32x128), ×bound against reading the source and writing the result at \(String(format: "%.1f", writeBandwidthGBs)) GB/s (one thread):\n"
            s += "operation  case        ms median   [min – max]            source MiB  result MiB  ×bound   tokens/s\n"
            for w in writes {
                s += w.operation.padding(toLength: 11, withPad: " ", startingAt: 0) + w.name.padding(toLength: 10, withPad: " ", startingAt: 0)
                s += String(format: " %10.2f   [%8.2f – %8.2f] %11.1f %11.1f %7.2f %10.0f\n", w.ms.median, w.ms.min, w.ms.max,
                            Double(w.sourceBytes) / 1048576, Double(w.resultBytes) / 1048576, w.boundRatio, w.tokensPerSecond)
            }
        }
        return s
    }
}
