#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Snapshot file I/O: the atomic write (temporary file, `fsync`, `rename`, directory `fsync`) and
/// the read, with every system call's failure a `SnapshotError.io`.
enum SnapshotFile {
    /// Writes `bytes` to `url` atomically: a temporary file in the destination's directory is
    /// written in full, synced, and renamed over `url`; then the directory is synced. If anything
    /// fails before the rename, the temporary file is removed and `url` is untouched.
    ///
    /// A process killed mid-save leaves its temporary file (`.NAME.tmp-PID-RANDOM`) behind; it never
    /// stops a later save (each uses a fresh name), and after a successful save the temporary files
    /// of `url` whose writer process no longer exists are removed (a live writer's never are).
    static func writeAtomically(_ bytes: [UInt8], to url: URL, _ ops: SnapshotFileOperations) throws(SnapshotError) {
        let path = url.path, directory = url.deletingLastPathComponent().path
        let prefix = "." + url.lastPathComponent + ".tmp-"
        let temporary = directory + "/" + prefix + "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io(operation: "open", path: temporary, errno: errno) }
        func fail(_ operation: String) -> SnapshotError {
            let e = errno
            return .io(operation: operation, path: temporary, errno: e)
        }
        var failure: SnapshotError?
        var done = 0
        bytes.withUnsafeBytes { raw in
            while done < raw.count {
                let n = ops.write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = fail("write")
                    return
                }
                if n == 0 { failure = .io(operation: "write", path: temporary, errno: EIO); return }
                done += n  // a short write: write the rest
            }
        }
        if failure == nil, ops.fsync(fd) != 0 { failure = fail("fsync") }
        if close(fd) != 0, failure == nil { failure = fail("close") }
        if failure == nil, ops.rename(temporary, path) != 0 { failure = fail("rename") }
        if let failure {
            unlink(temporary)
            throw failure
        }
        // Make the rename durable. A failure here is not reported: the new snapshot is in place.
        let dfd = open(directory, O_RDONLY | O_CLOEXEC)
        if dfd >= 0 {
            _ = fsync(dfd)
            close(dfd)
        }
        removeAbandonedTemporaries(in: directory, prefix: prefix)
    }

    /// Unlinks `directory/prefix<pid>-*` for every pid (not this process's) that no longer exists.
    /// Best effort: errors are ignored.
    static func removeAbandonedTemporaries(in directory: String, prefix: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names where name.hasPrefix(prefix) {
            guard let pid = name.dropFirst(prefix.count).split(separator: "-").first.flatMap({ pid_t($0) }),
                  pid > 0, pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            unlink(directory + "/" + name)
        }
    }

    /// The whole file at `path`.
    static func readAll(_ path: String) throws(SnapshotError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(operation: "open", path: path, errno: errno) }
        defer { close(fd) }
        var bytes = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "read", path: path, errno: errno)
            }
            if n == 0 { return bytes }
            bytes.append(contentsOf: chunk[0..<n])
        }
    }
}

/// The system calls `saveSnapshot` makes to write a file, replaceable in tests to inject faults
/// (failed and short writes, failed syncs and renames).
struct SnapshotFileOperations: Sendable {
    var write: @Sendable (Int32, UnsafeRawPointer, Int) -> Int
    var fsync: @Sendable (Int32) -> Int32
    var rename: @Sendable (String, String) -> Int32

    static let system = SnapshotFileOperations(
        write: { fd, p, n in
            #if canImport(Glibc)
            Glibc.write(fd, p, n)
            #else
            Darwin.write(fd, p, n)
            #endif
        },
        fsync: { fd in
            #if canImport(Glibc)
            Glibc.fsync(fd)
            #else
            Darwin.fsync(fd)
            #endif
        },
        rename: { a, b in
            #if canImport(Glibc)
            Glibc.rename(a, b)
            #else
            Darwin.rename(a, b)
            #endif
        })
}
