import Foundation
import KVCompression
import KVModel
import KVQuantization
import KVSelection
import KVStore

/// Measures a `SensitivityProfile` on a model (`kvcrush calibrate`): per layer and per candidate
/// format, the mean KL divergence of the next-token distributions when that layer alone keeps its
/// middle tokens' keys (or values) in the format, against the FP16 cache.
///
/// Protocol (the same as `ContinuationEvaluation`'s): prefill `promptTokenCount` tokens at FP16;
/// per (layer, format) a fork of that prompt moves the layer's middle tokens (all but the sinks and
/// the recent window, every KV head) to the format, the other half of each token (values when
/// measuring keys, keys when measuring values) staying FP16; then the next `continuationTokenCount`
/// tokens are teacher-forced through one-token decode steps (appended at FP16) and scored against
/// the FP16 run, `continuationTokenCount − 1` predictions.
///
/// Dropping: per (layer, kept share `s`), a fork keeps only the best `s` of the layer's middle tokens
/// by SnapKV score over the prompt's last `observationTokenCount` queries (the plain plan's ranking,
/// in whole pages, the kept ones at FP16) and drops the rest; `layerCount · |keptShares|` more
/// continuations.
///
/// Candidates share stores three at a time (the store's INT8, INT4 and INT2 tiers hold three
/// candidate formats, whose order of cost does not matter to a store), so keys and values need
/// ⌈|keys|/3⌉ + ⌈|values|/3⌉ prefills and `layerCount · (|keys| + |values|)` continuations.
///
/// - Complexity: about `layerCount · (|keys| + |values|) · continuationTokenCount` decode steps.
public struct SensitivityCalibration {
    /// The model measured.
    public let model: any CausalLanguageModel
    /// Store pages (per-channel key parameters are per page).
    public var pageCapacity = 64
    /// Sinks and recent window left at FP16 (the plans' regions).
    public var regions = StreamRegions()
    /// Whether quantised keys / values are rotated (`RotationSettings`, seed 0).
    public var rotatesKeys = false, rotatesValues = true
    /// Prefill chunk size.
    public var chunkTokenCount = 512
    /// Kept shares whose dropping cost is measured per layer (each in (0, 1); empty: none).
    public var keptShares: [Double] = [0.75, 0.5, 0.25]
    /// Prompt queries that score tokens for the drop measurements (SnapKV's observation window).
    public var observationTokenCount = 32

    public init(model: any CausalLanguageModel) {
        self.model = model
    }

