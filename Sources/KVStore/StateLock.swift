#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value that is only read and written under a pthread mutex: the store's and the page pool's
/// lock.
///
/// Why not `Synchronization.Mutex`: on Linux its lock is futex-based inside the standard library,
/// which ThreadSanitizer does not see, so every access it protects is reported as a race (measured
/// with Swift 6.3.1: a two-thread dictionary update under `Mutex` gives reports, under this lock
/// none). With a pthread mutex, which TSan intercepts, the stress test's TSan run checks the
/// store's real locking discipline. Uncontended cost is the same order (one atomic each way).
///
/// The mutex and the value live in their own allocations, so the lock never moves; `withLock`
/// lends the value only for the duration of `body`.
struct StateLock<Value>: ~Copyable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let value: UnsafeMutablePointer<Value>

    init(_ initial: Value) {
        mutex = .allocate(capacity: 1)
        let status = pthread_mutex_init(mutex, nil)
        precondition(status == 0, "StateLock: pthread_mutex_init failed with \(status)")
        value = .allocate(capacity: 1)
        value.initialize(to: initial)
    }

    deinit {
        value.deinitialize(count: 1)
        value.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value. Not reentrant: calling `withLock` on the
    /// same lock from `body` deadlocks.
    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }
}

extension StateLock: @unchecked Sendable where Value: Sendable {}
