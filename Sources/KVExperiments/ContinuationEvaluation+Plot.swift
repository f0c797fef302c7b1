import KVCompression

extension ContinuationEvaluation {
    /// The frontier of a `run`: mean KLD (top) and perplexity change (bottom) against the cache's
    /// actual bytes as a share of FP16 (log scales), one line per configuration across its budgets;
    /// the uniform formats form one reference line and the uncompressed reference is left out (KLD 0).
    /// Δppl ≤ 0 cannot sit on a log axis: such points are left out and counted in the caption.
    /// `references` (figures measured elsewhere, e.g. llama.cpp's quantised caches) are drawn as one
    /// more line per series name; their uncompressed rows (KLD 0) are left out.
    package static func plot(_ results: [Result], references: [ReferencePoint] = [], title: String) -> String {
        var order: [String] = []
        var kld: [String: [(x: Double, y: Double)]] = [:], ppl: [String: [(x: Double, y: Double)]] = [:]
        var nonPositive = 0
        for r in results where r.configuration.cachePolicy.action != .keep {
            let name = r.configuration.policy.description.hasPrefix("uniform-") ? "uniform INT8 / INT4 / INT2" : r.configuration.label
            if kld[name] == nil { order.append(name) }
            kld[name, default: []].append((x: r.ratio, y: r.meanKLDivergence))
            ppl[name, default: []].append((x: r.ratio, y: 100 * r.perplexityDelta))
            if r.perplexityDelta <= 0 { nonPositive += 1 }
        }
        for r in references where r.kld > 0 {
            if kld[r.series] == nil { order.append(r.series) }
            kld[r.series, default: []].append((x: r.ratio, y: r.kld))
            if r.perplexityDelta > 0 { ppl[r.series, default: []].append((x: r.ratio, y: 100 * r.perplexityDelta)) } else { nonPositive += 1 }
        }
        let x = "actual bytes of the compressed prompt cache / FP16 bytes (log)"
        let top = SVGPlot(title: "KL divergence to the uncompressed cache vs memory: \(title)", xLabel: x,
                          yLabel: "mean KLD per next-token distribution (nats, log)",
                          series: order.map { SVGPlot.Series(name: $0, points: kld[$0]!) }, logX: true)
        let bottom = SVGPlot(title: "Perplexity change vs memory" + (nonPositive > 0 ? " (\(nonPositive) points with Δppl ≤ 0 left out)" : ""),
                             xLabel: x, yLabel: "Δ perplexity (%, log)",
                             series: order.map { SVGPlot.Series(name: $0, points: ppl[$0] ?? []) }, logX: true)
        return SVGPlot.stacked([top, bottom])
    }
}
