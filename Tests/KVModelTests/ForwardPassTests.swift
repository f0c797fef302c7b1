import Foundation
@testable import KVModel
import KVSelection
import KVStore
import KVCompression
import KVExperiments
import Testing
import KVQuantization
import TestSupport

@Suite struct ForwardPassTests {
    static let tokens: [Int32] = [3, 17, 42, 0, 9, 9, 31, 5, 48, 12, 7, 22, 1]

    /// Batched prefill through the store matches the naive FP64 pass on the file's own layout
    /// (interleaved RoPE on the stored Q/K rows), so unpermuting + rotate-half is right. The store
    /// keeps K/V in FP16 (relative rounding 2⁻¹¹), which bounds the agreement.
    @Test func prefillMatchesTheNaiveReference() throws {
        let tiny = try TinyLlama()
        let model = try LlamaModel(file: tiny.file, threadCount: 2)
        let store = try KVStore(model.storeConfiguration(pageCapacity: 4))
        let seq = store.addSequence()
        var layer0Keys = [Float]()
        let logits = try model.forward(Self.tokens, sequence: seq, in: store, logits: .all) { a in
            if a.layer == 0 { layer0Keys = a.keys }
        }
        let ref = try tiny.reference(Self.tokens)
        let err = relativeError(logits, ref.logits.flatMap { $0 })
        #expect(err < 3e-3, "logits relative error \(err)")
        // Layer 0 keys, before any FP16 rounding, in Hugging Face order: HF index s·D/2 + j = file index 2j + s;
        // from FP32 products (the 16-bit activations' error is `QuantizedPanelTests`' business).
        let exact = try LlamaModel(file: tiny.file, threadCount: 2, quantizesActivations: false)
        _ = try exact.forward(Self.tokens, sequence: store.addSequence(), in: store, logits: .none) { a in
            if a.layer == 0 { layer0Keys = a.keys }
        }
        let d = TinyLlama.headDim, n = Self.tokens.count
        var permuted = [Double](repeating: 0, count: ref.keys[0].count)
        for kv in 0..<TinyLlama.kvHeads {
            for t in 0..<n {
                for j in 0..<(d / 2) {
                    for s in 0..<2 { permuted[(kv * n + t) * d + s * d / 2 + j] = ref.keys[0][(kv * n + t) * d + 2 * j + s] }
                }
            }
        }
        #expect(relativeError(layer0Keys, permuted) < 1e-5)
        #expect(store.nextPosition(of: seq, layer: 1) == n)
    }

    /// Chunked prefill and one-token decode in FP32 give the logits of one batched prefill (the
    /// products are the same sums; the store's FP16 keys and values are the same bits).
    @Test func chunkedPrefillAndDecodeAgreeWithOneBatch() throws {
        let tiny = try TinyLlama()
        let model = try LlamaModel(file: tiny.file, threadCount: 1, quantizesActivations: false)
        let store = try KVStore(model.storeConfiguration(pageCapacity: 4))
        let whole = store.addSequence(), pieces = store.addSequence()
        let all = try model.forward(Self.tokens, sequence: whole, in: store, logits: .all)
        var stepwise = try model.forward(Array(Self.tokens[0..<5]), sequence: pieces, in: store, logits: .all)
        stepwise += try model.forward(Array(Self.tokens[5..<8]), sequence: pieces, in: store, logits: .all)
        for t in Self.tokens[8...] { stepwise += try model.forward([t], sequence: pieces, in: store, logits: .last) }
        #expect(relativeError(stepwise, all.map(Double.init)) < 1e-5)
        // Thread count does not change the result.
        let threaded = try LlamaModel(file: tiny.file, threadCount: 3, quantizesActivations: false)
        let s3 = store.addSequence()
        #expect(try threaded.forward(Self.tokens, sequence: s3, in: store, logits: .all) == all)
    }

