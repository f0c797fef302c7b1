import Foundation
import KVCrush

/// Presets on the command line of `run` and `eval`: `preset:NAME` entries of `--policies` (and
/// `run`'s older `--presets NAME`), `NAME+cal` calibrated from `--profile PROFILE.json`.
enum PresetOptions {
    static let help = """
        Presets (CompressionPreset) are named operating points, each run on its own store: --policies
        preset:2x (budget 0.5; INT4 tier per-channel keys : rotated Lloyd-Max 4-bit values, pages of 32),
        preset:4x (0.25; per-channel keys : rotated Lloyd-Max 3-bit values, pages of 64), preset:6x (1/6,
        as 4x) and preset:8x (0.125, as 4x); all with the plain plan, re-planned every 16 decode tokens.
        They need no --budgets; --sinks and --recent apply to them too. A name with +cal (preset:4x+cal) is the preset calibrated on the
        model: --profile FILE (from kvcrush calibrate) chooses each layer's INT4 key and value formats
        to minimise the summed measured KLD within the budget, and scales each layer's budget by its
        formats' cost.
        """

    /// The names of `names` that are presets (`preset:` dropped), and the others.
    static func split(_ names: [String]) -> (presets: [String], policies: [String]) {
        (names.filter { $0.hasPrefix("preset:") }.map { String($0.dropFirst("preset:".count)) },
         names.filter { !$0.hasPrefix("preset:") })
    }

    /// Whether `name` (`4x`, `4x+cal`) names a preset.
    static func isPreset(_ name: String) -> Bool {
        CompressionPreset.named(name.hasSuffix("+cal") ? String(name.dropLast(4)) : name) != nil
    }

    /// Reads the profile at `path`, checking it was measured on `layerCount` (or more, with
    /// `atLeast`) layers of `headDim`.
    static func profile(at path: String, layerCount: Int, atLeast: Bool = false, headDim: Int,
                        command: String) throws -> SensitivityProfile {
        let p = try SensitivityProfile(contentsOf: URL(fileURLWithPath: path))
        guard atLeast ? p.layerCount >= layerCount : p.layerCount == layerCount, p.headDim == headDim else {
            throw UsageError(message: "--profile \(path) was measured on \(p.layerCount) layers of head dim \(p.headDim); "
                                 + "the cache has \(atLeast ? "layers up to \(layerCount - 1)" : "\(layerCount) layers") of head dim \(headDim)",
                             command: command)
        }
        return p
    }

    /// The presets `names` name, `+cal` ones calibrated with `profile` for prompts of
    /// `expectedTokenCount` tokens.
    static func resolve(_ names: [String], profile: SensitivityProfile?, expectedTokenCount: Int, protectedTier: Tier? = nil,
                        command: String) throws(UsageError) -> [CompressionPreset] {
        var out = [CompressionPreset]()
        for name in names {
            let calibrated = name.hasSuffix("+cal")
            guard var preset = CompressionPreset.named(calibrated ? String(name.dropLast(4)) : name) else {
                throw UsageError(message: "unknown preset '\(name)': expected \(CompressionPreset.all.map(\.name).joined(separator: ", ")), each optionally with +cal",
                                 command: command)
            }
            if let protectedTier { preset = preset.protecting(at: protectedTier) }
            guard calibrated else { out.append(preset); continue }
            guard let profile else { throw UsageError(message: "preset:\(name) needs --profile PROFILE.json (kvcrush calibrate)", command: command) }
            out.append(preset.calibrated(with: profile, expectedTokenCount: expectedTokenCount))
        }
        return out
    }
}
