import KVQuantization
import Foundation
import KVSelection

extension EvaluationReport {
    /// The CSV columns, in order (one row per result; empty cells for `null`).
    public static let csvColumns = ["policy", "budget", "crushShare", "repFormat", "anchor", "layer", "relErrMean", "relErrP95",
                                    "relErrMax", "massKept", "bytes", "fp16Bytes", "ratio", "fp16", "int8", "int4", "int2", "dropped"]

    /// The keys of every JSON result object, in order (`tokens` holds the tier counts).
    public static let jsonResultKeys = ["policy", "budget", "crushShare", "repFormat", "anchor", "layer", "relErrMean", "relErrP95",
                                        "relErrMax", "massKept", "bytes", "fp16Bytes", "ratio", "tokens"]

    /// The tiers of `tokens`, in order.
    public static let tierKeys: [(String, Tier)] = [("fp16", .fp16), ("int8", .int8), ("int4", .int4), ("int2", .int2), ("dropped", .dropped)]

    /// Every result as CSV, numbers at full precision.
    public func csv() -> String {
        var s = Self.csvColumns.joined(separator: ",") + "\n"
        for r in results {
            var cells = [csvEscape(r.policy), r.budget.map(number) ?? "", r.crushShare.map(number) ?? "",
                         r.representativeTier?.description ?? "", r.anchor ?? "", r.layer.map(String.init) ?? "",
                         number(r.relErrMean), number(r.relErrP95), number(r.relErrMax), number(r.massKept),
                         String(r.byteCount), String(r.fp16ByteCount), number(r.ratio)]
            cells += Self.tierKeys.map { String(r.tokenCounts[$0.1] ?? 0) }
            s += cells.joined(separator: ",") + "\n"
        }
        return s
    }

    /// `{"dump": …, "model": …, "results": [{"policy", "budget", "crushShare", "repFormat", "anchor",
    /// "layer", "relErrMean", "relErrP95", "relErrMax", "massKept", "bytes", "fp16Bytes", "ratio",
    /// "tokens": {"fp16", "int8", "int4", "int2", "dropped"}}]}`, one result per line; `layer` is
    /// `null` for all layers together, `budget` for budget-free baselines, and the KVCrush fields
    /// without `+kvcrush`.
    public func json() -> String {
        func str(_ x: String?) -> String { x.map(jsonString) ?? "null" }
        func num(_ x: Double?) -> String { x.map(number) ?? "null" }
        let objects = results.map { r in
            let tokens = Self.tierKeys.map { "\"\($0.0)\": \(r.tokenCounts[$0.1] ?? 0)" }.joined(separator: ", ")
            let fields: [String] = [str(r.policy), num(r.budget), num(r.crushShare), str(r.representativeTier?.description), str(r.anchor),
                                    r.layer.map(String.init) ?? "null", num(r.relErrMean), num(r.relErrP95), num(r.relErrMax),
                                    num(r.massKept), String(r.byteCount), String(r.fp16ByteCount), num(r.ratio), "{\(tokens)}"]
            return "{" + zip(Self.jsonResultKeys, fields).map { "\"\($0)\": \($1)" }.joined(separator: ", ") + "}"
        }
        return "{\"dump\": \(jsonString(dumpName)), \"model\": \(jsonString(model)), \"results\": [\n  "
            + objects.joined(separator: ",\n  ") + "\n]}\n"
    }

    /// A readable table: one block per budget (budget-free baselines first) of the overall figures,
    /// then mean relErr per layer.
    public func table() -> String {
        var s = "KV-cache compression on \(dumpName) (\(model)), layers \(layers.map(String.init).joined(separator: ",")): "
        s += "prompt \(promptTokenCount) tokens, observation window \(observationWindow), \(evaluationQueryCount) evaluation queries\n"
        s += "relErr = ‖o−ô‖/‖o‖ of each head's attention output vs FP64 over the uncompressed cache; "
        s += "ratio = store bytes / FP16 bytes of the prompt; tiers = % of prompt tokens fp16/int8/int4/int2/dropped\n"
        let labelWidth = max(28, (overall.map { $0.label.count }.max() ?? 0) + 2)
        let header = "policy".padding(toLength: labelWidth, withPad: " ", startingAt: 0)
            + "   ratio      KiB  relErr mean      p95      max  massKept  tiers %"
        var budgets: [Double?] = []
        for r in overall where !budgets.contains(r.budget) { budgets.append(r.budget) }
        budgets.sort { ($0 ?? -1) < ($1 ?? -1) }
        for b in budgets {
            s += "\n" + (b.map { "budget \(number($0)) of FP16 bytes" } ?? "no budget (baselines)") + "\n"
            s += header + "\n" + String(repeating: "-", count: header.count + 18) + "\n"
            for r in overall where r.budget == b { s += row(r, labelWidth: labelWidth) + "\n" }
        }
        if layers.count > 1 {
            s += "\nmean relErr per layer\n"
            let head = "policy".padding(toLength: labelWidth, withPad: " ", startingAt: 0) + " budget"
                + layers.map { ("L" + String($0)).leftPadded(10) }.joined()
            s += head + "\n" + String(repeating: "-", count: head.count) + "\n"
            var i = 0
            while i < results.count {
                let r = results[i]
                var line = r.label.padding(toLength: labelWidth, withPad: " ", startingAt: 0)
                line += (r.budget.map { String(format: "%.3g", $0) } ?? "-").leftPadded(7)
                i += 1
                while i < results.count, results[i].layer != nil {
                    line += String(format: "%.4f", results[i].relErrMean).leftPadded(10)
                    i += 1
                }
                s += line + "\n"
            }
        }
        return s
    }

    /// One overall table row.
    func row(_ r: EvaluationResult, labelWidth: Int) -> String {
        let total = Double(Self.tierKeys.reduce(0) { $0 + (r.tokenCounts[$1.1] ?? 0) })
        let tiers = Self.tierKeys.map { k in
            String(format: "%.0f", total == 0 ? 0 : 100 * Double(r.tokenCounts[k.1] ?? 0) / total)
        }.joined(separator: "/")
        return r.label.padding(toLength: labelWidth, withPad: " ", startingAt: 0)
            + String(format: "%8.4f %8.1f %12.5f %8.5f %8.5f %9.5f  ", r.ratio, Double(r.byteCount) / 1024,
                     r.relErrMean, r.relErrP95, r.relErrMax, r.massKept) + tiers
    }
}

/// The shortest decimal that reads back as `x` (Swift's `description`); JSON-valid for finite `x`.
func number(_ x: Double) -> String {
    guard x.isFinite else { return "null" }
    return x.description
}

func csvEscape(_ s: String) -> String {
    s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
