import Foundation
import Testing
import TestSupport
import KVQuantization
import KVSelection
import KVExperiments
@testable import KVStore

/// The fuzz targets' seed corpora (Fixtures/fuzz): every snapshot seed restores and every
/// safetensors seed parses, so the fuzzers start from valid inputs. With
/// `KVCRUSH_WRITE_FUZZ_SEEDS=1` the seeds are written first (after a format change). The
/// `legacy-v3-*` snapshot seeds are the same stores as written by format version 3, kept so the
/// fuzzer reaches the legacy parser too (they are not rewritten).
@Suite struct FuzzSeedTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/fuzz")

    /// Small stores of several shapes: row-wise and channelwise keys, forks, plans, a byte limit.
    static func snapshotSeeds() throws -> [(String, [UInt8])] {
        var seeds = [(String, [UInt8])]()
        let empty = try KVStore(KVStoreConfiguration(layerCount: 1, queryHeadCount: 1, kvHeadCount: 1, headDim: 8, pageCapacity: 2))
        seeds.append(("empty-store", empty.snapshotBytes()))
        _ = empty.addSequence()
        seeds.append(("empty-sequence", empty.snapshotBytes()))
        var g = SeededGenerator(seed: 31)
        for (name, channelwise, steps) in [("rowwise-small", false, 6), ("rowwise", false, 14), ("channelwise-small", true, 6), ("channelwise", true, 14)] {
            var config = randomConfiguration(using: &g, channelwiseKeys: channelwise)
            config.headDim = min(config.headDim, 16)
            config.pageCapacity = min(config.pageCapacity, 4)
            let (store, _) = try randomPopulatedStore(config, steps: steps, using: &g)
            seeds.append((name, store.snapshotBytes()))
        }
        let (fixed, _) = try SnapshotTests.sample(seed: 4)
        seeds.append(("mixed-tiers-forks", fixed.snapshotBytes()))
        // The newer format kinds: mixed-width keys (their widths in the file), INT3 per-channel keys
        // with rotated Lloyd–Max values, and per-layer sliding windows.
        let shaped: [(String, KVStoreConfiguration)] = [
            ("mixed-width-keys", MixedWidthTierTests.configuration(20)),
            ("int3-keys-rotated-lloydmax", KVStoreConfiguration(
                layerCount: 1, queryHeadCount: 2, kvHeadCount: 1, headDim: 16, pageCapacity: 4,
                tierFormats: TierFormats(keys: [.fp16: .fp16, .int8: .channelwise(.int8), .int4: .channelwise(.int3), .int2: .int2],
                                         values: [.fp16: .fp16, .int8: .int8, .int4: .lloydMax(.int3), .int2: .int2]),
                rotation: RotationSettings(keys: .all, values: .all, seed: 3))),
            ("sliding-windows", {
                var c = KVStoreConfiguration(layerCount: 2, queryHeadCount: 2, kvHeadCount: 1, headDim: 8, pageCapacity: 4)
                c.layerSlidingWindows = [6, nil]
                return c
            }()),
        ]
        for (name, config) in shaped {
            let (store, _) = try randomPopulatedStore(config, steps: 12, using: &g)
            seeds.append((name, store.snapshotBytes()))
        }
        return seeds
    }

    static func safetensorsSeeds() -> [(String, [UInt8])] {
        var w = SafetensorsWriter(metadata: ["format": "pt"])
        w.add(.float32([1, -2.5, 3e-20, 4], shape: [2, 2]), named: "f32")
        w.add(.float16([0.5, -1, 65504] as [Float], shape: [3]), named: "f16")
        w.add(.bfloat16([1, 2, 3, 4, 5, 6], shape: [2, 1, 3]), named: "bf16")
        w.add(.int32([7, -8], shape: [2]), named: "i32")
        w.add(.float32([42], shape: []), named: "scalar")
        w.add(.float16([Float](), shape: [0, 4]), named: "empty")
        var kv = SafetensorsWriter()
        kv.add(.float16((0..<64).map { Float($0) / 8 }, shape: [1, 2, 4, 8]), named: "layer0.keys")
        kv.add(.float16((0..<64).map { -Float($0) / 8 }, shape: [1, 2, 4, 8]), named: "layer0.values")
        return [("mixed-dtypes", Array(w.serialized())), ("kv-dump-like", Array(kv.serialized())),
                ("header-only", Array(SafetensorsWriter().serialized()))]
    }

    @Test func seedsAreValidInputs() throws {
        let write = ProcessInfo.processInfo.environment["KVCRUSH_WRITE_FUZZ_SEEDS"] == "1"
        let fm = FileManager.default
        if write {
            for (dir, seeds, ext) in [("snapshot", try Self.snapshotSeeds(), "kvsnap"), ("safetensors", Self.safetensorsSeeds(), "safetensors")] {
                let d = Self.root.appendingPathComponent(dir)
                try fm.createDirectory(at: d, withIntermediateDirectories: true)
                for (name, bytes) in seeds { try Data(bytes).write(to: d.appendingPathComponent("\(name).\(ext)")) }
            }
            // store-ops: the bytes drive choices; any bytes are valid, a few shapes to start from.
            let d = Self.root.appendingPathComponent("store-ops")
            try fm.createDirectory(at: d, withIntermediateDirectories: true)
            var g = SeededGenerator(seed: 5)
            for i in 0..<4 {
                let bytes = (0..<(64 << i)).map { _ in UInt8.random(in: 0...255, using: &g) }
                try Data(bytes).write(to: d.appendingPathComponent("random-\(64 << i).bin"))
            }
        }
        let snapshots = try fm.contentsOfDirectory(atPath: Self.root.appendingPathComponent("snapshot").path).sorted()
        #expect(snapshots.count >= 5)
        for name in snapshots {
            let bytes = try [UInt8](Data(contentsOf: Self.root.appendingPathComponent("snapshot/\(name)")))
            #expect(throws: Never.self, "snapshot seed \(name)") { _ = try KVStore.restoring(bytes: bytes) }
        }
        let safetensors = try fm.contentsOfDirectory(atPath: Self.root.appendingPathComponent("safetensors").path).sorted()
        #expect(safetensors.count >= 3)
        for name in safetensors {
            let data = try Data(contentsOf: Self.root.appendingPathComponent("safetensors/\(name)"))
            #expect(throws: Never.self, "safetensors seed \(name)") { _ = try SafetensorsFile(data: data) }
        }
    }
}
