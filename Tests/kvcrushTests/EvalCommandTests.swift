import Foundation
import Testing
import TestSupport
import KVCrush
import KVExperiments
@testable import kvcrush

@Suite struct EvalCommandTests {
    func parse(_ arguments: [String]) throws(UsageError) -> EvalCommand.Options {
        var args = try CommandLineArguments(arguments, command: "eval")
        return try EvalCommand.parse(&args)
    }

    /// Every bad flag or value is a `UsageError` (exit status 2) with a one-line message.
    @Test(arguments: [
        ["--bogus", "1"], ["--budgets", "0"], ["--budgets", "x"], ["--budgets", "1.5"], ["--budgets"],
        ["--policies", "snapkv+foo"], ["--policies", "magic"], ["--policies", "full+kvcrush"],
        ["--rep-format", "dropped"], ["--rep-format", "int3"], ["--anchor", "nope"], ["--crush-share", "0"],
        ["--crush-share", "2"], ["--page", "0"], ["--sinks", "-1"], ["--window", "0"], ["--format", "xml"],
        ["--key-format", "row"], ["--seed", "-1"], ["--layers", "a"], ["stray"], ["--budgets", "0.1", "--budgets", "0.2"],
        ["--policies", "snapkv+kvcrush+mikv", "--rep-format", "int2"], ["--policies", "preset:3x"], ["--policies", "preset:"],
    ])
    func badFlagsAreUsageErrors(arguments: [String]) {
        #expect(throws: UsageError.self, "\(arguments)") { try parse(arguments) }
        #expect(runCommandLine(["eval"] + arguments) == 2, "\(arguments)")
    }

    @Test func defaultsAndLists() throws {
        let o = try parse([])
        let sel = o.selection
        #expect(o.dumpURL == KVDump.bundledFixtureURL && sel.budgets == [0.1, 0.25, 0.5] && sel.crushShares == [0.3])
        #expect(sel.representativeTiers == [.int4] && sel.anchors == [.alternate] && o.format == "table")
        #expect(sel.regions == StreamRegions(sinkTokenCount: 4, recentTokenCount: 32))
        #expect(sel.policies.map(\.description) == EvalCommand.defaultPolicies.split(separator: ",").map(String.init))
        let sweep = try parse(["--policies", "snapkv+kvcrush,uniform-int4", "--budgets", "0.1,0.5", "--crush-share", "0.2,0.4",
                               "--rep-format", "fp16,int4", "--anchor", "random,mean", "--seed", "7"])
        #expect(sweep.configurations.count == 1 + 2 * 2 * 2 * 2)
        #expect(sweep.selection.anchors == [.random(seed: 7), .mean])
        let regions = try parse(["--sinks", "2", "--recent", "8"]).configurations.map(\.regions)
        #expect(regions.allSatisfy { $0 == StreamRegions(sinkTokenCount: 2, recentTokenCount: 8) })
    }

    /// The whole command on a small dump file: JSON to `--output`, an SVG to `--plot`, exit 0; a
    /// missing dump file is a runtime failure (exit 1).
    @Test func runsOnADumpFile() throws {
        var g = SeededGenerator(seed: 9)
        let t = 160
        let shape = try KVDumpShape(headCount: 2, kvHeadCount: 1, headDim: 16, tokenCount: t, queryStart: t - 64)
        func tensor(_ n: Int) -> [Float] { (0..<n).map { _ in Float(g.nextGaussian()) } }
        let dump = KVDump(model: "tiny", shape: shape, layers: [
            KVDumpLayer(index: 2, shape: shape, keys: tensor(shape.kvElementCount), values: tensor(shape.kvElementCount),
                        queries: tensor(shape.queryElementCount)),
        ])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvcrush-eval-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("tiny.safetensors"), json = dir.appendingPathComponent("out.json")
        let svg = dir.appendingPathComponent("plot.svg")
        try dump.write(to: file)
        let status = runCommandLine(["eval", "--dump", file.path, "--policies", "full,snapkv,uniform-int8", "--budgets", "0.5",
                                     "--page", "16", "--recent", "16", "--format", "json", "--output", json.path, "--plot", svg.path])
        #expect(status == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: json)) as? [String: Any])
        #expect(object["dump"] as? String == "tiny.safetensors")
        #expect((object["results"] as? [Any])?.count == 3 * 2)
        #expect(try String(contentsOf: svg, encoding: .utf8).hasPrefix("<svg"))
        #expect(runCommandLine(["eval", "--dump", dir.appendingPathComponent("missing").path]) == 1)
    }

    /// `--policies preset:NAME` runs presets on their own stores (no `--budgets`); `+cal` needs
    /// `--profile` (else exit 2) and then takes the dump layer's formats from it; JSON rows carry
    /// `"policy": "preset:4x"`, and every preset keeps its budget in actual bytes.
    @Test func runsPresets() throws {
        var g = SeededGenerator(seed: 10)
        let t = 1088
        // SmolLM2's KV heads: the profile's mixed-width keys have widths per KV head of that model.
        let shape = try KVDumpShape(headCount: 3, kvHeadCount: 3, headDim: 64, tokenCount: t, queryStart: t - 64)
        func tensor(_ n: Int) -> [Float] { (0..<n).map { _ in Float(g.nextGaussian()) } }
        let dump = KVDump(model: "tiny", shape: shape, layers: [
            KVDumpLayer(index: 2, shape: shape, keys: tensor(shape.kvElementCount), values: tensor(shape.kvElementCount),
                        queries: tensor(shape.queryElementCount)),
        ])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvcrush-eval-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("tiny.safetensors"), json = dir.appendingPathComponent("out.json")
        try dump.write(to: file)
        let profile = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/figures/smollm2-heapq-profile.json")
        #expect(runCommandLine(["eval", "--dump", file.path, "--policies", "preset:4x+cal"]) == 2)
        let status = runCommandLine(["eval", "--dump", file.path, "--policies", "snapkv,preset:2x,preset:4x,preset:4x+cal",
                                     "--budgets", "0.5", "--profile", profile.path, "--format", "json", "--output", json.path])
        #expect(status == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: json)) as? [String: Any])
        let rows = try #require(object["results"] as? [[String: Any]]).filter { $0["layer"] is NSNull || $0["layer"] == nil }
        #expect(rows.compactMap { $0["policy"] as? String } == ["snapkv", "preset:2x", "preset:4x", "preset:4x+cal"])
        let p = try SensitivityProfile(contentsOf: profile)
        let calibrated = try #require(CompressionPreset.named("4x")).calibrated(with: p, expectedTokenCount: t - 32)
        for (row, budget) in zip(rows.dropFirst(), [0.5, 0.25, 0.25 * calibrated.allocation!.budgetScales[2]]) {
            let ratio = try #require(row["ratio"] as? Double)
            #expect(ratio <= budget + 0.01 && ratio > budget * 0.8, "\(row)")
        }
    }
}
