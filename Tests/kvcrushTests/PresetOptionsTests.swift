import Foundation
import Testing
import KVCrush
@testable import kvcrush

@Suite struct PresetOptionsTests {
    /// `preset:` entries of `--policies` are presets; the rest stay policies, in order.
    @Test func splitsPoliciesFromPresets() {
        let (presets, policies) = PresetOptions.split(["uncompressed", "preset:4x", "plain", "preset:2x+cal"])
        #expect(presets == ["4x", "2x+cal"] && policies == ["uncompressed", "plain"])
        #expect(PresetOptions.isPreset("4x") && PresetOptions.isPreset("8x+cal") && !PresetOptions.isPreset("3x") && !PresetOptions.isPreset(""))
    }

    /// Unknown names and `+cal` without a profile are usage errors; with a profile `+cal` is calibrated
    /// and plain names are the library's presets.
    @Test func resolvesNames() throws {
        #expect(throws: UsageError.self) { try PresetOptions.resolve(["5x"], profile: nil, expectedTokenCount: 1536, command: "run") }
        #expect(throws: UsageError.self) { try PresetOptions.resolve(["4x+cal"], profile: nil, expectedTokenCount: 1536, command: "run") }
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/figures/smollm2-heapq-profile.json")
        let profile = try PresetOptions.profile(at: url.path, layerCount: 30, headDim: 64, command: "run")
        let p = try PresetOptions.resolve(["2x", "4x+cal"], profile: profile, expectedTokenCount: 1536, command: "run")
        #expect(p.map(\.description) == ["2x", "4x+cal"])
        #expect(p[1] == CompressionPreset.named("4x")!.calibrated(with: profile, expectedTokenCount: 1536))
        // A profile of another shape is refused; a dump's subset of layers (atLeast) is fine.
        #expect(throws: UsageError.self) { try PresetOptions.profile(at: url.path, layerCount: 18, headDim: 64, command: "run") }
        #expect(throws: UsageError.self) { try PresetOptions.profile(at: url.path, layerCount: 30, headDim: 256, command: "run") }
        _ = try PresetOptions.profile(at: url.path, layerCount: 16, atLeast: true, headDim: 64, command: "eval")
        #expect(throws: UsageError.self) { try PresetOptions.profile(at: url.path, layerCount: 31, atLeast: true, headDim: 64, command: "eval") }
    }

    /// A calibrated preset restricted to some layers keeps those layers' formats and budget factors.
    @Test func restrictsToLayers() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/figures/smollm2-heapq-profile.json")
        let profile = try SensitivityProfile(contentsOf: url)
        let full = CompressionPreset.named("4x")!.calibrated(with: profile, expectedTokenCount: 1536)
        let sub = full.restricted(toLayers: [29, 1, 15])
        let a = try #require(full.allocation), b = try #require(sub.allocation)
        #expect(b.keyFormats == [a.keyFormats[29], a.keyFormats[1], a.keyFormats[15]])
        #expect(b.valueFormats == [a.valueFormats[29], a.valueFormats[1], a.valueFormats[15]])
        #expect(b.budgetScales == [a.budgetScales[29], a.budgetScales[1], a.budgetScales[15]])
        #expect(CompressionPreset.named("2x")!.restricted(toLayers: [3]) == CompressionPreset.named("2x")!)
    }
}
