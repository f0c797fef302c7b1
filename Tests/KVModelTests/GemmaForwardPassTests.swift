import Foundation
@testable import KVModel
import KVStore
import KVCompression
import KVSelection
import KVExperiments
import Testing
import KVQuantization
import TestSupport

@Suite struct GemmaForwardPassTests {
    static let tokens: [Int32] = [2, 17, 33, 0, 9, 9, 31, 5, 38, 12, 7, 22, 1, 4, 4, 19]

    /// A batched prefill through the store matches the naive FP64 pass (QK norms, local/global RoPE,
    /// the window of 4 on layers 0 and 1, pre/post norms, GELU); the store keeps K/V in FP16
    /// (relative rounding 2⁻¹¹), which bounds the agreement. Decoding token by token beyond the
    /// window (local layers evicting) gives the same logits, and the local layers stay bounded.
    @Test func prefillAndDecodeMatchTheNaiveReference() throws {
        let tiny = try TinyGemma()
        let model = try loadLanguageModel(file: tiny.file, threadCount: 2)
        #expect(model is GemmaModel)
        #expect(model.cacheShape.layerSlidingWindows == [TinyGemma.window, TinyGemma.window, nil])
        let reference = try tiny.reference(Self.tokens).flatMap { $0 }
        let store = try KVStore(model.storeConfiguration(pageCapacity: 2))
        let batch = store.addSequence()
        let logits = try model.forward(Self.tokens, sequence: batch, in: store, logits: .all, observer: nil, attentionObserver: nil)
        let err = relativeError(logits, reference)
        #expect(err < 3e-3, "logits relative error \(err)")
        // One chunk of 5, then one token at a time (FP32 decode products: same sums as the batch).
        let exact = try GemmaModel(file: tiny.file, threadCount: 1, quantizesActivations: false)
        let steps = store.addSequence()
        var stepwise = try exact.forward(Array(Self.tokens[0..<5]), sequence: steps, in: store, logits: .all)
        for t in Self.tokens[5...] {
            stepwise += try exact.forward([t], sequence: steps, in: store, logits: .last)
            for l in 0..<2 {
                let held = store.tokenTiers(of: steps, layer: l, kvHead: 0).positions
                #expect(held.count <= TinyGemma.window + 1, "layer \(l) holds \(held.count) tokens")
            }
            #expect(store.tokenTiers(of: steps, layer: 2, kvHead: 0).positions.count == store.nextPosition(of: steps, layer: 2))
        }
        let exactBatch = try exact.forward(Self.tokens, sequence: store.addSequence(), in: store, logits: .all)
        #expect(relativeError(stepwise, exactBatch.map(Double.init)) < 1e-5)
        // 16-bit activations stay close to FP32 (each product within 2⁻¹⁶ of its blocks' largest activation × Σ|w|).
        #expect(relativeError(logits, exactBatch.map(Double.init)) < 1e-3)
    }

