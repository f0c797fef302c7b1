import KVQuantization

/// The byte layout of one kind of page: `capacity` token slots of one stream, keys and values in
/// fixed formats.
///
///     | keys: capacity × keyRow | values: capacity × valueRow | key params (channelwise) | positions: capacity × Int32 |
///
/// `byteCount` is exact and is what the pool accounts for every page of this kind, full or not.
public struct PageLayout: Sendable, Hashable {
    public let keyFormat: StorageFormat
    public let valueFormat: StorageFormat
    public let headDim: Int
    public let capacity: Int

    public let keyRowByteCount: Int
    public let valueRowByteCount: Int
    /// Offset of the value rows.
    public let valueOffset: Int
    /// Offset of the key page parameters (channelwise keys; empty otherwise).
    public let keyParameterOffset: Int
    /// Offset of the positions.
    public let positionOffset: Int
    /// Bytes of one page.
    public let byteCount: Int

    public init(keyFormat: StorageFormat, valueFormat: StorageFormat, headDim: Int, capacity: Int) {
        self.keyFormat = keyFormat
        self.valueFormat = valueFormat
        self.headDim = headDim
        self.capacity = capacity
        keyRowByteCount = keyFormat.rowByteCount(headDim: headDim)
        valueRowByteCount = valueFormat.rowByteCount(headDim: headDim)
        valueOffset = capacity * keyRowByteCount
        keyParameterOffset = valueOffset + capacity * valueRowByteCount
        positionOffset = keyParameterOffset + keyFormat.pageParameterByteCount(headDim: headDim)
        byteCount = positionOffset + 4 * capacity
    }

    /// Bytes of a full page per token slot.
    public var bytesPerSlot: Double { Double(byteCount) / Double(capacity) }
}

/// One page: a raw buffer of `layout.byteCount` bytes from a `PagePool`, and how many of its slots
/// are filled (slots `0..<count`).
///
/// Pages are shared between forked sequences by reference; a stream that wants to change a page it
/// does not own alone copies it first (`isKnownUniquelyReferenced`). Who may mutate: only the store,
/// under its lock, and only a uniquely referenced page. When the last reference goes, the buffer
/// returns to the pool's free list.
final class Page: @unchecked Sendable {
    let layout: PageLayout
    let pool: PagePool
    /// The page's bytes (owned; returned to `pool` on deinit).
    let bytes: UnsafeMutableRawPointer
    /// Filled slots.
    var count: Int = 0

    /// Use `PagePool.allocate`.
    init(layout: PageLayout, pool: PagePool, bytes: UnsafeMutableRawPointer) {
        self.layout = layout
        self.pool = pool
        self.bytes = bytes
    }

    deinit { pool.release(bytes, layout: layout) }

    @inline(__always) func keyRow(_ slot: Int) -> UnsafeMutableRawPointer { bytes + slot * layout.keyRowByteCount }
    @inline(__always) func valueRow(_ slot: Int) -> UnsafeMutableRawPointer {
        bytes + layout.valueOffset + slot * layout.valueRowByteCount
    }
    @inline(__always) var keyParameters: UnsafeMutableRawPointer { bytes + layout.keyParameterOffset }
    @inline(__always) func position(_ slot: Int) -> Int32 {
        bytes.loadUnaligned(fromByteOffset: layout.positionOffset + 4 * slot, as: Int32.self)
    }
    @inline(__always) func setPosition(_ p: Int32, _ slot: Int) {
        bytes.storeBytes(of: p, toByteOffset: layout.positionOffset + 4 * slot, as: Int32.self)
    }
    var isFull: Bool { count == layout.capacity }

    /// Copies slot `from` of `source` (same layout) into slot `to` of this page.
    func copySlot(_ to: Int, from source: Page, _ from: Int) {
        precondition(source.layout == layout, "Page.copySlot: layouts differ")
        keyRow(to).copyMemory(from: source.keyRow(from), byteCount: layout.keyRowByteCount)
        valueRow(to).copyMemory(from: source.valueRow(from), byteCount: layout.valueRowByteCount)
        setPosition(source.position(from), to)
    }
}

/// Fixed-size pages per layout, with a free list and exact byte accounting.
///
/// `bytesInUse` is the sum of `layout.byteCount` over live pages (held by some stream or reader);
/// freed pages wait on a per-layout free list for reuse and are not counted. Thread-safe: pages are
/// released from whichever thread drops the last reference.
public final class PagePool: Sendable {
    /// A page buffer on the free list (only ever touched by whoever took it off the list).
    private struct Buffer: @unchecked Sendable { let pointer: UnsafeMutableRawPointer }
    private struct State {
        var free: [PageLayout: [Buffer]] = [:]
        var bytesInUse = 0
        var pagesInUse = 0
        var pagesInUseByLayout: [PageLayout: Int] = [:]
        var freePageCount = 0
    }
    private let state = StateLock(State())
    /// Free pages kept for reuse at most (beyond this, freed buffers go back to the allocator).
    let maxFreePages: Int

    init(maxFreePages: Int = 4096) { self.maxFreePages = maxFreePages }

    deinit {
        state.withLock { s in
            for (_, list) in s.free { for b in list { b.pointer.deallocate() } }
        }
    }

    /// Bytes of all live pages.
    public var bytesInUse: Int { state.withLock { $0.bytesInUse } }
    /// Number of live pages.
    public var pagesInUse: Int { state.withLock { $0.pagesInUse } }
    /// Live pages per layout.
    public var pagesInUseByLayout: [PageLayout: Int] { state.withLock { $0.pagesInUseByLayout } }
    /// Pages waiting on the free lists.
    public var freePageCount: Int { state.withLock { $0.freePageCount } }

    func allocate(_ layout: PageLayout) -> Page {
        let reused: Buffer? = state.withLock { s in
            s.bytesInUse += layout.byteCount
            s.pagesInUse += 1
            s.pagesInUseByLayout[layout, default: 0] += 1
            guard let b = s.free[layout]?.popLast() else { return nil }
            s.freePageCount -= 1
            return b
        }
        let bytes = reused?.pointer ?? UnsafeMutableRawPointer.allocate(byteCount: max(layout.byteCount, 1), alignment: 64)
        return Page(layout: layout, pool: self, bytes: bytes)
    }

    func release(_ bytes: UnsafeMutableRawPointer, layout: PageLayout) {
        let buffer = Buffer(pointer: bytes)
        let keep: Bool = state.withLock { s in
            s.bytesInUse -= layout.byteCount
            s.pagesInUse -= 1
            s.pagesInUseByLayout[layout, default: 0] -= 1
            if s.pagesInUseByLayout[layout] == 0 { s.pagesInUseByLayout[layout] = nil }
            guard s.freePageCount < maxFreePages else { return false }
            s.free[layout, default: []].append(buffer)
            s.freePageCount += 1
            return true
        }
        if !keep { bytes.deallocate() }
    }
}
