import Foundation
import Testing
import TestSupport
@testable import KVStore
#if canImport(Glibc)
import Glibc
#endif

/// The child process of these tests (Tests/KVStoreProbe, built beside the test bundle).
enum Probe {
    static var executable: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("KVStoreProbe")
    }

    static func fnv1a(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    /// Runs the probe with `arguments` and returns the lines it printed. With `killAfter`
    /// (microseconds), the probe is killed with SIGKILL that long after its first line.
    static func run(_ arguments: [String], killAfter delay: UInt32? = nil) throws -> [Substring] {
        try #require(FileManager.default.isExecutableFile(atPath: executable.path), "build the tests first: \(executable.path)")
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw POSIXError(.EIO) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        var pid: pid_t = 0
        let cArgs = ([executable.path] + arguments).map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        let status = posix_spawn(&pid, executable.path, &actions, nil, cArgs, environ)
        close(fds[1])
        guard status == 0 else { close(fds[0]); throw POSIXError(POSIXErrorCode(rawValue: status) ?? .EIO) }
        var output = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        func readSome() -> Bool {
            let n = read(fds[0], &chunk, chunk.count)
            if n > 0 { output += chunk[0..<n] }
            return n > 0
        }
        if let delay {
            // Up to the first line (`ready`: the probe has loaded the previous file), then kill.
            while !output.contains(UInt8(ascii: "\n")), readSome() {}
            usleep(delay)
            kill(pid, SIGKILL)
        }
        while readSome() {}
        close(fds[0])
        var wstatus: Int32 = 0
        waitpid(pid, &wstatus, 0)
        return String(decoding: output, as: UTF8.self).split(separator: "\n")
    }
}

/// Crash safety of `saveSnapshot` against a real kill: a child process (`KVStoreProbe save-loop`)
/// saves snapshots of a changing store to one file in a loop and is killed with SIGKILL at a random
/// moment, many times (each child first loads what its predecessor left). After every kill the file
/// must load and be byte for byte either the last snapshot the child finished saving or the one it
/// had begun; the temporary file a kill leaves behind must not stop later saves, and a later save
/// removes it. `KVCRUSH_KILL_COUNT` (default 12, for CI) and `KVCRUSH_KILL_SEED` set the run.
@Suite struct SnapshotKillTests {
    @Test func snapshotsSurviveSIGKILL() throws {
        let environment = ProcessInfo.processInfo.environment
        let kills = environment["KVCRUSH_KILL_COUNT"].flatMap { Int($0) } ?? 12
        let seed = environment["KVCRUSH_KILL_SEED"].flatMap { UInt64($0) } ?? 20261201
        print("SnapshotKillTests: \(kills) kills, seed \(seed)")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kvcrush-kill-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = directory.appendingPathComponent("store.kvsnap")
        var g = SeededGenerator(seed: seed)
        var fileHash: UInt64?  // of the file as the previous child left it
        var saves = 0, midSave = 0, leftovers = 0, previousTemporaries = Set<String>()
        for kill in 0..<kills {
            // Delays from a few ms to ~0.3 s: kills before the first save ends, in writes, syncs and renames.
            let delay = UInt32.random(in: 0...300_000, using: &g)
            let lines = try Probe.run(["save-loop", url.path, String(seed &+ UInt64(kill))], killAfter: delay)
            try #require(lines.first == "ready", "kill \(kill): the child did not start (\(lines.prefix(3)))")
            // The hashes the file may have: the last finished save's, or the begun one's.
            var finished = fileHash, begun: UInt64?, completed = 0
            for line in lines.dropFirst() {
                let f = line.split(separator: " ")
                if f.first == "begin", f.count == 3 { begun = UInt64(f[2], radix: 16) }
                if f.first == "done" { finished = begun; begun = nil; saves += 1; completed += 1 }
            }
            if begun != nil { midSave += 1 }
            guard FileManager.default.fileExists(atPath: url.path) else {
                #expect(finished == nil, "kill \(kill): a finished save left no file")
                continue
            }
            let bytes = try [UInt8](Data(contentsOf: url))
            let hash = Probe.fnv1a(bytes)
            #expect(hash == finished || hash == begun, "kill \(kill) (delay \(delay) µs): the file is neither the previous nor the new snapshot")
            let restored = try KVStore.restoring(bytes: bytes)
            #expect(restored.snapshotBytes() == bytes, "kill \(kill): the file does not restore to its own contents")
            fileHash = hash
            let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            #expect(names.filter { !$0.hasPrefix(".store.kvsnap.tmp-") } == ["store.kvsnap"], "kill \(kill): \(names)")
            // A completed save removes dead writers' temporary files, so at most the killed child's own
            // remains; a child killed before completing one adds its own to those before it.
            let temporaries = Set(names.filter { $0.hasPrefix(".store.kvsnap.tmp-") })
            let allowed = completed > 0 ? 1 : previousTemporaries.count + 1
            #expect(temporaries.count <= allowed, "kill \(kill): temporary files \(names)")
            leftovers += temporaries.subtracting(previousTemporaries).count
            previousTemporaries = temporaries
        }
        // A later save in this process succeeds and removes what the last kill left.
        let store = try KVStore.restoring(from: url)
        try store.saveSnapshot(to: url)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["store.kvsnap"])
        print("SnapshotKillTests: \(kills) kills, \(saves) completed saves, \(midSave) kills during a save, \(leftovers) temporary files left by kills (removed by a later save)")
        #expect(saves > 0)
    }
}