    /// (FP32 decode, so that the last one-token chunk computes what the batch does.)
    @Test func prefillKeepsTheObservationWindowAndGenerationIsGreedy() throws {
        let tiny = try TinyLlama()
        let model = try LlamaModel(file: tiny.file, quantizesActivations: false)
        let store = try KVStore(model.storeConfiguration(pageCapacity: 4))
        let a = store.addSequence()
        let (last, window) = try model.prefill(Self.tokens, sequence: a, in: store, chunkTokenCount: 4, observationTokenCount: 6)
        #expect(window.positions == Array(7..<13).map(Int32.init))
        #expect(window.queries.count == TinyLlama.layers && window.queries[0].count == TinyLlama.heads * 6 * TinyLlama.headDim)
        let b = store.addSequence()
        var observed = [Float]()
        let all = try model.forward(Self.tokens, sequence: b, in: store, logits: .all) { if $0.layer == 1 { observed = $0.queries } }
        #expect(relativeError(last, all.suffix(TinyLlama.vocabulary).map(Double.init)) < 1e-5)
        let n = Self.tokens.count, d = TinyLlama.headDim
        for h in 0..<TinyLlama.heads {
            let expected = observed[((h * n + 7) * d)..<((h * n + n) * d)].map(Double.init)
            #expect(relativeError(Array(window.queries[1][(h * 6 * d)..<((h + 1) * 6 * d)]), expected) < 1e-5)
        }
        // Greedy generation = argmax, fed back.
        let c = store.addSequence()
        let generated = try model.generate(prompt: Self.tokens, maxTokenCount: 5, sequence: c, in: store)
        let dseq = store.addSequence()
        var logits = try model.forward(Self.tokens, sequence: dseq, in: store)
        var manual = [Int32]()
        for _ in 0..<5 {
            manual.append(NextTokenStatistics.argmax(logits[...]))
            logits = try model.forward([manual.last!], sequence: dseq, in: store)
        }
        #expect(generated == manual)
        let stop = manual.firstIndex(of: manual[1])!
        #expect(try model.generate(prompt: Self.tokens, maxTokenCount: 5, sequence: store.addSequence(), in: store, stopTokens: [manual[1]]) == Array(manual[0...stop]))
    }

