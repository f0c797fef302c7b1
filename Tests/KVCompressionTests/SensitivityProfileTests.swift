import Foundation
import Testing
import TestSupport
import KVQuantization
import KVSelection
import KVStore
@testable import KVCompression

/// Sensitivity profiles: the JSON round trip, typed errors for every field a file can get wrong,
/// and the allocation: optimal (against brute force), within its byte target, cheapest when nothing
/// fits, never worse with more budget, and budget factors of mean 1 that follow the layers' costs.
@Suite struct SensitivityProfileTests {
    static let keyNames = ["int8/channel", "int4/channel", "int3/channel"]
    static let valueNames = ["lm4", "lm3", "lm2"]

    /// A profile with seeded KLDs: finer formats cost less KLD, and one layer in three is `sharp`×
    /// more sensitive (so allocations have something to find).
    static func profile(layers: Int, seed: UInt64, sharp: Double = 20, drops: [Double] = []) -> SensitivityProfile {
        var g = SeededGenerator(seed: seed)
        func entries(_ names: [String]) -> [SensitivityProfile.Entry] {
            var base = (0..<layers).map { l in Double.random(in: 0.0001...0.001, using: &g) * (l % 3 == 0 ? sharp : 1) }
            return names.map { n in
                defer { base = base.map { $0 * Double.random(in: 2...6, using: &g) } }
                return SensitivityProfile.Entry(format: n, kld: base)
            }
        }
        return SensitivityProfile(model: "synthetic", text: "seed \(seed)", promptTokenCount: 1024, continuationTokenCount: 128,
                                  layerCount: layers, headDim: 64, pageCapacity: 64, rotatesKeys: false, rotatesValues: true,
                                  keys: entries(keyNames), values: entries(valueNames),
                                  drops: drops.map { share in
                                      SensitivityProfile.Drop(keptShare: share, kld: (0..<layers).map { _ in
                                          Double.random(in: 0.0005...0.02, using: &g) * (1 - share) })
                                  })
    }

    /// What one (key, value) choice costs per INT4 token, from the planners' own table.
    static func cost(_ key: String, _ value: String, pageCapacity: Int = 64) -> Int {
        var f = TierFormats.standard
        f.keys[.int4] = StorageFormat(name: key)!
        f.values[.int4] = StorageFormat(name: value)!
        return TierCosts(formats: f, headDim: 64, pageCapacity: pageCapacity).byteCount(.int4)
    }

    @Test func jsonRoundTrip() throws {
        let p = Self.profile(layers: 5, seed: 1)
        let back = try SensitivityProfile(json: p.json())
        #expect(back == p)
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("kvcrush-profile-\(UInt64.random(in: 0...UInt64.max)).json")
        defer { try? FileManager.default.removeItem(at: url) }
        try p.json().write(to: url)
        #expect(try SensitivityProfile(contentsOf: url) == p)
    }

