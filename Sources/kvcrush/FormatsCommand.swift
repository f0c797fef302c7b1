import Foundation
import KVCrush
import KVExperiments
import KVModel

/// `kvcrush formats`: reconstruction error of every storage format on a dump's real keys and values.
enum FormatsCommand {
    static let subcommand = Subcommand(
        name: "formats",
        summary: "reconstruction error of every storage format (INT8…INT2, per-channel, Lloyd–Max, rotated) on real keys and values",
        help: """
            usage: kvcrush formats [--dump FILE] [--layers L,L] [--pages 32,64] [--seed N] [--profile P.json] [--format table|csv|json] [--output FILE]

            Encodes and decodes every layer's keys and values of a KV dump (default: the bundled
            fixture) in every storage format: INT8, INT4, INT3 and INT2 with groups of 32, 64 and 128
            elements; keys per channel across pages of each --pages capacity (KIVI style; --page N is
            --pages N); Lloyd–Max codes at 4, 3 and 2 bits with one FP16 norm per vector, with and
            without the randomised Walsh–Hadamard rotation a store applies to rotated tiers (signs
            from --seed, default 0, per layer and keys/values); per-channel INT4 and INT3 keys rotated.
            Prints per layer the relative Frobenius error ‖X − X̂‖/‖X‖ (largest absolute error in
            parentheses), its mean over the layers, and bits per element (codes and FP16 parameters,
            not the store's 4-byte positions). Rotation needs a power-of-two head dim; otherwise the
            rotated rows are omitted and the header says so. Keys also get the relative error of the
            attention logits q·k over the dump's queries (what a key's error costs attention).
            Mixed-width keys (mix4, mix3.5, mix3 /channel: a width per channel and KV head) take
            their widths from --profile's key statistics (kvcrush calibrate --keys mix…; measured
            on another text), or else from the dump's own queries and key ranges (in-sample).
            """,
        run: run)

