#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CKVCrush

/// Why a C call failed: the status it returns and the message `kvcrush_last_error` gives.
///
/// Every check that would otherwise trap inside the Swift API (unknown sequences, indices, sizes,
/// states) is made by the C layer before it calls in, and reported as one of these.
struct CFailure: Error {
    var status: kvcrush_status
    var message: String

    static func null(_ argument: String) -> CFailure { CFailure(status: KVCRUSH_ERROR_NULL_POINTER, message: "\(argument) is NULL") }
    static func argument(_ message: String) -> CFailure { CFailure(status: KVCRUSH_ERROR_INVALID_ARGUMENT, message: message) }
    static func value(_ message: String) -> CFailure { CFailure(status: KVCRUSH_ERROR_INVALID_VALUE, message: message) }
    static func state(_ message: String) -> CFailure { CFailure(status: KVCRUSH_ERROR_STATE, message: message) }
    static func policy(_ message: String) -> CFailure { CFailure(status: KVCRUSH_ERROR_POLICY, message: message) }
    static func unknownSequence(_ id: UInt64) -> CFailure {
        CFailure(status: KVCRUSH_ERROR_UNKNOWN_SEQUENCE, message: "no sequence \(id) in the store")
    }
}

/// Runs the body of C function `name`: `KVCRUSH_OK` and an empty message, or the failure's status
/// with "name: message" as this thread's last error.
func cCall(_ name: String, _ body: () throws(CFailure) -> Void) -> kvcrush_status {
    do {
        try body()
        LastError.set(nil)
        return KVCRUSH_OK
    } catch {
        LastError.set("\(name): \(error.message)")
        return error.status
    }
}

/// The message of each thread's last failed call, in a thread-specific `strdup`ed C string (freed
/// when replaced and when the thread exits).
enum LastError {
    static let key: pthread_key_t = {
        var key = pthread_key_t()
        let created = pthread_key_create(&key) { free($0) }
        precondition(created == 0, "kvcrush: pthread_key_create failed")
        return key
    }()

    static func set(_ message: String?) {
        let old = pthread_getspecific(key)
        if message == nil && old == nil { return }
        free(old)
        _ = pthread_setspecific(key, message.map { UnsafeMutableRawPointer(strdup($0)!) })
    }

    static var current: UnsafePointer<CChar> {
        if let p = pthread_getspecific(key) { return UnsafePointer(p.assumingMemoryBound(to: CChar.self)) }
        return staticCString("")
    }
}

/// A static string's bytes as a C string (a string literal's storage is NUL-terminated and static).
func staticCString(_ s: StaticString) -> UnsafePointer<CChar> {
    UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
}

/// `a · b · c`, or a failure naming `what` if the product overflows `Int`.
func product(_ factors: Int..., what: String) throws(CFailure) -> Int {
    var p = 1
    for f in factors {
        let (r, overflow) = p.multipliedReportingOverflow(by: f)
        guard !overflow else { throw .argument("\(what) overflows") }
        p = r
    }
    return p
}
