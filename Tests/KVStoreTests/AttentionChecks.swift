import Testing
import TestSupport
import KVQuantization
@testable import KVStore

extension KVStore {
    /// Checks an `attend` output of `layer` against FP64 attention over what the row reader returns
    /// (`rows`), element by element within `ReferenceAttention`'s derived bound (FP32 arithmetic,
    /// the VNNI query split where per-channel keys are scored in int8, the integer value split
    /// where values are accumulated in the integer domain, the rotations of rotated tiers). `output`
    /// and `queries` are
    /// `[queryHead][query][headDim]`, `positions` the queries' positions.
    func expectAttentionWithinBound(_ id: SequenceID, layer: Int, queries q: [Float], queryCount: Int, positions: [Int32],
                                    output: [Float], _ context: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let c = configuration, d = c.headDim
        for kv in 0..<c.kvHeadCount {
            let rows = self.rows(id, layer: layer, kvHead: kv)
            let rotatedKeys = rows.tiers.map { $0 != .fp16 && c.rotatesKeys(layer: layer) }
            let rotatedValues = rows.tiers.map { $0 != .fp16 && c.rotatesValues(layer: layer) }
            let valueRotation = c.rotatesValues(layer: layer) ? c.rotation.rotation(layer: layer, values: true, headDim: d) : nil
            let pageCount = pageCounts(of: id, layer: layer, kvHead: kv).values.reduce(0, +)
            for h in (kv * c.groupSize)..<((kv + 1) * c.groupSize) {
                for i in 0..<queryCount {
                    let start = (h * queryCount + i) * d
                    let qrow = Array(q[start..<(start + d)])
                    let ref = ReferenceAttention(q: qrow, keys: rows.keys, values: rows.values,
                                                 visible: rows.positions.map { $0 <= positions[i] }, scale: c.effectiveAttentionScale,
                                                 pageCount: pageCount, scoreErrors: vnniScoreErrors(id, layer: layer, kvHead: kv, query: qrow),
                                                 valueFormats: rows.tiers.map { c.tierFormats(layer: layer).valueFormat($0) },
                                                 rotatedKeys: rotatedKeys, rotatedValues: rotatedValues, valueRotation: valueRotation)
                    for e in 0..<d {
                        #expect(abs(Double(output[start + e]) - ref.output[e]) <= ref.bound[e] + 1e-30,
                                "\(context): head \(h) query \(i) element \(e)", sourceLocation: sourceLocation)
                    }
                }
            }
        }
    }
}
