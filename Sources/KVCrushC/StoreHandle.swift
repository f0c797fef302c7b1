#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CKVCrush
import KVCrush

/// What a `kvcrush_store *` points to: the store, the ids of its live sequences, and a
/// readers-writer lock.
///
/// The lock makes the C layer's checks and the Swift call they guard one step: a reader (attend,
/// counts, save) holds it shared, so no sequence it checked can be removed before it is used; a
/// writer (add, fork, remove, append, compress, re-plan) holds it exclusively, so a state it checked
/// (a fresh prefill, a position count) is the state the store acts on. `sequenceIDs` changes only
/// under the exclusive lock. (The store serialises its own mutations on one lock anyway, so writers
/// lose no parallelism the store had.)
final class StoreHandle: @unchecked Sendable {
    let store: KVStore
    /// The preset the store was made with, as a C string owned by the handle, or `nil`.
    let presetName: UnsafeMutablePointer<CChar>?
    /// `kvcrush_config.attend_threads` (`nil`: all cores).
    let attendThreads: Int?
    private(set) var sequenceIDs: Set<UInt64>
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    init(store: KVStore, presetName: String?, attendThreads: Int?) {
        self.store = store
        self.presetName = presetName.map { strdup($0)! }
        self.attendThreads = attendThreads
        sequenceIDs = Set(store.sequences.map(\.rawValue))
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(lock, nil)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
        free(presetName)
    }

    /// Runs `body` holding the lock shared.
    func reading<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    /// Runs `body` holding the lock exclusively.
    func writing<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    /// Records a sequence added (exclusive lock held).
    func inserted(_ id: SequenceID) { sequenceIDs.insert(id.rawValue) }
    /// Records a sequence removed (exclusive lock held).
    func removed(_ id: SequenceID) { sequenceIDs.remove(id.rawValue) }

    /// `id` as a sequence of the store (either lock held).
    func sequence(_ id: UInt64) throws(CFailure) -> SequenceID {
        guard sequenceIDs.contains(id) else { throw .unknownSequence(id) }
        return SequenceID(rawValue: id)
    }

    /// `layer` as a layer index of the store.
    func layer(_ layer: Int32) throws(CFailure) -> Int {
        let n = store.configuration.layerCount
        guard 0 <= layer && Int(layer) < n else { throw .argument("layer \(layer) outside 0..<\(n)") }
        return Int(layer)
    }

    // MARK: Handles

    /// A new retained `kvcrush_store *`.
    func retainedPointer() -> OpaquePointer { OpaquePointer(Unmanaged.passRetained(self).toOpaque()) }

    /// The handle behind a `kvcrush_store *` (not retained).
    static func from(_ pointer: OpaquePointer?, _ argument: String = "store") throws(CFailure) -> StoreHandle {
        guard let pointer else { throw .null(argument) }
        return Unmanaged<StoreHandle>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
    }
}

/// Requires a non-null pointer argument.
func required<T>(_ pointer: T?, _ argument: String) throws(CFailure) -> T {
    guard let pointer else { throw .null(argument) }
    return pointer
}
