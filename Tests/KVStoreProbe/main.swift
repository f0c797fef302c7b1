// Child processes for the store's reliability tests (Tests/KVStoreTests/ReliabilityProbeTests.swift),
// which need a process of their own: one to kill, one whose resident memory is the store's alone.
// Not a product: built with the tests, run only by them.
//
//     KVStoreProbe save-loop PATH SEED
//
// Saves snapshots of a changing store to PATH in a loop until killed (SIGKILL, by
// `SnapshotKillTests`). If PATH exists it is loaded first (what a killed predecessor left must
// load). Then, forever: change the store (append to, fork and remove sequences, seeded by SEED),
// print `begin K HASH` (HASH: FNV-1a of the snapshot's bytes, in hex), save with
// `saveSnapshot(to:)`, print `done K`. Lines go to standard output unbuffered, so every line the
// parent reads was printed before the kill.
//
//     KVStoreProbe short-sequences LIMIT COUNT SEED
//
// A store with `byteLimit` LIMIT takes up to COUNT short sequences (1–8 tokens in each of 2 layers
// × 2 KV heads, 4 KB pages) until the limit refuses one, then prints
// `sequences N bytesInUse B reserved R rssBefore X rssAfter Y` (bytes; RSS from /proc/self/statm).
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KVQuantization
import KVStore

func say(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    bytes.withUnsafeBytes { _ = write(1, $0.baseAddress!, $0.count) }
}

/// FNV-1a, 64 bits (the parent hashes the file the same way).
func fnv1a(_ bytes: [UInt8]) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
}

/// Resident bytes of this process (/proc/self/statm's second field, in pages).
func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return -1 }
    let fields = text.split(separator: " ")
    return fields.count > 1 ? (Int(fields[1]) ?? -1) * Int(sysconf(Int32(_SC_PAGESIZE))) : -1
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write("KVStoreProbe: \(message)\n".data(using: .utf8)!)
    exit(1)
}

/// SplitMix64.
struct Generator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

func saveLoop(path: String, seed: UInt64) -> Never {
    var g = Generator(state: seed)
    func next() -> UInt64 { g.next() }
    let url = URL(fileURLWithPath: path)
    let configuration = KVStoreConfiguration(layerCount: 2, queryHeadCount: 2, kvHeadCount: 1, headDim: 64, pageCapacity: 16)
    let store: KVStore
    do {
        store = FileManager.default.fileExists(atPath: url.path) ? try KVStore.restoring(from: url) : try KVStore(configuration)
    } catch { fail("load: \(error)") }
    say("ready")
    let d = configuration.headDim
    for k in 0... {
        var ids = store.sequences
        if ids.isEmpty || next() % 8 == 0 { ids.append(store.addSequence()) }
        let id = ids[Int(next() % UInt64(ids.count))]
        switch next() % 10 {
        case 0 where ids.count > 1: store.removeSequence(id)
        case 1 where ids.count < 6: _ = store.fork(id)
        default:
            let n = 1 + Int(next() % 48)
            for layer in 0..<configuration.layerCount {
                let keys = (0..<(n * d)).map { _ in Float(Int(next() % 2001) - 1000) / 250 }
                let values = (0..<(n * d)).map { _ in Float(Int(next() % 2001) - 1000) / 500 }
                do { try store.append(id, layer: layer, keys: keys, values: values) } catch { fail("append: \(error)") }
            }
        }
        // Keep the file below a few MB: drop the longest sequence past 2048 tokens.
        if let longest = store.sequences.max(by: { store.nextPosition(of: $0, layer: 0) < store.nextPosition(of: $1, layer: 0) }),
           store.nextPosition(of: longest, layer: 0) > 2048, store.sequences.count > 1 {
            store.removeSequence(longest)
        }
        say("begin \(k) \(String(fnv1a(store.snapshotBytes()), radix: 16))")
        do { try store.saveSnapshot(to: url) } catch { fail("save: \(error)") }
        say("done \(k)")
    }
    fatalError("unreachable")
}

func shortSequences(limit: Int, count: Int, seed: UInt64) -> Never {
    var g = Generator(state: seed)
    func next() -> UInt64 { g.next() }
    let configuration = KVStoreConfiguration(layerCount: 2, queryHeadCount: 4, kvHeadCount: 2, headDim: 64, pageCapacity: 16,
                                             byteLimit: limit)
    let store: KVStore
    do { store = try KVStore(configuration) } catch { fail("configuration: \(error)") }
    let before = residentBytes()
    var sequences = 0
    let rowLength = configuration.kvHeadCount * configuration.headDim
    outer: for _ in 0..<count {
        let id = store.addSequence()
        let n = 1 + Int(next() % 8)
        for layer in 0..<configuration.layerCount {
            let keys = (0..<(n * rowLength)).map { _ in Float(Int(next() % 2001) - 1000) / 250 }
            do { try store.append(id, layer: layer, keys: keys, values: keys) } catch {
                guard case .byteLimitExceeded = error else { fail("append: \(error)") }
                store.removeSequence(id)
                break outer
            }
        }
        sequences += 1
    }
    say("sequences \(sequences) bytesInUse \(store.byteCount) reserved \(store.pool.reservedByteCount) rssBefore \(before) rssAfter \(residentBytes())")
    exit(0)
}

let arguments = Array(CommandLine.arguments.dropFirst())
switch (arguments.first, arguments.count) {
case ("save-loop", 3):
    guard let seed = UInt64(arguments[2]) else { fail("bad seed") }
    saveLoop(path: arguments[1], seed: seed)
case ("short-sequences", 4):
    guard let limit = Int(arguments[1]), let count = Int(arguments[2]), let seed = UInt64(arguments[3]) else { fail("bad numbers") }
    shortSequences(limit: limit, count: count, seed: seed)
default:
    fail("usage: KVStoreProbe save-loop PATH SEED | short-sequences LIMIT COUNT SEED")
}
