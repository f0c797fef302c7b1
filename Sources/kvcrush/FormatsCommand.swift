import Foundation
import KVCrush
import KVExperiments
import KVModel

/// `kvcrush formats`: reconstruction error of every storage format on a dump's real keys and values.
enum FormatsCommand {
    static let subcommand = Subcommand(
        name: "formats",
        summary: "reconstruction error of INT8/INT4/INT2 formats on real keys and values",
        help: """
            usage: kvcrush formats [--dump FILE] [--layers L,L] [--page N] [--format table|csv|json] [--output FILE]

            Encodes and decodes every layer's keys and values of a KV dump (default: the bundled
            fixture) at INT8, INT4 and INT2 with groups of 32, 64 and 128 elements, and keys per
            channel across pages of --page tokens (default 32, KIVI style), and prints the relative
            Frobenius error ‖X − X̂‖/‖X‖ and the largest absolute error per layer.
            """,
        run: run)

    static func run(_ args: inout CommandLineArguments) throws {
        let dumpURL = args.string("dump").map { URL(fileURLWithPath: $0) } ?? KVDump.bundledFixtureURL
        let layers: [Int]? = try args.string("layers") == nil ? nil : args.list("layers", default: [], expected: "layer indices") { Int($0) }
        let page = try args.value("page", default: 32, expected: "a positive integer") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let format = try args.value("format", default: "table", expected: "table, csv or json") { ["table", "csv", "json"].contains($0) ? $0 : nil }
        let output = args.string("output")
        try args.finish()

        let dump = try KVDump(contentsOf: dumpURL, layers: layers)
        let rows = try ReconstructionError.measure(dump, formats: ReconstructionError.standardFormats, pageCapacity: page)
        var text = ""
        switch format {
        case "csv":
            text = "layer,tensor,format,bytesPerElement,relativeFrobenius,maxAbsolute,maxMagnitude\n"
            for r in rows {
                text += "\(r.layer),\(r.tensor),\(r.format),\(r.bytesPerElement),\(r.relativeFrobenius),\(r.maxAbsolute),\(r.maxMagnitude)\n"
            }
        case "json":
            let objects = rows.map { r in
                "{\"layer\": \(r.layer), \"tensor\": \"\(r.tensor)\", \"format\": \"\(r.format)\", \"bytesPerElement\": \(r.bytesPerElement), \"relativeFrobenius\": \(r.relativeFrobenius), \"maxAbsolute\": \(r.maxAbsolute), \"maxMagnitude\": \(r.maxMagnitude)}"
            }
            text = "{\"dump\": \"\(dumpURL.lastPathComponent)\", \"model\": \"\(dump.model)\", \"pageCapacity\": \(page), \"results\": [\n  " + objects.joined(separator: ",\n  ") + "\n]}\n"
        default:
            text = table(rows, dump: dump, name: dumpURL.lastPathComponent, page: page)
        }
        if let output { try Data(text.utf8).write(to: URL(fileURLWithPath: output), options: .atomic) } else { print(text, terminator: "") }
    }

    /// One line per (tensor, format), one column per layer: relative Frobenius error (max abs error).
    static func table(_ rows: [ReconstructionError], dump: KVDump, name: String, page: Int) -> String {
        let layers = dump.layerIndices
        var s = "Reconstruction error on \(name) (\(dump.model), \(dump.shape.tokenCount) tokens, \(dump.shape.kvHeadCount) KV heads × \(dump.shape.headDim)); per-channel keys in pages of \(page) tokens\n"
        s += "relative Frobenius error ‖X−X̂‖/‖X‖ (largest absolute error)\n\n"
        let head = "tensor  format         B/elem " + layers.map { "layer \($0)".padding(toLength: 20, withPad: " ", startingAt: 0) }.joined()
        s += head + "\n" + String(repeating: "-", count: head.count) + "\n"
        var seen = [String]()
        for r in rows where !seen.contains("\(r.tensor) \(r.format)") { seen.append("\(r.tensor) \(r.format)") }
        for key in seen {
            let cells = rows.filter { "\($0.tensor) \($0.format)" == key }
            guard let first = cells.first else { continue }
            var line = first.tensor.padding(toLength: 8, withPad: " ", startingAt: 0)
            line += first.format.description.padding(toLength: 15, withPad: " ", startingAt: 0)
            line += String(format: "%6.3f ", first.bytesPerElement)
            for l in layers {
                guard let c = cells.first(where: { $0.layer == l }) else { continue }
                line += String(format: "%.4f (%.3f)", c.relativeFrobenius, c.maxAbsolute).padding(toLength: 20, withPad: " ", startingAt: 0)
            }
            s += line + "\n"
        }
        return s
    }
}
