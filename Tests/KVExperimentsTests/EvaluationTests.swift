import Foundation
import Testing
import TestSupport
import KVSelection
import KVCompression
@testable import KVExperiments

/// A small synthetic dump whose keys, values and queries are FP16-exact, so the store's FP16 tier
/// holds them without rounding: 4 query heads over 2 KV heads, headDim 16, 160 tokens, queries for
/// the last 64 (observation window 96..<128, evaluation queries 128..<160).
func syntheticDump(seed: UInt64, layers: [Int] = [0, 3], tokenCount: Int = 160) -> KVDump {
    var g = SeededGenerator(seed: seed)
    let shape = try! KVDumpShape(headCount: 4, kvHeadCount: 2, headDim: 16, tokenCount: tokenCount, queryStart: tokenCount - 64)
    func tensor(_ n: Int, scale: Double) -> [Float] { (0..<n).map { _ in Float(Float16(g.nextGaussian() * scale)) } }
    return KVDump(model: "synthetic", shape: shape, layers: layers.map { l in
        // Keys with a few strong tokens so attention is peaked, as in real models.
        var keys = tensor(shape.kvElementCount, scale: 1)
        for h in 0..<2 { for t in [0, 17, 40, 77] { for i in 0..<16 { keys[(h * tokenCount + t) * 16 + i] *= 4 } } }  // exact
        // Values with a non-zero mean, as real ones have, so outputs are not near zero.
        return KVDumpLayer(index: l, shape: shape, keys: keys, values: tensor(shape.kvElementCount, scale: 1).map { Float(Float16($0 + 1)) },
                           queries: tensor(shape.queryElementCount, scale: 1))
    })
}

let testSettings = EvaluationSettings(observationWindow: 32, evaluationQueryCount: 32, pageCapacity: 16)
/// 4 sinks and 12 recent tokens: one FP16 page of 16 slots, so a quarter of a 128-token prompt leaves
/// bytes for the middle.
let testRegions = StreamRegions(sinkTokenCount: 4, recentTokenCount: 12)

func configuration(_ name: String, budget: Double? = nil, crush: KVCrushSettings? = nil) throws -> EvaluationConfiguration {
    EvaluationConfiguration(policy: try PolicyName(parsing: name), budget: budget, kvCrush: crush, regions: testRegions)
}

