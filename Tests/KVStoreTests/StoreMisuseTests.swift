import Testing
import KVSelection
@testable import KVStore

/// Caller bugs trap with a message (run in a child process by swift-testing's exit tests).
@Suite struct StoreMisuseTests {
    static func store() -> (KVStore, SequenceID) {
        let s = try! KVStore(KVStoreConfiguration(layerCount: 1, queryHeadCount: 2, kvHeadCount: 1, headDim: 4, pageCapacity: 2))
        let id = s.addSequence()
        try! s.append(id, layer: 0, keys: [Float](repeating: 1, count: 12), values: [Float](repeating: 1, count: 12))
        return (s, id)
    }

    @Test func unknownSequenceTraps() async {
        await #expect(processExitsWith: .failure) {
            let (s, _) = StoreMisuseTests.store()
            _ = s.attend(SequenceID(rawValue: 99), layer: 0, queries: [Float](repeating: 0, count: 8))
        }
    }

    @Test func planNamingAnUnknownTokenTraps() async {
        await #expect(processExitsWith: .failure) {
            let (s, id) = StoreMisuseTests.store()
            try? s.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 0, moves: [.init(position: 7, tier: .int4)])]), to: id)
        }
    }

    @Test func planMovingATokenUpTraps() async {
        await #expect(processExitsWith: .failure) {
            let (s, id) = StoreMisuseTests.store()
            try? s.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 0, moves: [.init(position: 1, tier: .int4)])]), to: id)
            try? s.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 0, moves: [.init(position: 1, tier: .int8)])]), to: id)
        }
    }

    @Test func wrongBufferSizeTraps() async {
        await #expect(processExitsWith: .failure) {
            let (s, id) = StoreMisuseTests.store()
            try? s.append(id, layer: 0, keys: [1, 2, 3], values: [1, 2, 3])
        }
    }

    @Test func layerOutOfRangeTraps() async {
        await #expect(processExitsWith: .failure) {
            let (s, id) = StoreMisuseTests.store()
            _ = s.rows(id, layer: 1, kvHead: 0)
        }
    }
}