    /// The end-to-end protocol runs on it (uniform INT8 and a compressing policy on the windowed
    /// layers), the local layers' budget counting only the tokens they keep.
    @Test func continuationEvaluationRunsWithWindows() throws {
        let tiny = try TinyGemma()
        let model = try GemmaModel(file: tiny.file, threadCount: 1)
        let tokens = (0..<40).map { Int32(($0 * 7 + 3) % TinyGemma.vocabulary) }
        var evaluation = ContinuationEvaluation(model: model, storeConfiguration: model.storeConfiguration(pageCapacity: 4))
        evaluation.chunkTokenCount = 8
        evaluation.observationTokenCount = 4
        // A window of 4 holds no decode headroom within a fraction budget: compress the prompt only.
        evaluation.keepsBudgetDuringDecode = false
        let configurations = try ["uniform-int8", "snapkv"].map {
            EvaluationConfiguration(policy: try PolicyName(parsing: $0), budget: $0 == "snapkv" ? 1.0 : nil, kvCrush: nil,
                                    regions: StreamRegions(sinkTokenCount: 1, recentTokenCount: 2))
        }
        let (_, results) = try evaluation.run(tokens: tokens, promptTokenCount: 24, continuationTokenCount: 12, configurations: configurations)
        #expect(results.count == 3)
        for r in results { #expect(r.perplexity.isFinite && r.perplexityWithFirst.isFinite) }
        #expect(results[2].ratio <= 1 && results[1].ratio < 1)
    }

    /// `KVDump(running:)` on the windowed model: every layer's keys and values in the dump's layout
    /// are the rows the store holds (FP16-rounded; the global layer holds all 40 tokens, the local
    /// ones at least their window), the queries are the observer's of the last 16 positions, the windows
    /// travel in the file, and `eval`'s `full` on it attends over the same window as the store.
    @Test func dumpsCarryTheWindowsAndEvalUsesThem() throws {
        let tiny = try TinyGemma()
        let model = try GemmaModel(file: tiny.file, threadCount: 1)
        let tokens = (0..<40).map { Int32(($0 * 5 + 1) % TinyGemma.vocabulary) }
        let dump = try KVDump(running: model, tokens: tokens, queryCount: 16, model: "tiny-gemma", chunkTokenCount: 8)
        #expect(dump.layers.map(\.slidingWindow) == [TinyGemma.window, TinyGemma.window, nil])
        #expect(dump.metadata["sliding_windows"] == "4,4,none" && dump.tokens == tokens && dump.shape.queryStart == 24)
        let store = try KVStore(model.storeConfiguration())  // the dump's pages (attention's summation order)
        let id = store.addSequence()
        var observed = [Int: [LayerActivations]]()
        for start in stride(from: 0, to: 40, by: 8) {
            _ = try model.forward(Array(tokens[start..<(start + 8)]), sequence: id, in: store, logits: .none,
                                  observer: { observed[$0.layer, default: []].append($0) }, attentionObserver: nil)
        }
        let d = TinyGemma.headDim
        for layer in dump.layers {
            let r = store.rows(id, layer: layer.index, kvHead: 0)
            #expect(layer.slidingWindow != nil ? Set(r.positions).isSuperset(of: (36..<40).map(Int32.init)) : r.count == 40)
            for (k, p) in r.positions.enumerated() {
                let o = layer.kvOffset(kvHead: 0, token: Int(p))
                #expect((0..<d).allSatisfy { Float(Float16(layer.keys[o + $0])) == r.keys[k * d + $0] && Float(Float16(layer.values[o + $0])) == r.values[k * d + $0] },
                        "layer \(layer.index) position \(p)")
            }
            for a in observed[layer.index]! where a.firstPosition >= 24 {
                for h in 0..<TinyGemma.heads {
                    for t in 0..<a.tokenCount {
                        let q = layer.query(head: h, position: a.firstPosition + t)
                        let same = Array(q) == Array(a.queries[((h * a.tokenCount + t) * d)..<((h * a.tokenCount + t + 1) * d)])
                        #expect(same, "layer \(layer.index) head \(h) position \(a.firstPosition + t)")
                    }
                }
            }
        }
        // Written at F16 (so the store holds the dump exactly) and evaluated: `full` is exact up to
        // FP32 arithmetic in every layer, windowed ones included, and keeps all the mass.
        let reloaded = try KVDump(file: SafetensorsFile(data: dump.safetensorsWriter(storing: .f16).serialized()))
        let evaluation = try Evaluation(dump: reloaded, settings: EvaluationSettings(observationWindow: 4, evaluationQueryCount: 8, pageCapacity: 4))
        let results = try evaluation.run(EvaluationConfiguration(policy: try PolicyName(parsing: "full"), budget: nil, kvCrush: nil,
                                                                 regions: StreamRegions(sinkTokenCount: 1, recentTokenCount: 2)))
        for r in results { #expect(r.relErrMax < 1e-5 && r.massKept == 1, "layer \(String(describing: r.layer)): \(r.relErrMax)") }
    }

    @Test func badFilesAreTypedErrors() throws {
        #expect(throws: LlamaModelError.missingTensor("blk.2.post_ffw_norm.weight")) {
            try GemmaModel(file: TinyGemma(skip: "blk.2.post_ffw_norm.weight").file)
        }
        #expect(throws: LlamaModelError.unsupportedArchitecture("llama")) { try GemmaModel(file: TinyLlama().file) }
    }
}
