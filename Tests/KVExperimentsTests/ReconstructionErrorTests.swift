import Testing
import KVQuantization
@testable import KVExperiments

/// The measurements behind the default formats, on the bundled real tensors.
@Suite struct ReconstructionErrorTests {
    @Test func realDataSupportsTheDefaults() throws {
        let dump = try KVDump(contentsOf: KVDump.bundledFixtureURL, layers: [15])
        let rows = try ReconstructionError.measure(dump, formats: ReconstructionError.standardFormats)
        func err(_ tensor: String, _ f: StorageFormat) -> Double {
            rows.first { $0.tensor == tensor && $0.format == f }!.relativeFrobenius
        }
        for w in CodeWidth.allCases {
            // Keys: per channel beats groups of 32 at the same bytes (32-token pages).
            #expect(StorageFormat.channelwise(w).bytesPerElement(headDim: 64, pageCapacity: 32)
                    == StorageFormat.grouped(w, groupSize: 32).bytesPerElement(headDim: 64))
            #expect(err("keys", .channelwise(w)) * 2 < err("keys", .grouped(w, groupSize: 32)), "\(w)")
            // Values: smaller groups, smaller error.
            #expect(err("values", .grouped(w, groupSize: 32)) < err("values", .grouped(w, groupSize: 64)), "\(w)")
            // And error falls as bits rise.
            if w != .int8 {
                let better = CodeWidth.allCases[CodeWidth.allCases.firstIndex(of: w)! - 1]
                #expect(err("keys", .channelwise(better)) < err("keys", .channelwise(w)))
                #expect(err("values", .grouped(better, groupSize: 32)) < err("values", .grouped(w, groupSize: 32)))
            }
        }
    }

    /// Every real row is within the per-element bound its stored parameters give.
    @Test func realRowsWithinTheirBounds() throws {
        let dump = try KVDump(contentsOf: KVDump.bundledFixtureURL, layers: [1])
        let layer = dump.layers[0], d = dump.shape.headDim
        for format in [StorageFormat.int8, .int4, .int2, .grouped(.int4, groupSize: 64)] {
            let codec = try RowCodec(format, headDim: d)
            for (name, data) in [("keys", layer.keys), ("values", layer.values)] {
                var row = [UInt8](repeating: 0, count: codec.rowByteCount), out = [Float](repeating: 0, count: d)
                var violations = 0
                try data.withUnsafeBufferPointer { x in
                    try row.withUnsafeMutableBytes { r in
                        for t in stride(from: 0, to: data.count / d, by: 7) {
                            try codec.encode(x.baseAddress! + t * d, into: r.baseAddress!)
                            codec.decode(r.baseAddress!, into: &out)
                            guard case .grouped(let w, let g) = format else { continue }
                            for i in 0..<d where abs(out[i] - x[t * d + i]) > codec.parameters(ofGroup: i / g, in: r.baseAddress!).errorBound(width: w) {
                                violations += 1
                            }
                        }
                    }
                }
                #expect(violations == 0, "\(format) \(name)")
            }
        }
    }
}
