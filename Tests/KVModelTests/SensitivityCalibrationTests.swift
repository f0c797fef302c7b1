import Foundation
@testable import KVModel
import KVCompression
import KVExperiments
import KVQuantization
import KVSelection
import Testing
import TestSupport

/// `SensitivityCalibration` on the tiny random Llama: a valid profile (one finite, non-negative KLD
/// per layer and candidate), coarser codes never cheaper in model error than finer ones, and the
/// profile's allocation usable by a calibrated preset on that model's store.
@Suite struct SensitivityCalibrationTests {
    @Test func profileOfTheTinyModel() throws {
        let tiny = try TinyLlama()
        let model = try LlamaModel(file: tiny.file, threadCount: 2)
        var g = SeededGenerator(seed: 21)
        let tokens = (0..<40).map { _ in Int32.random(in: 0..<Int32(TinyLlama.vocabulary), using: &g) }
        var calibration = SensitivityCalibration(model: model)
        calibration.pageCapacity = 8
        calibration.regions = StreamRegions(sinkTokenCount: 1, recentTokenCount: 4)
        let keys: [StorageFormat] = [.channelwise(.int8), .channelwise(.int4), .channelwise(.int2), .grouped(.int2, groupSize: 16)]
        let values: [StorageFormat] = [.lloydMax(.int4), .lloydMax(.int2)]
        let p = try calibration.run(tokens: tokens, promptTokenCount: 32, continuationTokenCount: 6, keyFormats: keys, valueFormats: values,
                                    modelName: "tiny", textName: "seed 21")
        try p.validate()
        #expect(p.layerCount == TinyLlama.layers && p.headDim == TinyLlama.headDim && p.pageCapacity == 8)
        #expect(p.keys.map(\.format) == keys.map(\.description) && p.values.map(\.format) == values.map(\.description))
        #expect(!p.rotatesKeys && p.rotatesValues)
        // 8-bit codes move the model less than 2-bit ones in every layer (seed 21; the gap is orders
        // of magnitude: INT2's step is 85x INT8's).
        for l in 0..<p.layerCount {
            #expect(p.keys[0].kld[l] < p.keys[2].kld[l], "seed 21 layer \(l): int8 keys \(p.keys[0].kld[l]) vs int2 \(p.keys[2].kld[l])")
            #expect(p.values[0].kld[l] < p.values[1].kld[l], "seed 21 layer \(l): lm4 values vs lm2")
        }
        // The profile survives JSON and drives a calibrated preset on this model's store.
        let back = try SensitivityProfile(json: p.json())
        #expect(back == p)
        let preset = CompressionPreset.named("4x")!.calibrated(with: back, expectedTokenCount: 32)
        let c = preset.configure(model.storeConfiguration(pageCapacity: 8))
        try c.validate()
        #expect(c.layerTierFormats?.count == TinyLlama.layers)
    }
}
