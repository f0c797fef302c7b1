import Dispatch
import Foundation
import Synchronization
import Testing
import TestSupport
import KVQuantization
import KVSelection
@testable import KVStore

/// Several threads using one store at once: each owns its sequences (forked from one shared
/// prompt, so they start out sharing pages) and appends, plans, forks, removes, reads, attends and
/// snapshots them, checking every read bit-exactly against its own model; a reader thread
/// meanwhile reads the shared prompt and snapshots the whole store. Run under ThreadSanitizer with
///
///     swift test --sanitize=thread --filter ConcurrencyStressTests
///
/// `KVCRUSH_STRESS_OPS` sets the operations per worker (default 150).
@Suite struct ConcurrencyStressTests {
    static let workers = 4

    @Test func concurrentUseOfOneStoreMatchesPerThreadModels() throws {
        let opsPerWorker = ProcessInfo.processInfo.environment["KVCRUSH_STRESS_OPS"].flatMap(Int.init) ?? 150
        let config = KVStoreConfiguration(
            layerCount: 2, queryHeadCount: 4, kvHeadCount: 2, headDim: 16, pageCapacity: 4,
            tierFormats: TierFormats(keys: [.fp16: .fp16, .int8: .int8, .int4: .grouped(.int4, groupSize: 8), .int2: .int2],
                                     values: [.fp16: .fp16, .int8: .int8, .int4: .int4, .int2: .int2]))
        let store = try KVStore(config)
        var g = SeededGenerator(seed: 77)
        var promptModel = ReferenceStore(configuration: config)
        let prompt = store.addSequence()
        promptModel.addEmptySequence(prompt)
        for layer in 0..<2 {
            let k = randomRows(2 * 9 * 16, using: &g), v = randomRows(2 * 9 * 16, using: &g)
            try store.append(prompt, layer: layer, keys: k, values: v)
            promptModel.append(prompt, layer: layer, keys: k, values: v)
        }
        let promptRows = (0..<2).flatMap { l in (0..<2).map { h in store.rows(prompt, layer: l, kvHead: h) } }
        let log = StressLog()
        let promptSequence = promptModel.sequences[prompt]!

        let reader = Thread {
            var reads = 0
            while !log.done.load(ordering: .acquiring) {
                for l in 0..<2 {
                    for h in 0..<2 where store.rows(prompt, layer: l, kvHead: h).keys != promptRows[l * 2 + h].keys {
                        log.failures.withLock { $0.append("reader: the shared prompt changed") }
                    }
                }
                let bytes = store.snapshotBytes()
                if (try? KVStore.parse(bytes, into: config)) == nil { log.failures.withLock { $0.append("reader: a concurrent snapshot is invalid") } }
                _ = store.attend(prompt, layer: 1, queries: [Float](repeating: 0.1, count: 4 * 16))
                reads += 4
            }
            log.operations.withLock { $0 += reads }
        }
        reader.start()

        DispatchQueue.concurrentPerform(iterations: Self.workers) { worker in
            var g = SeededGenerator(seed: 7700 + UInt64(worker))
            var model = ReferenceStore(configuration: config)
            var mine = [store.fork(prompt)]
            model.sequences[mine[0]] = promptSequence
            func fail(_ s: String) { log.failures.withLock { $0.append("worker \(worker): \(s)") } }
            for step in 0..<opsPerWorker {
                let id = mine.randomElement(using: &g)!
                do {
                    switch Int.random(in: 0..<10, using: &g) {
                    case 0 where mine.count < 3:
                        let f = store.fork(id)
                        model.sequences[f] = model.sequences[id]
                        mine.append(f)
                    case 1 where mine.count > 1:
                        store.removeSequence(id)
                        model.sequences[id] = nil
                        mine.removeAll { $0 == id }
                    case 2:
                        let plan = randomPlan(model, id, using: &g)
                        try store.apply(plan, to: id)
                        model.apply(plan, to: id)
                    case 3:
                        // Snapshot my sequences and check they restore to what the model says.
                        let restored = try KVStore.restoring(bytes: store.snapshotBytes(of: mine))
                        for s in mine {
                            for l in 0..<2 {
                                for h in 0..<2 where restored.rows(s, layer: l, kvHead: h).keys.map(\.bitPattern)
                                    != model.sequences[s]!.streams[l][h].sorted(by: { $0.key < $1.key }).flatMap(\.value.key).map(\.bitPattern) {
                                    fail("step \(step): restored snapshot of \(s) differs")
                                }
                            }
                        }
                    default:
                        let layer = Int.random(in: 0..<2, using: &g), n = Int.random(in: 1...5, using: &g)
                        let k = randomRows(2 * n * 16, using: &g), v = randomRows(2 * n * 16, using: &g)
                        try store.append(id, layer: layer, keys: k, values: v)
                        model.append(id, layer: layer, keys: k, values: v)
                    }
                } catch {
                    fail("step \(step): \(error)")
                }
                // Read back one stream and attend.
                let l = Int.random(in: 0..<2, using: &g), h = Int.random(in: 0..<2, using: &g)
                let check = mine.randomElement(using: &g)!
                let rows = store.rows(check, layer: l, kvHead: h)
                let expected = model.sequences[check]!.streams[l][h].sorted { $0.key < $1.key }
                if rows.positions != expected.map(\.key) || rows.keys.map(\.bitPattern) != expected.flatMap(\.value.key).map(\.bitPattern)
                    || rows.values.map(\.bitPattern) != expected.flatMap(\.value.value).map(\.bitPattern) {
                    fail("step \(step): rows of \(check) layer \(l) head \(h) differ from the model")
                }
                if store.byteCount(of: check) != model.byteCount(check) { fail("step \(step): bytes of \(check)") }
                let out = store.attend(check, layer: l, queries: randomRows(4 * 16, using: &g), threadCount: 2).output
                if !out.allSatisfy(\.isFinite) { fail("step \(step): attend gave a non-finite output") }
            }
            for s in mine { store.removeSequence(s) }
            log.operations.withLock { $0 += 3 * opsPerWorker }
        }
        log.done.store(true, ordering: .releasing)
        while !reader.isFinished { Thread.sleep(forTimeInterval: 0.001) }

        #expect(log.failures.withLock { $0 } == [])
        #expect(store.sequences == [prompt])
        let live = livePages(store)
        #expect(live.count == store.pool.pagesInUse && live.bytes == store.byteCount, "page leak or miscount")
        store.removeSequence(prompt)
        #expect(store.byteCount == 0 && store.pool.pagesInUse == 0)
        print("ConcurrencyStressTests: \(log.operations.withLock { $0 }) operations on \(Self.workers) workers + 1 reader")
    }
}

/// Shared between the stress test's threads.
final class StressLog: Sendable {
    let failures = Mutex([String]())
    let operations = Mutex(0)
    let done = Atomic(false)
}