@Suite struct EvaluationTests {
    /// A windowed layer (W = 20) is evaluated over its window, in the store and in the FP64
    /// reference: `full` is then exact up to FP32 arithmetic within `ReferenceAttention`'s bound over
    /// the window only (the unwindowed reference differs by far more), keeps all the reference's
    /// mass, and its FP16 reference is what the layer holds uncompressed after the prompt (the pages
    /// a later query can see, as in a model's prefill); the unwindowed layer is unchanged.
    @Test func slidingWindowLayersAttendOverTheirWindow() throws {
        let base = syntheticDump(seed: 9)
        let w = 20
        let dump = KVDump(model: "synthetic", shape: base.shape, layers: base.layers.enumerated().map { i, l in
            KVDumpLayer(index: l.index, shape: l.shape, keys: l.keys, values: l.values, queries: l.queries, slidingWindow: i == 0 ? w : nil)
        })
        let evaluation = try Evaluation(dump: dump, settings: testSettings)
        #expect(evaluation.storeConfiguration.layerSlidingWindows == [w, nil])
        let results = try evaluation.run(configuration("full"))
        let s = dump.shape, p = evaluation.promptTokenCount, d = s.headDim
        var worstBound = 0.0, unwindowedGap = 0.0
        let layer = dump.layers[0]
        for h in 0..<s.headCount {
            let kv = s.kvHead(forQueryHead: h)
            let keys = Array(layer.keys(kvHead: kv)), values = Array(layer.values(kvHead: kv))
            for i in 0..<32 {
                let q = Array(layer.query(head: h, position: p + i))
                let r = ReferenceAttention(q: q, keys: keys, values: values, visible: (0..<s.tokenCount).map { layer.visibleRange(queryPosition: p + i).contains($0) },
                                           scale: 1 / Float(d).squareRoot(), pageCount: 2 * s.tokenCount / testSettings.pageCapacity)
                let full = ReferenceAttention(q: q, keys: keys, values: values, visible: (0..<s.tokenCount).map { $0 <= p + i },
                                              scale: 1 / Float(d).squareRoot(), pageCount: 2 * s.tokenCount / testSettings.pageCapacity)
                let norm = r.output.reduce(0) { $0 + $1 * $1 }.squareRoot()
                worstBound = max(worstBound, r.bound.reduce(0) { $0 + $1 * $1 }.squareRoot() / norm)
                unwindowedGap = max(unwindowedGap, zip(r.output, full.output).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }.squareRoot() / norm)
            }
        }
        let windowed = results.first { $0.layer == 0 }!, other = results.first { $0.layer == 3 }!
        #expect(windowed.relErrMax <= Double(worstBound), "relErr \(windowed.relErrMax) above the bound \(worstBound)")
        #expect(unwindowedGap > 100 * Double(worstBound), "the window must matter in this test: gap \(unwindowedGap)")
        #expect(windowed.massKept == 1)
        let fp16Page = 16 * (2 * 2 * 16) + 48  // keys + values at FP16 plus the page's positions (16 slots)
        // After the prompt the windowed layer keeps the pages holding p − W + 1 … p − 1 (whole pages of 16).
        let held = p - (p - w + 1) / 16 * 16
        #expect(held == 32 && windowed.fp16ByteCount == 2 * ((held + 15) / 16) * fp16Page && other.fp16ByteCount == 2 * (p / 16) * fp16Page)
        #expect(windowed.tokenCounts[.fp16] == 2 * held && windowed.tokenCounts[.dropped] == 0 && windowed.ratio == 1)
        #expect(other.relErrMax < 1e-5)
    }

    /// `full` keeps every token at FP16. The dump is FP16-exact, so the store reads back exactly the
    /// reference's keys and values and the only error is FP32 arithmetic: every sample is within
    /// `ReferenceAttention`'s derived bound (‖bound‖ / ‖o‖ per sample). No token is lost, so
    /// massKept is exactly 1, and the bytes are exactly the FP16 bytes.
    @Test func fullPolicyIsExactUpToFP32Arithmetic() throws {
        let dump = syntheticDump(seed: 1)
        let evaluation = try Evaluation(dump: dump, settings: testSettings)
        let results = try evaluation.run(configuration("full"))
        #expect(results.map(\.layer) == [nil, 0, 3])
        // The bound, per sample, from the same FP16-exact rows.
        let s = dump.shape, p = evaluation.promptTokenCount, d = s.headDim
        var worstBound = 0.0
        for layer in dump.layers {
            for h in 0..<s.headCount {
                let kv = s.kvHead(forQueryHead: h)
                let keys = Array(layer.keys(kvHead: kv)), values = Array(layer.values(kvHead: kv))
                for i in 0..<32 {
                    let r = ReferenceAttention(q: Array(layer.query(head: h, position: p + i)), keys: keys, values: values,
                                               visible: (0..<s.tokenCount).map { $0 <= p + i }, scale: 1 / Float(d).squareRoot(),
                                               pageCount: 2 * s.tokenCount / testSettings.pageCapacity)
                    let norm = r.output.reduce(0) { $0 + $1 * $1 }.squareRoot()
                    worstBound = max(worstBound, r.bound.reduce(0) { $0 + $1 * $1 }.squareRoot() / norm)
                }
            }
        }
        for r in results {
            #expect(r.relErrMax <= worstBound, "\(r.relErrMax) > derived bound \(worstBound)")
            #expect(r.relErrMean <= r.relErrP95 && r.relErrP95 <= r.relErrMax)
            #expect(r.massKept == 1)
            #expect(r.byteCount == r.fp16ByteCount && r.ratio == 1)
            #expect(r.tokenCounts[.dropped] == 0 && r.tokenCounts[.fp16] == p * s.kvHeadCount * (r.layer == nil ? 2 : 1))
        }
        #expect(worstBound < 1e-3)
    }

    /// Uniform baselines keep every token (massKept 1) at one tier, with error growing as bits fall;
    /// budgeted policies lose mass, stay within budget plus the page slack, and account for every
    /// prompt token.
    @Test func baselinesAndBudgetedPolicies() throws {
        let dump = syntheticDump(seed: 2)
        let evaluation = try Evaluation(dump: dump, settings: testSettings)
        let p = evaluation.promptTokenCount, streams = 2 * 2
        var uniform: [Double] = []
        for t in ["uniform-int8", "uniform-int4", "uniform-int2"] {
            let r = try evaluation.run(configuration(t))[0]
            #expect(r.massKept == 1 && r.tokenCounts[.dropped] == 0)
            #expect(r.tokenCounts.values.reduce(0, +) == p * streams)
            uniform.append(r.relErrMean)
        }
        #expect(uniform[0] < uniform[1] && uniform[1] < uniform[2], "\(uniform)")
        let crush = KVCrushSettings(share: 0.5, representativeTier: .int4, anchor: .alternate)
        for (name, k) in [("snapkv", nil), ("snapkv+kvcrush", crush), ("streaming", nil), ("tiered", nil), ("h2o+mikv", nil)] as [(String, KVCrushSettings?)] {
            let r = try evaluation.run(configuration(name, budget: 0.25, crush: k))[0]
            #expect(r.massKept < 1 || name.contains("mikv"), "\(name)")
            #expect(r.tokenCounts.values.reduce(0, +) == p * streams, "\(name)")
            // Per stream, in whole pages (staging pages included), within the budget.
            #expect(r.byteCount <= streams * Int(0.25 * Double(p * (2 * 2 * 16 + 4))), "\(name): \(r.byteCount)")
            if k != nil { #expect(r.tokenCounts[.int4]! > 0, "\(name) keeps INT4 representatives") }
            // (INT2 costs more than a quarter of FP16 at headDim 16, so MiKV's floor does not fit and
            // the best middle tokens that fit stay at INT2, the others are dropped.)
            if name.contains("mikv") { #expect(r.tokenCounts[.int2]! > 0) }
        }
    }

    /// The protocol's limits are typed errors.
    @Test func settingsAndPoliciesAreChecked() throws {
        let dump = syntheticDump(seed: 3, layers: [0])
        #expect(throws: EvaluationError.notEnoughQueries(neededFrom: 64, queryStart: 96)) {
            try Evaluation(dump: dump, settings: EvaluationSettings(observationWindow: 64))
        }
        let evaluation = try Evaluation(dump: dump, settings: testSettings)
        #expect(throws: EvaluationError.self) { try evaluation.run(configuration("snapkv", budget: 0.01)) }
        for bad in ["nope", "snapkv+bar", "full+kvcrush", "uniform-int4+mikv", "h2o+kvcrush+kvcrush", "h2o+int2", "tiered+int2+mikv", "", "streaming+tiered", "tiered+tiered"] {
            #expect(throws: PolicyError.self, "\(bad)") { try PolicyName(parsing: bad) }
        }
        #expect(try PolicyName(parsing: "tiered+mikv+kvcrush").description == "tiered+kvcrush+mikv")
        #expect(try PolicyName(parsing: "h2o+kvcrush+tiered+int2").description == "h2o+tiered+kvcrush+int2")
        // Sinks and window that do not fit the prompt (128 tokens) are a setting error.
        var wide = try configuration("snapkv", budget: 0.5)
        wide.regions = StreamRegions(sinkTokenCount: 100, recentTokenCount: 29)
        #expect(throws: EvaluationError.self) { try evaluation.run(wide) }
    }

    /// The table, CSV and JSON carry the same figures, and the JSON has exactly the documented schema.
    @Test func reportFormatsAgree() throws {
        let dump = syntheticDump(seed: 4)
        let evaluation = try Evaluation(dump: dump, settings: testSettings)
        let configs = evaluationConfigurations(
            policies: try ["full", "snapkv", "snapkv+kvcrush", "uniform-int4"].map { try PolicyName(parsing: $0) },
            budgets: [0.25, 0.5], crushShares: [0.3], representativeTiers: [.fp16, .int4], anchors: [.alternate], regions: testRegions)
        #expect(configs.count == 2 + 2 * 3)
        let report = try evaluation.run(configs, dumpName: "synthetic.safetensors")
        #expect(report.results.count == configs.count * 3)

        let object = try #require(try JSONSerialization.jsonObject(with: Data(report.json().utf8)) as? [String: Any])
        #expect(Set(object.keys) == ["dump", "model", "results"])
        #expect(object["dump"] as? String == "synthetic.safetensors" && object["model"] as? String == "synthetic")
        let results = try #require(object["results"] as? [[String: Any]])
        #expect(results.count == report.results.count)
        let csvLines = report.csv().split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        #expect(csvLines[0] == EvaluationReport.csvColumns)
        let table = report.table()
        for (i, (json, r)) in zip(results, report.results).enumerated() {
            #expect(Set(json.keys) == Set(EvaluationReport.jsonResultKeys))
            let tokens = try #require(json["tokens"] as? [String: Int])
            #expect(Set(tokens.keys) == ["fp16", "int8", "int4", "int2", "dropped"])
            #expect(json["policy"] as? String == r.policy)
            #expect((json["layer"] is NSNull) == (r.layer == nil))
            #expect((json["budget"] is NSNull) == (r.budget == nil) && (json["repFormat"] is NSNull) == (r.representativeTier == nil))
            let csv = csvLines[i + 1]
            #expect(csv.count == EvaluationReport.csvColumns.count)
            // CSV and JSON print the shortest decimal that reads back exactly (Foundation's JSON
            // parser may be an ulp off, so the JSON text is compared, and the parsed value loosely).
            let line = report.json().split(separator: "\n")[i + 1]
            for (key, column, value) in [("relErrMean", 6, r.relErrMean), ("relErrP95", 7, r.relErrP95), ("relErrMax", 8, r.relErrMax),
                                         ("massKept", 9, r.massKept), ("ratio", 12, r.ratio)] {
                #expect(Double(csv[column]) == value, "\(key)")
                #expect(line.contains("\"\(key)\": \(value.description)"), "\(key)")
                let j = try #require(json[key] as? Double)
                #expect(abs(j - value) <= 1e-14 * abs(value), "\(key)")
            }
            #expect(json["bytes"] as? Int == r.byteCount && Int(csv[10]) == r.byteCount && Int(csv[11]) == r.fp16ByteCount)
            #expect(tokens["dropped"] == r.tokenCounts[.dropped] && Int(csv[17]) == r.tokenCounts[.dropped])
            if r.layer == nil {
                // The overall row appears in the table with the same rounded figures.
                let row = table.split(separator: "\n").first { $0.hasPrefix(r.label + " ") && $0.contains(String(format: "%8.4f", r.ratio)) }
                #expect(row?.contains(String(format: "%12.5f", r.relErrMean)) == true, "\(r.label)")
            }
        }
        let svg = report.plot().svg()
        #expect(svg.hasPrefix("<svg") && svg.contains("snapkv+kvcrush (int4 reps, share 0.3)") && svg.contains("uniform INT8 / INT4 / INT2"))
    }

    /// The bundled fixture, cheaply (debug builds are slow): layer 29 cut to its first KV head and
    /// that head's 3 query heads, 8 evaluation queries. Full is exact up to arithmetic (the fixture is FP16), SnapKV at a
    /// quarter of the bytes loses some attention mass and some accuracy.
    @Test func bundledFixture() throws {
        let source = try KVDump(contentsOf: KVDump.bundledFixtureURL, layers: [29])
        let s = source.shape, layer = source.layers[0]
        let shape = try KVDumpShape(headCount: s.groupSize, kvHeadCount: 1, headDim: s.headDim, tokenCount: s.tokenCount, queryStart: s.queryStart)
        let dump = KVDump(model: source.model, shape: shape, layers: [
            KVDumpLayer(index: 29, shape: shape, keys: Array(layer.keys(kvHead: 0)), values: Array(layer.values(kvHead: 0)),
                        queries: Array(layer.queries.prefix(shape.queryElementCount))),
        ])
        // 8 observation and 8 evaluation queries instead of 32 and 32: the store's SIMD read path is
        // slow unoptimised, and the protocol's code paths are the same.
        let evaluation = try Evaluation(dump: dump, settings: EvaluationSettings(observationWindow: 8, evaluationQueryCount: 8))
        #expect(evaluation.promptTokenCount == 2040)
        let full = try evaluation.run(configuration("full"))[0]
        #expect(full.relErrMax < 1e-4 && full.massKept == 1 && full.ratio == 1)
        let snap = try evaluation.run(configuration("snapkv", budget: 0.25))[0]
        #expect(snap.massKept < 1 && snap.relErrMean > full.relErrMean && snap.relErrMean < 0.5)
        // Whole pages within the budget (a quarter of 2040 tokens' FP16 bytes; the ratio is to the
        // 2048 slots of whole FP16 pages), and close to it.
        #expect(snap.ratio <= 0.25 * 2040 / 2048 && snap.ratio > 0.23, "\(snap.ratio)")
    }
}