    @Test func badFilesAreTypedErrors() throws {
        let good = Self.profile(layers: 4, seed: 2)
        var cases: [(String, SensitivityProfile)] = []
        var p = good; p.version = 2; cases.append(("version", p))
        p = good; p.layerCount = 0; cases.append(("layerCount", p))
        p = good; p.headDim = 0; cases.append(("headDim", p))
        p = good; p.pageCapacity = 0; cases.append(("pageCapacity", p))
        p = good; p.keys = []; cases.append(("no key candidates", p))
        p = good; p.keys[0].format = "int5/channel"; cases.append(("unknown format", p))
        p = good; p.keys[0].format = "fp16"; cases.append(("fp16 candidate", p))
        p = good; p.values[0].format = "int4/channel"; cases.append(("per-channel values", p))
        p = good; p.values[1].format = p.values[0].format; cases.append(("duplicate", p))
        p = good; p.values[0].kld.removeLast(); cases.append(("short", p))
        p = good; p.keys[1].kld[2] = -1; cases.append(("negative", p))
        p = good; p.keys[0].format = "int4/g20"; cases.append(("group not a multiple of 8", p))
        let withDrops = Self.profile(layers: 4, seed: 2, drops: [0.5, 0.25])
        #expect(throws: Never.self) { try SensitivityProfile(json: withDrops.json()) }
        p = withDrops; p.drops[0].keptShare = 1; cases.append(("kept share 1", p))
        p = withDrops; p.drops[0].keptShare = 0; cases.append(("kept share 0", p))
        p = withDrops; p.drops[1].keptShare = 0.5; cases.append(("kept share twice", p))
        p = withDrops; p.drops[1].kld.append(0); cases.append(("long drops", p))
        p = withDrops; p.drops[1].kld[0] = -0.1; cases.append(("negative drop", p))
        for (name, bad) in cases {
            #expect(throws: SensitivityProfileError.self, "\(name)") { try SensitivityProfile(json: bad.json()) }
        }
        // Non-finite numbers cannot be written as JSON; a file can still spell an overflowing one.
        p = good; p.keys[1].kld[2] = 0.5
        let overflowing = String(decoding: p.json(), as: UTF8.self).replacingOccurrences(of: "0.5,", with: "1e999,")
        #expect(overflowing.contains("1e999"))
        #expect(throws: SensitivityProfileError.self) { try SensitivityProfile(json: Data(overflowing.utf8)) }
        #expect(throws: SensitivityProfileError.self) { try SensitivityProfile(json: Data("{\"version\": 1}".utf8)) }
        #expect(throws: SensitivityProfileError.self) { try SensitivityProfile(json: Data([0xff, 0x00])) }
        #expect(throws: SensitivityProfileError.self) {
            try SensitivityProfile(contentsOf: URL(fileURLWithPath: "/nonexistent/kvcrush/profile.json"))
        }
    }

    /// Against every combination of a 3-layer, 3 × 3-candidate profile (729), at many budgets: the
    /// allocation's summed KLD is the least of any combination whose mean cost fits its target.
    @Test func allocationIsOptimal() {
        for seed in UInt64(1)...12 {
            let p = Self.profile(layers: 3, seed: seed)
            let options = Self.keyNames.indices.flatMap { k in Self.valueNames.indices.map { (k, $0) } }
            for budget in stride(from: 0.15, through: 0.45, by: 0.025) {
                let a = p.allocation(budget: budget, pageCapacity: 64)
                let capacity = Int((a.targetTokenByteCount * 3).rounded(.down))
                var best = Double.infinity
                for o0 in options { for o1 in options { for o2 in options {
                    let picks = [o0, o1, o2]
                    let c = picks.reduce(0) { $0 + Self.cost(Self.keyNames[$1.0], Self.valueNames[$1.1]) }
                    guard c <= capacity else { continue }
                    best = min(best, zip(picks, 0..<3).reduce(0) { $0 + p.keys[$1.0.0].kld[$1.1] + p.values[$1.0.1].kld[$1.1] })
                } } }
                guard best.isFinite else { continue }  // nothing fits: covered by cheapestWhenNothingFits
                #expect(abs(a.predictedKLD - best) <= 1e-12 * max(1, best), "seed \(seed) budget \(budget): \(a.predictedKLD) vs best \(best)")
                let picked = zip(a.keyFormats, a.valueFormats).map { Self.cost($0.0.description, $0.1.description) }
                #expect(Double(picked.reduce(0, +)) <= a.targetTokenByteCount * 3, "seed \(seed) budget \(budget): over the target")
                #expect(abs(a.meanTokenByteCount - Double(picked.reduce(0, +)) / 3) < 1e-9)
            }
        }
    }

    /// With measured drops: against every combination of a 2-layer profile (9 formats × 3 kept shares
    /// per layer), the allocation is optimal, and its kept shares are what it costed.
    @Test func allocationWithDropsIsOptimal() {
        for seed in UInt64(20)...27 {
            let p = Self.profile(layers: 2, seed: seed, drops: [0.5, 0.25])
            let dropKLD: [Double: [Double]] = [1: [0, 0], 0.5: p.drops[0].kld, 0.25: p.drops[1].kld]
            var options: [(Int, Int, Double)] = []
            for k in Self.keyNames.indices { for v in Self.valueNames.indices { for s in [1, 0.5, 0.25] { options.append((k, v, s)) } } }
            func cost(_ o: (Int, Int, Double)) -> Int { Int((o.2 * Double(Self.cost(Self.keyNames[o.0], Self.valueNames[o.1]))).rounded(.up)) }
            for budget in stride(from: 0.06, through: 0.4, by: 0.02) {
                let a = p.allocation(budget: budget, pageCapacity: 64, usingDrops: true)
                let capacity = Int((a.targetTokenByteCount * 2).rounded(.down))
                var best = Double.infinity
                for o0 in options { for o1 in options where cost(o0) + cost(o1) <= capacity {
                    best = min(best, zip([o0, o1], 0..<2).reduce(0) { $0 + p.keys[$1.0.0].kld[$1.1] + p.values[$1.0.1].kld[$1.1] + dropKLD[$1.0.2]![$1.1] })
                } }
                guard best.isFinite else { continue }
                #expect(abs(a.predictedKLD - best) <= 1e-12 * max(1, best), "seed \(seed) budget \(budget): \(a.predictedKLD) vs best \(best)")
                let spent = (0..<2).map { l in Int((a.keptShares[l] * Double(Self.cost(a.keyFormats[l].description, a.valueFormats[l].description))).rounded(.up)) }
                #expect(spent.reduce(0, +) <= capacity && abs(a.meanTokenByteCount - Double(spent.reduce(0, +)) / 2) < 1e-9, "seed \(seed) budget \(budget)")
            }
        }
    }

    /// Without `usingDrops` (the default) every layer keeps everything; an explicit target replaces
    /// the budget's.
    @Test func dropsOnlyWhenAskedAndExplicitTargets() {
        let p = Self.profile(layers: 6, seed: 31, drops: [0.75, 0.5])
        for budget in [0.1, 0.2, 0.3] {
            #expect(p.allocation(budget: budget, pageCapacity: 64).keptShares.allSatisfy { $0 == 1 })
        }
        let own = p.tokenByteCount(key: .channelwise(.int4), value: .lloydMax(.int3), pageCapacity: 64)
        #expect(own == Self.cost("int4/channel", "lm3"))
        #expect(p.cheapestTokenByteCount(pageCapacity: 64) == Self.cost("int3/channel", "lm2"))
        let a = p.allocation(budget: 0.1, pageCapacity: 64, targetTokenByteCount: Double(own))
        #expect(a.targetTokenByteCount == Double(own) && a.meanTokenByteCount <= Double(own))
        #expect(a.meanTokenByteCount > Double(p.cheapestTokenByteCount(pageCapacity: 64)), "seed 31: the target's bytes are spent")
    }

    @Test func cheapestWhenNothingFitsAndMonotoneInBudget() {
        let p = Self.profile(layers: 30, seed: 9)
        let tiny = p.allocation(budget: 0.05, pageCapacity: 64)
        let cheapest = Self.cost("int3/channel", "lm2")
        #expect(zip(tiny.keyFormats, tiny.valueFormats).allSatisfy { Self.cost($0.0.description, $0.1.description) == cheapest })
        var last = Double.infinity
        for budget in stride(from: 0.1, through: 0.6, by: 0.05) {
            let a = p.allocation(budget: budget, pageCapacity: 64)
            #expect(a.predictedKLD <= last + 1e-15, "budget \(budget): more bytes never predict more KLD")
            last = a.predictedKLD
            #expect(a.meanTokenByteCount <= a.targetTokenByteCount || a.keyFormats.allSatisfy { $0 == .channelwise(.int3) })
            // Factors of mean 1, larger where the formats cost more.
            let mean = a.budgetScales.reduce(0, +) / 30
            #expect(abs(mean - 1) < 1e-9)
            let costs = zip(a.keyFormats, a.valueFormats).map { Self.cost($0.0.description, $0.1.description) }
            for i in 0..<30 { for j in 0..<30 where costs[i] < costs[j] { #expect(a.budgetScales[i] < a.budgetScales[j]) } }
        }
        // Plenty of budget: the finest formats everywhere.
        let rich = p.allocation(budget: 0.9, pageCapacity: 64)
        #expect(rich.keyFormats.allSatisfy { $0 == .channelwise(.int8) } && rich.valueFormats.allSatisfy { $0 == .lloydMax(.int4) })
    }

    /// The target: (budget − h)·F / (1 − h), h the plain plan's FP16 share for the expected tokens.
    @Test func targetFollowsTheFP16Share() {
        let p = Self.profile(layers: 4, seed: 3)
        let f = TierCosts(formats: .standard, headDim: 64, pageCapacity: 64).byteCount(.fp16)
        for (n, headroom, top) in [(2048, 16, 0.02), (1536, 0, 0.0), (100, 64, 0.5), (40, 16, 0.02)] {
            let a = p.allocation(budget: 0.25, pageCapacity: 64, headroomTokenCount: headroom, topShare: top, expectedTokenCount: n)
            let protected = Double(min(4 + 32 + headroom, n))
            let h = min(1, (protected + top * (Double(n) - protected)) / Double(n))
            let expected = h >= 1 ? 0 : (0.25 - h) * Double(f) / (1 - h)
            #expect(abs(a.targetTokenByteCount - expected) < 1e-9, "n \(n): \(a.targetTokenByteCount) vs \(expected)")
        }
    }

    /// The sensitive layers (every third) get the finer formats when the budget forces a mix.
    @Test func sensitiveLayersGetTheBytes() {
        let p = Self.profile(layers: 30, seed: 5, sharp: 50)
        let a = p.allocation(budget: 0.25, pageCapacity: 64)
        let costs = zip(a.keyFormats, a.valueFormats).map { Self.cost($0.0.description, $0.1.description) }
        let sharp = stride(from: 0, to: 30, by: 3).map { costs[$0] }, other = (0..<30).filter { $0 % 3 != 0 }.map { costs[$0] }
        #expect(Double(sharp.reduce(0, +)) / Double(sharp.count) > Double(other.reduce(0, +)) / Double(other.count))
    }

    /// The profile the README's figures used (`Fixtures/figures`) is valid and gives the README's
    /// `4x+cal` allocation for a 1,536-token prompt: mixed-width keys in 27 of 30 layers, 2-bit values
    /// in 5; with the protected tokens at FP16 (which leave less for the middle) a smaller target.
    @Test func committedProfileGivesTheREADMEAllocation() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/figures/smollm2-heapq-profile.json")
        let p = try SensitivityProfile(contentsOf: url)
        #expect(p.layerCount == 30 && p.headDim == 64 && p.keyChannels != nil)
        let a = try #require(CompressionPreset.named("4x")!.calibrated(with: p, expectedTokenCount: 1536).allocation)
        let mixed = a.keyFormats.filter { if case .mixedChannelwise = $0 { true } else { false } }.count
        #expect(mixed == 27)
        #expect(a.valueFormats.filter { $0 == .lloydMax(.int2) }.count == 5)
        let fp16 = try #require(CompressionPreset.named("4x")!.protecting(at: .fp16).calibrated(with: p, expectedTokenCount: 1536).allocation)
        #expect(fp16.targetTokenByteCount < a.targetTokenByteCount)
        #expect(a.keptShares.allSatisfy { $0 == 1 })
    }
}
