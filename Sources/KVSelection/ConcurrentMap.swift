import Foundation
import Synchronization

/// `(0..<count).map(body)` spread over up to `threadCount` threads (`nil`: all cores), each taking
/// the next index as it finishes one. The result is the same array whatever the threads: `body`
/// must depend on its index alone.
///
/// - Complexity: that of `count` calls of `body`, over the threads.
func concurrentMap<T: Sendable>(_ count: Int, threadCount: Int? = nil, _ body: @Sendable (Int) -> T) -> [T] {
    let threads = max(1, min(threadCount ?? ProcessInfo.processInfo.activeProcessorCount, count))
    if threads == 1 { return (0..<count).map(body) }
    let slots = Slots<T>(count)
    defer { slots.release() }
    let next = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: threads) { _ in
        while true {
            let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
            guard i < count else { break }
            slots.base[i] = body(i)
        }
    }
    return (0..<count).map { slots.base[$0]! }
}

/// Slots that threads write disjointly (each index once).
private struct Slots<T>: @unchecked Sendable {
    let base: UnsafeMutablePointer<T?>
    let count: Int
    init(_ count: Int) {
        base = .allocate(capacity: count)
        base.initialize(repeating: nil, count: count)
        self.count = count
    }
    func release() {
        base.deinitialize(count: count)
        base.deallocate()
    }
}
