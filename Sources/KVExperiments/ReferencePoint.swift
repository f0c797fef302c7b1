/// A figure measured elsewhere (llama.cpp's quantised caches, `python/tools/llama_cpp_reference.py`)
/// that `kvcrush run --plot` draws beside its own configurations: a cache type's bytes as a share of
/// its own uncompressed cache, its mean KLD to that cache and its perplexity change.
public struct ReferencePoint: Sendable, Hashable {
    public var name: String
    public var ratio: Double, kld: Double, perplexityDelta: Double

    public init(name: String, ratio: Double, kld: Double, perplexityDelta: Double) {
        self.name = name
        self.ratio = ratio
        self.kld = kld
        self.perplexityDelta = perplexityDelta
    }

    /// The series a point belongs to in a plot: its name's first word (`llama.cpp`).
    public var series: String { String(name.split(separator: " ").first ?? Substring(name)) }

    /// Points from CSV text with a header naming at least `name`, `ratio`, `kld` and
    /// `perplexityDelta` (any order, more columns allowed); lines starting with `#` are comments.
    /// The uncompressed row (ratio 1, KLD 0) may be present.
    ///
    /// - Throws: `ReferencePointError` for a missing column, a short row, or a value that is not a
    ///   finite number (ratio in (0, 1], KLD ≥ 0).
    public static func parseCSV(_ text: String) throws(ReferencePointError) -> [ReferencePoint] {
        var lines = text.split(whereSeparator: \.isNewline).map(String.init)
            .filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty && !$0.hasPrefix("#") }
        guard !lines.isEmpty else { throw .missingColumn("name") }
        let header = lines.removeFirst().split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        func column(_ c: String) throws(ReferencePointError) -> Int {
            guard let i = header.firstIndex(of: c) else { throw .missingColumn(c) }
            return i
        }
        let n = try column("name"), r = try column("ratio"), k = try column("kld"), p = try column("perplexityDelta")
        var out = [ReferencePoint]()
        for (i, line) in lines.enumerated() {
            let f = line.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard f.count >= header.count else { throw .badRow(i + 1, "\(f.count) fields, the header has \(header.count)") }
            guard let ratio = Double(f[r]), ratio.isFinite, ratio > 0, ratio <= 1 else { throw .badRow(i + 1, "ratio '\(f[r])' is not in (0, 1]") }
            guard let kld = Double(f[k]), kld.isFinite, kld >= 0 else { throw .badRow(i + 1, "kld '\(f[k])' is not a finite number ≥ 0") }
            guard let delta = Double(f[p]), delta.isFinite else { throw .badRow(i + 1, "perplexityDelta '\(f[p])' is not a finite number") }
            out.append(ReferencePoint(name: f[n], ratio: ratio, kld: kld, perplexityDelta: delta))
        }
        return out
    }
}

/// Why a reference-point CSV was refused.
public enum ReferencePointError: Error, Hashable, CustomStringConvertible {
    case missingColumn(String)
    case badRow(Int, String)

    public var description: String {
        switch self {
        case .missingColumn(let c): "reference points: no '\(c)' column (expected a header with name,ratio,kld,perplexityDelta)"
        case .badRow(let i, let why): "reference points: data row \(i): \(why)"
        }
    }
}
