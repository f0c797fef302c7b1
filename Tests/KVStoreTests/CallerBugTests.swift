import Testing
import KVQuantization
import KVSelection
import KVExperiments
@testable import KVStore

/// Entry points decide between a caller bug (trap with a message) and outside data (typed error).
/// The traps are checked in child processes (exit tests); the typed errors in the other suites.
@Suite struct CallerBugTests {
    static func store() -> (KVStore, SequenceID) {
        let s = try! KVStore(KVStoreConfiguration(layerCount: 1, queryHeadCount: 2, kvHeadCount: 1, headDim: 8, pageCapacity: 4))
        let id = s.addSequence()
        try! s.append(id, layer: 0, keys: [Float](repeating: 1, count: 16), values: [Float](repeating: 1, count: 16))
        return (s, id)
    }

    @Test func callerBugsTrap() async {
        await #expect(processExitsWith: .failure) { CallerBugTests.store().0.removeSequence(SequenceID(rawValue: 99)) }
        await #expect(processExitsWith: .failure) {
            let (s, id) = CallerBugTests.store()
            try? s.append(id, layer: 0, keys: [1, 2, 3], values: [1, 2, 3])  // not a whole token
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = CallerBugTests.store()
            try? s.append(id, layer: 1, keys: [Float](repeating: 0, count: 8), values: [Float](repeating: 0, count: 8))  // no layer 1
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = CallerBugTests.store()
            // Moves position 0 down, then back up.
            try? s.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 0, moves: [.init(position: 0, tier: .int4)])]), to: id)
            try? s.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 0, moves: [.init(position: 0, tier: .int8)])]), to: id)
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = CallerBugTests.store()
            try? s.apply(RetentionPlan(streams: [StreamPlan(layer: 0, kvHead: 0, moves: [.init(position: 7, tier: .dropped)])]), to: id)
        }
        await #expect(processExitsWith: .failure) {
            let (s, id) = CallerBugTests.store()
            _ = s.attend(id, layer: 0, queries: [1, 2, 3])  // wrong query count
        }
        await #expect(processExitsWith: .failure) { _ = CallerBugTests.store().0.snapshotBytes(of: [SequenceID(rawValue: 42)]) }
    }

    /// The same kinds of mistakes arriving as data are typed errors, not traps.
    @Test func outsideDataThrows() throws {
        var c = KVStoreConfiguration(layerCount: 1, queryHeadCount: 3, kvHeadCount: 2, headDim: 8)
        #expect(throws: KVStoreConfigurationError.invalidField("kvHeadCount", "must be positive and divide queryHeadCount 3, got 2")) { try KVStore(c) }
        c.kvHeadCount = 1
        c.headDim = 0
        #expect(throws: KVStoreConfigurationError.self) { try KVStore(c) }
        // Shape fields are bounded so their products cannot overflow (found by the snapshot fuzzer:
        // a restored queryHeadCount near Int.max made attend's buffer size overflow).
        c.headDim = 8
        c.queryHeadCount = 1 << 62
        #expect(throws: KVStoreConfigurationError.invalidField("queryHeadCount", "must be in 1...65536, got \(1 << 62)")) { try KVStore(c) }
        c.queryHeadCount = 1
        c.layerCount = 1 << 40
        #expect(throws: KVStoreConfigurationError.self) { try KVStore(c) }
        let (s, id) = Self.store()
        #expect(throws: KVStoreError.self) { try s.append(id, layer: 0, keys: [Float](repeating: .nan, count: 8), values: [Float](repeating: 0, count: 8)) }
        #expect(throws: SnapshotError.notASnapshot) { try s.loadSnapshot(bytes: Array("{}".utf8) + [UInt8](repeating: 0, count: 30)) }
    }

    /// Every type a serving process shares between threads is `Sendable` (checked at compile time).
    @Test func sharedTypesAreSendable() {
        func sendable<T: Sendable>(_: T.Type) {}
        sendable(KVStore.self)
        sendable(PagePool.self)
        sendable(KVStoreConfiguration.self)
        sendable(SequenceID.self)
        sendable(KVStoreError.self)
        sendable(SnapshotError.self)
        sendable(StreamRows.self)
        sendable(AttentionResult.self)
        sendable(KVStore.AttendRequest.self)
        sendable(RetentionPlan.self)
        sendable(SafetensorsFile.self)
    }
}