/// A byte limit bounds real memory: thousands of short sequences (each stream one page, which the
/// pool would otherwise give a block of 16 slots) in a process of their own (`KVStoreProbe
/// short-sequences`) until the limit refuses one; the pool's footprint and the process's resident
/// memory grow by at most the limit plus a stated constant.
@Suite struct MemoryBoundTests {
    @Test func shortSequencesStayWithinTheByteLimit() throws {
        let limit = 48 << 20
        let lines = try Probe.run(["short-sequences", String(limit), "20000", "7"])
        let f = try #require(lines.first?.split(separator: " "), "no output")
        var v = [String: Int]()
        for k in stride(from: 0, to: f.count - 1, by: 2) { v[String(f[k])] = Int(f[k + 1]) }
        let sequences = try #require(v["sequences"]), used = try #require(v["bytesInUse"]), reserved = try #require(v["reserved"])
        let grown = try #require(v["rssAfter"]) - (try #require(v["rssBefore"]))
        print("MemoryBoundTests: \(sequences) sequences, \(used) bytes in use, \(reserved) reserved, resident +\(grown) bytes (limit \(limit))")
        #expect(sequences >= 2000, "the limit should take thousands of short sequences")
        #expect(used <= limit)
        // The bound: the limit's pages in 64-byte-rounded slots, plus the pool's constant for its one
        // page layout: two slabs (the one past the limit and the huge-page rounding of the smaller
        // ones), each ≤ maxSlabBytes + hugePageBytes.
        let layout = PageLayout(keyFormat: .fp16, valueFormat: .fp16, headDim: 64, capacity: 16)
        let slots = limit / layout.byteCount * ((layout.byteCount + 63) / 64 * 64)
        let constant = 2 * (PagePool.maxSlabBytes + PagePool.hugePageBytes)
        #expect(reserved <= slots + constant, "the pool reserves \(reserved) bytes under a limit of \(limit)")
        // Resident: the slabs plus the sequences' bookkeeping (under 2 KB each) and allocator slack.
        #expect(grown <= slots + constant + sequences * 2048 + (8 << 20), "resident memory grew by \(grown) bytes under a limit of \(limit)")
        // Without the reservation limit every stream (4 per sequence) would hold a block of 16 slots.
        print("MemoryBoundTests: without the reservation limit the pool would reserve \(sequences * 4 * PagePool.blockSlotCount * ((layout.byteCount + 63) / 64 * 64)) bytes")
    }
}
