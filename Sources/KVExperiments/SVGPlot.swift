import KVQuantization
import Foundation

/// A line chart as a standalone SVG document: linear (or logarithmic) x axis, logarithmic y axis, one
/// polyline with markers per series, labelled axes, a title and a legend beside the plot.
///
/// Points with y ≤ 0 (or x ≤ 0 on a log x axis) cannot sit on a log axis and are left out (the
/// caller says so in the title or caption if it matters).
package struct SVGPlot: Sendable {
    /// One named line.
    public struct Series: Sendable {
        public var name: String
        /// (x, y) points, drawn in x order.
        public var points: [(x: Double, y: Double)]
        public init(name: String, points: [(x: Double, y: Double)]) {
            self.name = name
            self.points = points
        }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [Series]
    public var width = 960.0
    public var height = 560.0
    /// A logarithmic x axis (decades, with 2 and 5 between them) instead of a linear one from 0.
    public var logX = false

    public init(title: String, xLabel: String, yLabel: String, series: [Series], logX: Bool = false) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.series = series
        self.logX = logX
    }

    /// Several charts stacked top to bottom in one SVG document (each `width` wide).
    public static func stacked(_ charts: [SVGPlot]) -> String {
        let w = charts.map(\.width).max() ?? 0, h = charts.reduce(0) { $0 + $1.height }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" viewBox=\"0 0 \(Int(w)) \(Int(h))\">\n"
        var y = 0.0
        for c in charts {
            s += "<g transform=\"translate(0,\(Int(y)))\">\n" + c.svg() + "</g>\n"
            y += c.height
        }
        return s + "</svg>\n"
    }

    static let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                         "#bcbd22", "#17becf", "#000000", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5"]
    static let dashes = ["", "6,3", "2,2", "8,3,2,3"]

    /// The SVG document.
    public func svg() -> String {
        let left = 80.0, top = 44.0, bottom = 60.0, legendWidth = 330.0
        let plotW = width - left - legendWidth - 20, plotH = height - top - bottom
        let visible = series.map { s in
            s.points.filter { $0.y > 0 && $0.y.isFinite && $0.x.isFinite && (!logX || $0.x > 0) }.sorted { $0.x < $1.x }
        }
        let xs = visible.flatMap { $0.map(\.x) }, ys = visible.flatMap { $0.map(\.y) }
        let xMax = logX ? Foundation.ceil(log10(xs.max() ?? 1) * 10) / 10 + 0.02 : max(1.0, (xs.max() ?? 1) * 1.02)
        let xMin = logX ? Foundation.floor(log10(xs.min() ?? 0.1) * 10) / 10 - 0.02 : 0.0
        let yLo = Foundation.floor(log10(ys.min() ?? 1e-3)), yHi = max(yLo + 1, Foundation.ceil(log10(ys.max() ?? 1)))
        func px(_ x: Double) -> Double { left + ((logX ? log10(x) : x) - xMin) / (xMax - xMin) * plotW }
        func py(_ y: Double) -> Double { top + (yHi - log10(y)) / (yHi - yLo) * plotH }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }

        var s = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="Helvetica, Arial, sans-serif" font-size="12">
            <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="white"/>
            <text x="\(f(width / 2))" y="24" text-anchor="middle" font-size="14" font-weight="bold">\(escape(title))</text>

            """
        // Grid and ticks: decades (and 2, 5 between them) on y; tenths on x.
        for e in Int(yLo)...Int(yHi) {
            for m in [1.0, 2.0, 5.0] {
                let v = m * Foundation.pow(10, Double(e))
                guard log10(v) <= yHi + 1e-9 else { continue }
                let y = py(v)
                s += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + plotW))\" y2=\"\(f(y))\" stroke=\"\(m == 1 ? "#cccccc" : "#eeeeee")\"/>\n"
                if m == 1 || yHi - yLo <= 3 {
                    s += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(tickLabel(v))</text>\n"
                }
            }
        }
        if logX {
            // Ticks at 1, 2, 5 × powers of ten, and at 0.15, 0.25, 0.3 … between 0.1 and 1 (the ratios of interest).
            var ticks: [Double] = []
            for e in Int(Foundation.floor(xMin))...Int(Foundation.ceil(xMax)) {
                for m in [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0] { ticks.append(m * Foundation.pow(10, Double(e))) }
            }
            for v in ticks where log10(v) >= xMin && log10(v) <= xMax {
                let x = px(v)
                s += "<line x1=\"\(f(x))\" y1=\"\(f(top))\" x2=\"\(f(x))\" y2=\"\(f(top + plotH))\" stroke=\"#eeeeee\"/>\n"
                s += "<text x=\"\(f(x))\" y=\"\(f(top + plotH + 18))\" text-anchor=\"middle\">\(String(format: "%g", v))</text>\n"
            }
        } else {
            var xt = 0.0
            while xt <= xMax + 1e-9 {
                let x = px(xt)
                s += "<line x1=\"\(f(x))\" y1=\"\(f(top))\" x2=\"\(f(x))\" y2=\"\(f(top + plotH))\" stroke=\"#eeeeee\"/>\n"
                s += "<text x=\"\(f(x))\" y=\"\(f(top + plotH + 18))\" text-anchor=\"middle\">\(String(format: "%.1f", xt))</text>\n"
                xt += 0.1
            }
        }
        s += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" fill=\"none\" stroke=\"#333333\"/>\n"
        s += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(height - 16))\" text-anchor=\"middle\" font-size=\"13\">\(escape(xLabel))</text>\n"
        s += "<text transform=\"translate(20,\(f(top + plotH / 2))) rotate(-90)\" text-anchor=\"middle\" font-size=\"13\">\(escape(yLabel))</text>\n"

        for (i, pts) in visible.enumerated() where !pts.isEmpty {
            let color = Self.colors[i % Self.colors.count], dash = Self.dashes[(i / Self.colors.count) % Self.dashes.count]
            let dashAttr = dash.isEmpty ? "" : " stroke-dasharray=\"\(dash)\""
            if pts.count > 1 {
                let path = pts.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
                s += "<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"\(dashAttr)/>\n"
            }
            for p in pts {
                s += marker(i, x: px(p.x), y: py(p.y), color: color)
            }
            // Legend entry.
            let ly = top + 8 + Double(i) * 20, lx = left + plotW + 16
            s += "<line x1=\"\(f(lx))\" y1=\"\(f(ly))\" x2=\"\(f(lx + 26))\" y2=\"\(f(ly))\" stroke=\"\(color)\" stroke-width=\"2\"\(dashAttr)/>\n"
            s += marker(i, x: lx + 13, y: ly, color: color)
            s += "<text x=\"\(f(lx + 32))\" y=\"\(f(ly + 4))\">\(escape(series[i].name))</text>\n"
        }
        return s + "</svg>\n"
    }

    /// Circle, square, triangle or diamond, by series index.
    func marker(_ i: Int, x: Double, y: Double, color: String) -> String {
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        switch (i / 4) % 4 {
        case 0: return "<circle cx=\"\(f(x))\" cy=\"\(f(y))\" r=\"3.5\" fill=\"\(color)\"/>\n"
        case 1: return "<rect x=\"\(f(x - 3.5))\" y=\"\(f(y - 3.5))\" width=\"7\" height=\"7\" fill=\"\(color)\"/>\n"
        case 2: return "<polygon points=\"\(f(x)),\(f(y - 4.5)) \(f(x - 4)),\(f(y + 3)) \(f(x + 4)),\(f(y + 3))\" fill=\"\(color)\"/>\n"
        default: return "<polygon points=\"\(f(x)),\(f(y - 4.5)) \(f(x - 4.5)),\(f(y)) \(f(x)),\(f(y + 4.5)) \(f(x + 4.5)),\(f(y))\" fill=\"\(color)\"/>\n"
        }
    }

    func tickLabel(_ v: Double) -> String {
        let e = Int(Foundation.floor(log10(v) + 1e-9))
        if e >= -3 && e <= 2 { return String(format: "%g", v) }
        let m = v / Foundation.pow(10, Double(e))
        return (abs(m - 1) < 1e-9 ? "" : String(format: "%g×", m)) + "1e\(e)"
    }

    func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}

extension EvaluationReport {
    /// Mean relErr (all layers) against bytes ratio, one line per configuration label across
    /// budgets; the uniform baselines form one line (INT8, INT4, INT2) and `full` is a point.
    package func plot() -> SVGPlot {
        var order: [String] = []
        var points: [String: [(x: Double, y: Double)]] = [:]
        for r in overall {
            let name = r.policy.hasPrefix("uniform-") ? "uniform INT8 / INT4 / INT2" : r.label
            if points[name] == nil { order.append(name) }
            points[name, default: []].append((x: r.ratio, y: r.relErrMean))
        }
        return SVGPlot(title: "Attention-output error vs memory: \(dumpName), layers \(layers.map(String.init).joined(separator: ","))",
                       xLabel: "bytes of the compressed prompt cache / FP16 bytes (ratio)",
                       yLabel: "mean relative error of attention output (log)",
                       series: order.map { SVGPlot.Series(name: $0, points: points[$0]!) })
    }
}