    @Test func continuationProtocolOnUniformFormats() throws {
        let tiny = try TinyLlama()
        let model = try LlamaModel(file: tiny.file)
        let tokens = (0..<40).map { Int32(($0 * 7 + 3) % TinyLlama.vocabulary) }
        let evaluation = ContinuationEvaluation(model: model, storeConfiguration: model.storeConfiguration(pageCapacity: 8))
        let configurations = try ["uniform-int8", "uniform-int4", "uncompressed"].map {
            EvaluationConfiguration(policy: try PolicyName(parsing: $0), budget: nil, kvCrush: nil)
        }
        let (prefill, results) = try evaluation.run(tokens: tokens, promptTokenCount: 32, continuationTokenCount: 8,
                                                    configurations: configurations)
        #expect(prefill.tokenCount == 32)
        #expect(results.map(\.configuration.policy.description) == ["uncompressed", "uniform-int8", "uniform-int4"])
        let (base, int8, int4) = (results[0], results[1], results[2])
        #expect(base.meanKLDivergence == 0 && base.top1Agreement == 1 && base.ratio == 1 && base.perplexityDelta == 0)
        #expect(int8.byteCount < base.byteCount && int4.byteCount < int8.byteCount)
        #expect(int8.meanKLDivergence >= 0 && int8.meanKLDivergence < int4.meanKLDivergence)
        #expect(int4.ratio < 0.5)
        for r in results { #expect(r.perplexity.isFinite && r.perplexity > 1 && (0...1).contains(r.top1Agreement)) }
        // The frontier plot: the uniform formats as one reference line, the reference left out.
        let svg = ContinuationEvaluation.plot(results, title: "tiny")
        #expect(svg.hasPrefix("<svg") && svg.contains("uniform INT8 / INT4 / INT2") && !svg.contains(">full<"))
        #expect(svg.components(separatedBy: "<polyline").count - 1 >= 1, "the uniform line")
    }

    /// A KVSelection policy through the compressor: the prompt is compressed to the budget and the
    /// decode session keeps the cache below the uncompressed one while it grows; without the decode
    /// budget the cache grows past the compressed prompt.
    @Test func compressorPolicyKeepsTheBudget() throws {
        let tiny = try TinyLlama()
        let model = try LlamaModel(file: tiny.file)
        let tokens = (0..<72).map { Int32(($0 * 11 + 5) % TinyLlama.vocabulary) }
        var evaluation = ContinuationEvaluation(model: model, storeConfiguration: model.storeConfiguration(pageCapacity: 4))
        evaluation.observationTokenCount = 8
        let regions = StreamRegions(sinkTokenCount: 2, recentTokenCount: 4)
        let snap = EvaluationConfiguration(policy: try PolicyName(parsing: "snapkv", observationWindow: 8), budget: 0.5, kvCrush: nil, regions: regions)
        let crush = EvaluationConfiguration(policy: try PolicyName(parsing: "h2o+kvcrush"), budget: 0.5,
                                            kvCrush: KVCrushSettings(share: 0.25, representativeTier: .int4, anchor: .random(seed: 0)), regions: regions)
        let (_, results) = try evaluation.run(tokens: tokens, promptTokenCount: 48, continuationTokenCount: 24, configurations: [snap])
        evaluation.keepsBudgetDuringDecode = false
        let (_, unbounded) = try evaluation.run(tokens: tokens, promptTokenCount: 48, continuationTokenCount: 24, configurations: [crush])
        let (base, s, c) = (results[0], results[1], unbounded[1])
        #expect(s.byteCount < base.byteCount && s.ratio < 0.75)
        #expect(s.peakByteCount < base.finalByteCount && s.finalByteCount < base.finalByteCount)
        #expect(c.byteCount < base.byteCount && c.finalByteCount > c.byteCount)  // no decode budget: the cache grows
        for r in [s, c] { #expect(r.meanKLDivergence >= 0 && r.meanKLDivergence.isFinite) }
    }

    @Test func badModelFilesAreTypedErrors() throws {
        #expect(throws: LlamaModelError.unsupportedArchitecture("gpt2")) { try LlamaModel(file: TinyLlama(architecture: "gpt2").file) }
        #expect(throws: LlamaModelError.missingTensor("blk.1.ffn_up.weight")) { try LlamaModel(file: TinyLlama(skip: "blk.1.ffn_up.weight").file) }
    }

    /// Finite weights can still give queries no attention can score (here a norm weight of 10³³):
    /// the forward pass throws `KVStoreError.invalidQuery` before the layer's keys and values are
    /// appended (the store is unchanged), where `attend` itself would trap.
    @Test func overflowingQueriesAreTypedErrors() throws {
        let model = try LlamaModel(file: TinyLlama(scaled: ["blk.0.attn_norm.weight": 1e33]).file, threadCount: 1)
        let store = try KVStore(model.storeConfiguration(pageCapacity: 4))
        let id = store.addSequence()
        #expect {
            _ = try model.forward([1, 2, 3], sequence: id, in: store)
        } throws: { error in
            guard case .invalidQuery(layer: 0, head: 0, token: 0, let norm)? = error as? KVStoreError else { return false }
            return !(norm <= store.configuration.maximumQueryL1Norm)
        }
        #expect(store.byteCount == 0 && store.nextPosition(of: id, layer: 0) == 0)
    }

    /// Products of several matrices in one call equal one call each, whatever the thread count; a
    /// batch's rows equal one-vector FP32 products of each row.
    @Test func matrixProductsDoNotDependOnGroupingThreadsOrBatch() throws {
        let tiny = try TinyLlama()
        let file = tiny.file
        let q = WeightMatrix(file.tensor("blk.0.attn_q.weight")!, in: file), k = WeightMatrix(file.tensor("blk.0.attn_k.weight")!, in: file)
        let embd = WeightMatrix(file.tensor("token_embd.weight")!, in: file)
        var g = SeededGenerator(seed: 11)
        let count = 5, x = RowFamily.gaussian.row(count * TinyLlama.embedding, using: &g)
        for quantized in [false, true] {
            let one = MatrixProducts(file: file, threadCount: 1, quantizesActivations: quantized, path: .current)
            let three = MatrixProducts(file: file, threadCount: 3, quantizesActivations: quantized, path: .current)
            let together = three.apply([q, k, embd], to: x, count: count)
            #expect(together == [one.apply([q], to: x, count: count)[0], one.apply([k], to: x, count: count)[0], one.apply([embd], to: x, count: count)[0]])
            let first = Array(x[0..<TinyLlama.embedding])
            #expect(one.apply([q, k], to: first, count: 1) == three.apply([q, k], to: first, count: 1))
            if !quantized {
                for t in 0..<count {
                    let row = Array(x[(t * TinyLlama.embedding)..<((t + 1) * TinyLlama.embedding)])
                    #expect(one.apply([embd], to: row, count: 1)[0] == Array(together[2][(t * embd.rows)..<((t + 1) * embd.rows)]))
                }
            }
        }
        // The embedding lookup is the dequantised rows.
        let all = try file.floats("token_embd.weight")
        let rows = MatrixProducts(file: file, threadCount: 1, quantizesActivations: true, path: .current).rows(of: embd, [3, 0, 49])
        #expect(rows == Array(all[(3 * 64)..<(4 * 64)] + all[0..<64] + all[(49 * 64)..<(50 * 64)]))
    }

    @Test func statisticsOfDistributions() {
        let logits: [Float] = [1, 2, 3, 0]
        let lp = NextTokenStatistics.logSoftmax(logits[...])
        #expect(abs(lp.map(exp).reduce(0, +) - 1) < 1e-12)
        #expect(abs(NextTokenStatistics.logProbability(of: 2, in: logits[...]) - lp[2]) < 1e-12)
        #expect(NextTokenStatistics.argmax(logits[...]) == 2)
        #expect(NextTokenStatistics.klDivergence(lp, lp) == 0)
        let other = NextTokenStatistics.logSoftmax(([3, 2, 1, 0] as [Float])[...])
        #expect(NextTokenStatistics.klDivergence(lp, other) > 0)
    }
}