    static func run(_ args: inout CommandLineArguments) throws {
        let dumpURL = args.string("dump").map { URL(fileURLWithPath: $0) } ?? KVDump.bundledFixtureURL
        let layers: [Int]? = try args.string("layers") == nil ? nil : args.list("layers", default: [], expected: "layer indices") { Int($0) }
        let positive: (String) -> Int? = { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let page = try args.value("page", default: nil as Int?, expected: "a positive integer") { positive($0).map { Optional($0) } }
        let pages = try args.list("pages", default: page.map { [$0] } ?? [32, 64], expected: "positive integers") { positive($0) }
        let seed = try args.value("seed", default: UInt64(0), expected: "an unsigned integer") { UInt64($0) }
        let format = try args.value("format", default: "table", expected: "table, csv or json") { ["table", "csv", "json"].contains($0) ? $0 : nil }
        let output = args.string("output"), profilePath = args.string("profile")
        try args.finish()

        let dump = try KVDump(contentsOf: dumpURL, layers: layers)
        var source = ReconstructionError.MixedWidthSource.dump
        var widthNote = "mixed widths from this dump's own queries and key ranges (in-sample for the score error)"
        if let profilePath {
            let profile = try PresetOptions.profile(at: profilePath, layerCount: dump.layerIndices.max()! + 1, atLeast: true,
                                                    headDim: dump.shape.headDim, command: "formats")
            guard let k = profile.keyChannels, k.queryEnergy.first?.count == dump.shape.kvHeadCount else {
                throw UsageError(message: "--profile \(profilePath) has no key statistics for this dump's KV heads (kvcrush calibrate --keys mix…)", command: "formats")
            }
            source = .statistics(k)
            widthNote = "mixed widths from the key statistics of " + URL(fileURLWithPath: profilePath).lastPathComponent + " (" + profile.text + ")"
        }
        let rows = try ReconstructionError.measure(dump, variants: ReconstructionError.allVariants(pageCapacities: pages), rotationSeed: seed,
                                                   mixedWidths: source, scoreErrors: true)
        let d = dump.shape.headDim
        let rotationNote = HadamardRotation.isSupported(dimension: d)
            ? "rotation: randomised Walsh–Hadamard, seed \(seed) (head dim \(d) is a power of two)"
            : "rotation: unavailable (head dim \(d) is not a power of two): rotated formats omitted"
        var text = ""
        switch format {
        case "csv":
            text = "layer,tensor,format,rotated,pageCapacity,bitsPerElement,bytesPerElement,relativeFrobenius,meanHeadRelativeFrobenius,maxAbsolute,maxMagnitude,scoreRelativeError\n"
            for r in rows {
                text += "\(r.layer),\(r.tensor),\(r.format),\(r.variant.rotated),\(r.format.isPageWise ? "\(r.variant.pageCapacity)" : ""),"
                text += "\(r.bitsPerElement),\(r.bytesPerElement),\(r.relativeFrobenius),\(r.meanHeadRelativeFrobenius),\(r.maxAbsolute),\(r.maxMagnitude),"
                text += (r.scoreRelativeError.map { "\($0)" } ?? "") + "\n"
            }
        case "json":
            let objects = rows.map { r in
                "{\"layer\": \(r.layer), \"tensor\": \"\(r.tensor)\", \"format\": \"\(r.format)\", \"rotated\": \(r.variant.rotated), "
                    + "\"pageCapacity\": \(r.format.isPageWise ? "\(r.variant.pageCapacity)" : "null"), \"bitsPerElement\": \(r.bitsPerElement), "
                    + "\"bytesPerElement\": \(r.bytesPerElement), \"relativeFrobenius\": \(r.relativeFrobenius), "
                    + "\"meanHeadRelativeFrobenius\": \(r.meanHeadRelativeFrobenius), \"maxAbsolute\": \(r.maxAbsolute), \"maxMagnitude\": \(r.maxMagnitude), "
                    + "\"scoreRelativeError\": " + (r.scoreRelativeError.map { "\($0)" } ?? "null") + "}"
            }
            text = "{\"dump\": \"\(dumpURL.lastPathComponent)\", \"model\": \"\(dump.model)\", \"pageCapacities\": \(pages), "
                + "\"rotationSeed\": \(seed), \"rotationSupported\": \(HadamardRotation.isSupported(dimension: d)), \"results\": [\n  "
                + objects.joined(separator: ",\n  ") + "\n]}\n"
        default:
            text = table(rows, dump: dump, name: dumpURL.lastPathComponent, note: rotationNote + "; " + widthNote)
        }
        if let output { try Data(text.utf8).write(to: URL(fileURLWithPath: output), options: .atomic) } else { print(text, terminator: "") }
    }

    /// One line per (tensor, variant), one column per layer: relative Frobenius error (max abs
    /// error), then the mean over the layers.
    static func table(_ rows: [ReconstructionError], dump: KVDump, name: String, note: String) -> String {
        let layers = dump.layerIndices
        var s = "Reconstruction error on \(name) (\(dump.model), \(dump.shape.tokenCount) tokens, \(dump.shape.kvHeadCount) KV heads × \(dump.shape.headDim))\n"
        s += "relative Frobenius error ‖X−X̂‖/‖X‖ (largest absolute error); keys also: score = mean over layers of ‖S−Ŝ‖/‖S‖ of the\n"
        s += "logits q·k of the dump's queries; bits/elem = codes + FP16 parameters; \(note)\n\n"
        let head = "tensor  format                 bits/elem  mean    score   " + layers.map { "layer \($0)".padding(toLength: 18, withPad: " ", startingAt: 0) }.joined()
        s += head + "\n" + String(repeating: "-", count: head.count) + "\n"
        var seen = [String]()
        for r in rows where !seen.contains("\(r.tensor) \(r.variant)") { seen.append("\(r.tensor) \(r.variant)") }
        for key in seen {
            let cells = rows.filter { "\($0.tensor) \($0.variant)" == key }
            guard let first = cells.first else { continue }
            var line = first.tensor.padding(toLength: 8, withPad: " ", startingAt: 0)
            line += first.variant.description.padding(toLength: 23, withPad: " ", startingAt: 0)
            line += String(format: "%-10.3f %-7.4f ", first.bitsPerElement, cells.reduce(0) { $0 + $1.relativeFrobenius } / Double(cells.count))
            let scores = cells.compactMap(\.scoreRelativeError)
            line += scores.isEmpty ? "-       " : String(format: "%-7.4f ", scores.reduce(0, +) / Double(scores.count))
            for l in layers {
                guard let c = cells.first(where: { $0.layer == l }) else { continue }
                line += String(format: "%.4f (%.3f)", c.relativeFrobenius, c.maxAbsolute).padding(toLength: 18, withPad: " ", startingAt: 0)
            }
            s += line + "\n"
        }
        return s
    }
}
