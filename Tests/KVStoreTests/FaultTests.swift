import Foundation
import Synchronization
import Testing
import TestSupport
import KVQuantization
import KVSelection
@testable import KVStore

/// Faults during saving (failed and short writes, failed syncs and renames) and an exhausted byte
/// limit: the previous snapshot stays loadable and the store stays consistent.
@Suite struct FaultTests {
    /// File operations that fail the `failAt`-th byte written (or the sync or rename), and write at
    /// most `chunk` bytes per call (short writes).
    static func faulty(failAfterBytes: Int? = nil, chunk: Int = .max, failSync: Bool = false, failRename: Bool = false,
                       calls: CallCounter? = nil) -> SnapshotFileOperations {
        let written = Mutex(0)
        return SnapshotFileOperations(
            write: { fd, p, n in
                calls?.count.withLock { $0 += 1 }
                let allowed = written.withLock { w -> Int in
                    let room = failAfterBytes.map { $0 - w } ?? .max
                    return min(n, chunk, room)
                }
                if allowed <= 0 {
                    errno = ENOSPC
                    return -1
                }
                let done = SnapshotFileOperations.system.write(fd, p, allowed)
                if done > 0 { written.withLock { $0 += done } }
                return done
            },
            fsync: { fd in
                if failSync { errno = EIO; return -1 }
                return SnapshotFileOperations.system.fsync(fd)
            },
            rename: { a, b in
                if failRename { errno = EXDEV; return -1 }
                return SnapshotFileOperations.system.rename(a, b)
            })
    }

    @Test func failedSavesLeaveThePreviousSnapshotLoadable() throws {
        let (store, model) = try SnapshotTests.sample(seed: 5)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kvcrush-faults-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = directory.appendingPathComponent("cache.kvsnap")
        try store.saveSnapshot(to: url)
        let saved = StoreImage(store)
        let first = try Data(contentsOf: url)

        // Change the store, so a successful save would change the file.
        var g = SeededGenerator(seed: 6)
        let id = store.sequences[0], c = store.configuration
        try store.append(id, layer: 0, keys: randomRows(c.kvHeadCount * 3 * c.headDim, using: &g),
                         values: randomRows(c.kvHeadCount * 3 * c.headDim, using: &g))
        let size = store.snapshotBytes().count
        var faults: [(String, SnapshotFileOperations, String)] = []
        for cut in [0, 1, 23, 24, 100, size / 2, size - 1] {
            faults.append(("write fails after \(cut) bytes", Self.faulty(failAfterBytes: cut), "write"))
            faults.append(("short writes of 7 bytes, then failure after \(cut)", Self.faulty(failAfterBytes: cut, chunk: 7), "write"))
        }
        faults.append(("fsync fails", Self.faulty(failSync: true), "fsync"))
        faults.append(("rename fails", Self.faulty(failRename: true), "rename"))
        for (what, ops, operation) in faults {
            do {
                try store.saveSnapshot(to: url, sequences: nil, operations: ops)
                Issue.record("\(what): the save succeeded")
            } catch {
                guard case .io(let op, _, let e) = error else { Issue.record("\(what): \(error)"); continue }
                #expect(op == operation && e != 0, "\(what): \(error)")
            }
            #expect(try Data(contentsOf: url) == first, "\(what): the previous snapshot changed")
            #expect(StoreImage(try KVStore.restoring(from: url)) == saved, "\(what): the previous snapshot no longer restores")
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["cache.kvsnap"], "\(what): temporary file left")
        }

        // Short writes alone are retried until the file is whole.
        let calls = CallCounter()
        try store.saveSnapshot(to: url, sequences: nil, operations: Self.faulty(chunk: 1000, calls: calls))
        #expect(calls.count.withLock { $0 } >= size / 1000)
        #expect(StoreImage(try KVStore.restoring(from: url)) == StoreImage(store))
        _ = model
    }

    /// Appends and plans that hit the byte limit throw and change nothing, at every fill level;
    /// the store keeps matching the model and leaks no page.
    @Test func aFullPoolLeavesTheStoreConsistent() throws {
        var refusals = 0
        try forEachSeededCase(12, base: 9400) { g in
            var config = randomConfiguration(using: &g, channelwiseKeys: Bool.random(using: &g))
            let fp16Page = PageLayout(keyFormat: .fp16, valueFormat: .fp16, headDim: config.headDim, capacity: config.maxPageCapacity(layer: 0)).byteCount
            config.byteLimit = fp16Page * config.kvHeadCount * Int.random(in: 2...6, using: &g)
            let store = try KVStore(config)
            var model = ReferenceStore(configuration: config)
            let first = store.addSequence()
            model.addEmptySequence(first)
            for step in 0..<40 {
                let live = model.sequences.keys.sorted()
                let id = live.randomElement(using: &g)!
                let isPlan = Int.random(in: 0..<3, using: &g) == 0
                // A fork shares pages, so a plan on either copy needs new ones.
                if isPlan, live.count < 3 { model.sequences[store.fork(id)] = model.sequences[id] }
                let before = StoreImage(store)
                do throws(KVStoreError) {
                    if isPlan {
                        let plan = randomPlan(model, id, using: &g)
                        try store.apply(plan, to: id)
                        model.apply(plan, to: id)
                    } else {
                        let n = [1, 3, 9].randomElement(using: &g)!
                        let layer = Int.random(in: 0..<config.layerCount, using: &g)
                        let k = randomRows(config.kvHeadCount * n * config.headDim, using: &g)
                        let v = randomRows(config.kvHeadCount * n * config.headDim, using: &g)
                        try store.append(id, layer: layer, keys: k, values: v)
                        model.append(id, layer: layer, keys: k, values: v)
                    }
                } catch {
                    guard case .byteLimitExceeded = error else { Issue.record("seed \(g.seed): \(error)"); return }
                    refusals += 1
                    #expect(StoreImage(store).sameSequences(as: before) && StoreImage(store).byteCount == before.byteCount,
                            "seed \(g.seed) step \(step): a refused operation changed the store")
                }
                #expect(store.byteCount <= config.byteLimit!, "seed \(g.seed) step \(step): over the limit")
                if model.modelsValues { StoreModelTests.check(store, model, &g, "seed \(g.seed) step \(step)") }
                let pages = livePages(store)
                #expect(pages.count == store.pool.pagesInUse && pages.bytes == store.byteCount, "seed \(g.seed) step \(step): page leak")
            }
        }
        #expect(refusals > 20)
    }

    /// Non-finite and out-of-range values are refused with their index, and nothing changes.
    @Test func unstorableValuesAreRefusedAndChangeNothing() throws {
        let config = SnapshotTests.fixedConfig
        let (store, _) = try SnapshotTests.sample(seed: 8)
        let id = store.sequences[0], n = config.kvHeadCount * 2 * config.headDim
        let before = StoreImage(store)
        for bad in [Float.nan, .infinity, -.infinity, 70000, -1e30] {
            for (keyIndex, valueIndex) in [(n - 1, -1), (-1, 5), (0, 0)] {
                var k = [Float](repeating: 0.5, count: n), v = k
                if keyIndex >= 0 { k[keyIndex] = bad }
                if valueIndex >= 0 { v[valueIndex] = bad }
                #expect(throws: KVStoreError.self) { try store.append(id, layer: 1, keys: k, values: v) }
            }
        }
        #expect(StoreImage(store) == before)
    }
}

final class CallCounter: Sendable {
    let count = Mutex(0)
}
