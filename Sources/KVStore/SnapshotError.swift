/// Why a snapshot could not be saved or loaded. When loading throws, the store is unchanged; when
/// saving throws, the file at the destination is whatever it was before (the old snapshot, or none).
public enum SnapshotError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A system call failed: which operation (`open`, `write`, `fsync`, `rename`, `read`, ...), on
    /// which path, and its `errno`.
    case io(operation: String, path: String, errno: Int32)
    /// The data does not start with the snapshot magic: not a snapshot at all.
    case notASnapshot
    /// A snapshot of a format version this code does not read.
    case unsupportedVersion(found: UInt32, supported: ClosedRange<UInt32>)
    /// The data ends inside `section` (`"header"`, `"CONF"`, `"PAGE"`, `"SEQS"`): `expectedBytes`
    /// were needed from the section's start, `availableBytes` were there.
    case truncated(section: String, expectedBytes: Int, availableBytes: Int)
    /// A section's stored CRC-32C does not match its contents: the file was corrupted.
    case checksumMismatch(section: String, stored: UInt32, computed: UInt32)
    /// A section passed its checksum but breaks a rule of the format (the reason names it): the
    /// file was written by something else or crafted.
    case malformed(section: String, reason: String)
    /// The stored configuration is invalid.
    case invalidConfiguration(KVStoreConfigurationError)
    /// The snapshot's shape differs from the store it is loaded into: the field, the store's value
    /// and the snapshot's.
    case configurationMismatch(field: String, store: String, snapshot: String)
    /// Loading needs `requestedBytes` of pages and the store's byte limit leaves `availableBytes`.
    case byteLimitExceeded(requestedBytes: Int, availableBytes: Int)

    public var description: String {
        switch self {
        case .io(let op, let path, let e): "snapshot: \(op) failed on \(path): errno \(e)"
        case .notASnapshot: "not a KVCrush snapshot (bad magic)"
        case .unsupportedVersion(let f, let s): "snapshot format version \(f) is not supported (this code reads versions \(s.lowerBound)...\(s.upperBound))"
        case .truncated(let s, let e, let a): "snapshot truncated in section \(s): needs \(e) bytes, \(a) present"
        case .checksumMismatch(let s, let st, let c):
            "snapshot section \(s) is corrupted: stored CRC-32C \(hex(st)), computed \(hex(c))"
        case .malformed(let s, let r): "snapshot section \(s) is malformed: \(r)"
        case .invalidConfiguration(let e): "snapshot holds an \(e)"
        case .configurationMismatch(let f, let st, let sn):
            "snapshot does not fit this store: \(f) is \(sn) in the snapshot, \(st) in the store"
        case .byteLimitExceeded(let r, let a):
            "loading the snapshot needs \(r) bytes of pages, the store's byte limit leaves \(a)"
        }
    }
}

private func hex(_ x: UInt32) -> String { "0x" + String(x, radix: 16, uppercase: true) }
