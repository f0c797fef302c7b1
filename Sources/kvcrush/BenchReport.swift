import Foundation
import KVCrush

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

    var bandwidthGBs: [Int: Double]
    var probeBytes: Int
    var llcBytes: Int
    var threadCounts: [Int]
    var cases: [Case] = []
    var side = SideCosts()

    func json() -> String {
        func num(_ x: Double) -> String { x.isFinite ? String(format: "%.6g", x) : "null" }
        let bwText = threadCounts.map { "\"\($0)\": \(num(bandwidthGBs[$0]!))" }.joined(separator: ", ")
        let caseText = cases.map { c in
            "{\"shape\": \"\(c.shape)\", \"tokens\": \(c.tokens), \"threads\": \(c.threads), \"tier\": \"\(c.tier)\", \"msMedian\": \(num(c.ms.median)), \"msMin\": \(num(c.ms.min)), \"msMax\": \(num(c.ms.max)), \"cacheBytes\": \(c.cacheBytes), \"effectiveGBs\": \(num(c.effectiveGBs)), \"boundRatio\": \(num(c.boundRatio)), \"speedupVsFP32\": \(num(c.speedupVsFP32)), \"bandwidthGBs\": \(num(c.bandwidthGBs)), \"memory\": \"\(c.inLLC ? "llc" : "dram")\"}"
        }.joined(separator: ",\n    ")
        let rateText = side.rates.keys.sorted().map { "\"\($0)\": \(num(side.rates[$0]!))" }.joined(separator: ", ")
        return "{\"kernels\": \"\(KernelPath.current)\", \"bandwidthGBs\": {\(bwText)}, \"llcBytes\": \(llcBytes), \"cases\": [\n    \(caseText)\n  ],\n  \"kvcrushPlanMs\": \(num(side.planMs)), \"prefillAttentionMs\": \(num(side.prefillAttentionMs)), \"appendTokensPerSecond\": {\(rateText)}}\n"
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
        return s
    }
}