    /// Measures every candidate in every layer.
    ///
    /// - Parameters:
    ///   - modelName, textName: provenance written into the profile.
    ///   - progress: called with a line per store and per layer.
    /// - Precondition: `promptTokenCount ≥ 1`, `continuationTokenCount ≥ 2` and both fit in `tokens`;
    ///   candidates are not FP16, valid for the head dim, values not per channel.
    ///   - mixedKeyBits: average bits of mixed-width per-channel key candidates (`mixB/channel`): the
    ///     prompt's `KeyChannelStatistics` are measured first and each layer's widths allocated from
    ///     them; the profile keeps the statistics.
    public func run(tokens: [Int32], promptTokenCount: Int, continuationTokenCount: Int,
                    keyFormats: [StorageFormat], mixedKeyBits: [Double] = [], valueFormats: [StorageFormat], modelName: String,
                    textName: String, progress: ((String) -> Void)? = nil) throws -> SensitivityProfile {
        precondition(promptTokenCount >= 1 && continuationTokenCount >= 2 && promptTokenCount + continuationTokenCount <= tokens.count,
                     "SensitivityCalibration.run: \(promptTokenCount) + \(continuationTokenCount) tokens do not fit in \(tokens.count)")
        precondition(!(keyFormats.isEmpty && mixedKeyBits.isEmpty) && !valueFormats.isEmpty, "SensitivityCalibration.run: no candidate formats")
        precondition(!(keyFormats + valueFormats).contains(.fp16), "SensitivityCalibration.run: fp16 is the reference, not a candidate")
        precondition(!valueFormats.contains { $0.isPageWise }, "SensitivityCalibration.run: values cannot be per channel")
        let base = model.storeConfiguration(pageCapacity: pageCapacity)
        let layers = base.layerCount
        let evaluation = ContinuationEvaluation(model: model, storeConfiguration: base)
        let prompt = Array(tokens[0..<promptTokenCount])
        let continuation = Array(tokens[promptTokenCount..<(promptTokenCount + continuationTokenCount)])
        let middle = regions.split(tokenCount: promptTokenCount).middle
        var reference: ContinuationEvaluation.Reference?
        var valueKLD = [[Double]](repeating: [Double](repeating: 0, count: layers), count: valueFormats.count)
        let slots: [Tier] = [.int8, .int4, .int2]
        var keyChannels: KeyChannelStatistics?
        if !mixedKeyBits.isEmpty {
            keyChannels = try KeyChannelStatistics(running: model, tokens: prompt, pageCapacity: pageCapacity,
                                                   skippedTokenCount: regions.sinkTokenCount, chunkTokenCount: chunkTokenCount)
        }
        // Each candidate's format per layer (mixed widths differ between layers).
        let keyCandidates: [(name: String, layers: [StorageFormat])] = keyFormats.map { f in (f.description, Array(repeating: f, count: layers)) }
            + mixedKeyBits.map { b in
                let perLayer = (0..<layers).map { l -> StorageFormat in
                    guard let w = keyChannels!.widths(layer: l, averageBits: b) else {
                        preconditionFailure("SensitivityCalibration.run: \(b) bits is not a whole number of bytes per row of \(base.headDim)")
                    }
                    return .mixedChannelwise(w)
                }
                return (perLayer[0].description, perLayer)
            }
        let valueCandidates = valueFormats.map { f in (name: f.description, layers: Array(repeating: f, count: layers)) }
        var keyKLD = [[Double]](repeating: [Double](repeating: 0, count: layers), count: keyCandidates.count)
        for measuringValues in [false, true] {
            let candidates = measuringValues ? valueCandidates : keyCandidates
            for first in stride(from: 0, to: candidates.count, by: slots.count) {
                let group = Array(candidates[first..<min(first + slots.count, candidates.count)])
                var c = base
                c.tierFormats.pageCapacities = [:]
                c.layerTierFormats = (0..<layers).map { l in
                    var t = c.tierFormats
                    for (i, tier) in slots.enumerated() {
                        let f = group[min(i, group.count - 1)].layers[l]
                        t.keys[tier] = measuringValues ? .fp16 : f
                        t.values[tier] = measuringValues ? f : .fp16
                    }
                    return t
                }
                c.rotation = RotationSettings(keys: !measuringValues && rotatesKeys ? .all : .none,
                                              values: measuringValues && rotatesValues ? .all : .none)
                let store = try KVStore(c)
                let sequence = store.addSequence()
                _ = try model.prefill(prompt, sequence: sequence, in: store, chunkTokenCount: chunkTokenCount, observationTokenCount: 0)
                if reference == nil {
                    let fork = store.fork(sequence)
                    reference = try evaluation.decode(continuation, sequence: fork, in: store, hook: nil, reference: nil).reference
                    store.removeSequence(fork)
                    progress?(String(format: "reference: perplexity %.4f", reference!.perplexity))
                }
                for layer in 0..<layers {
                    var line = "\(measuringValues ? "values" : "keys") layer \(layer):"
                    for (i, f) in group.enumerated() {
                        let fork = store.fork(sequence)
                        defer { store.removeSequence(fork) }
                        // The middle positions the layer still holds (a sliding-window layer keeps only its last ones).
                        let plan = RetentionPlan(streams: (0..<c.kvHeadCount).map { h in
                            let held = store.tokenTiers(of: fork, layer: layer, kvHead: h).positions
                            return StreamPlan(layer: layer, kvHead: h, moves: held.filter { middle.contains(Int($0)) }
                                .map { StreamPlan.Move(position: $0, tier: slots[i]) })
                        })
                        try store.apply(plan, to: fork)
                        let d = try evaluation.decode(continuation, sequence: fork, in: store, hook: nil, reference: reference)
                        let kld = max(0, d.klSum / Double(continuationTokenCount - 1))
                        if measuringValues { valueKLD[first + i][layer] = kld } else { keyKLD[first + i][layer] = kld }
                        line += String(format: " %@ %.6f", f.name, kld)
                    }
                    progress?(line)
                }
            }
        }
        var dropKLD = [[Double]](repeating: [Double](repeating: 0, count: layers), count: keptShares.count)
        if !keptShares.isEmpty {
            precondition(keptShares.allSatisfy { $0 > 0 && $0 < 1 }, "SensitivityCalibration.run: kept shares must be in (0, 1)")
            // Every tier FP16: the plain plan's INT4 tier then only says "kept".
            var c = base
            for tier in slots {
                c.tierFormats.keys[tier] = .fp16
                c.tierFormats.values[tier] = .fp16
            }
            c.tierFormats.pageCapacities = [:]
            let store = try KVStore(c)
            let sequence = store.addSequence()
            let (_, observation) = try model.prefill(prompt, sequence: sequence, in: store, chunkTokenCount: chunkTokenCount,
                                                     observationTokenCount: min(observationTokenCount, promptTokenCount))
            let protectedCount = promptTokenCount - middle.count
            for layer in 0..<layers {
                var line = "drops layer \(layer):"
                for (i, share) in keptShares.enumerated() {
                    let fork = store.fork(sequence)
                    defer { store.removeSequence(fork) }
                    // Layer `layer` may keep its protected tokens and `share` of the middle; the others everything.
                    var scales = [Double](repeating: 4, count: layers)
                    scales[layer] = (Double(protectedCount) + share * Double(middle.count)) / Double(promptTokenCount)
                    let settings = CompressionSettings(policy: .snapKV(), regions: regions, budget: .fraction(1),
                                                       planner: .plain(topShare: 0, tier: .int4), layerBudgetScales: scales)
                    try KVCompressor(store: store, settings: settings).compressPrefill(fork, observation: observation)
                    let d = try evaluation.decode(continuation, sequence: fork, in: store, hook: nil, reference: reference)
                    dropKLD[i][layer] = max(0, d.klSum / Double(continuationTokenCount - 1))
                    line += String(format: " keep %.2f %.6f", share, dropKLD[i][layer])
                }
                progress?(line)
            }
        }
        return SensitivityProfile(
            model: modelName, text: textName, promptTokenCount: promptTokenCount, continuationTokenCount: continuationTokenCount,
            layerCount: layers, headDim: base.headDim, pageCapacity: pageCapacity, rotatesKeys: rotatesKeys, rotatesValues: rotatesValues,
            keys: zip(keyCandidates, keyKLD).map { SensitivityProfile.Entry(format: $0.0.name, kld: $0.1) },
            values: zip(valueFormats, valueKLD).map { SensitivityProfile.Entry(format: $0.0.description, kld: $0.1) },
            drops: zip(keptShares, dropKLD).map { SensitivityProfile.Drop(keptShare: $0.0, kld: $0.1) }, keyChannels: keyChannels)
    }
}
