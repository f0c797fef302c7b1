import KVQuantization

/// The byte layout of one kind of page: `capacity` token slots of one stream, keys and values in
/// fixed formats.
///
///     | positions: capacity × Int32 | key params (channelwise) | keys: capacity × keyRow | values: capacity × valueRow |
///
/// In the order attention reads them (positions for the causal check, the page's key parameters to
/// fold into the query, keys, values), so a page is one forward sweep for the hardware
/// prefetchers. `byteCount` is exact and is what the pool accounts for every page of this kind,
/// full or not.
public struct PageLayout: Sendable, Hashable {
    public let keyFormat: StorageFormat
    public let valueFormat: StorageFormat
    public let headDim: Int
    public let capacity: Int

    public let keyRowByteCount: Int
    public let valueRowByteCount: Int
    /// Offset of the positions (0).
    public let positionOffset: Int
    /// Offset of the key page parameters (channelwise keys; empty otherwise).
    public let keyParameterOffset: Int
    /// Bytes of the key page parameters.
    public let keyParameterByteCount: Int
    /// Offset of the key rows.
    public let keyOffset: Int
    /// Offset of the value rows.
    public let valueOffset: Int
    /// Bytes of one page.
    public let byteCount: Int

    public init(keyFormat: StorageFormat, valueFormat: StorageFormat, headDim: Int, capacity: Int) {
        self.keyFormat = keyFormat
        self.valueFormat = valueFormat
        self.headDim = headDim
        self.capacity = capacity
        keyRowByteCount = keyFormat.rowByteCount(headDim: headDim)
        valueRowByteCount = valueFormat.rowByteCount(headDim: headDim)
        positionOffset = 0
        keyParameterOffset = 4 * capacity
        keyParameterByteCount = keyFormat.pageParameterByteCount(headDim: headDim)
        keyOffset = keyParameterOffset + keyParameterByteCount
        valueOffset = keyOffset + capacity * keyRowByteCount
        byteCount = valueOffset + capacity * valueRowByteCount
    }

    /// Bytes of a full page per token slot.
    public var bytesPerSlot: Double { Double(byteCount) / Double(capacity) }
}

/// One page: a raw buffer of `layout.byteCount` bytes in a slot of a `PagePool` slab, and how many
/// of its token slots are filled (slots `0..<count`).
///
/// Pages are shared between forked sequences by reference; a stream that wants to change a page it
/// does not own alone copies it first (`isKnownUniquelyReferenced`). Who may mutate: only the store,
/// under its lock, and only a uniquely referenced page. When the last reference goes, the buffer
/// returns to the pool's free list.
final class Page: @unchecked Sendable {
    let layout: PageLayout
    let pool: PagePool
    /// The page's bytes (owned; its slot returns to `pool` on deinit).
    let bytes: UnsafeMutableRawPointer
    /// Where the bytes live in the pool: slab and slot.
    let place: PagePool.Place
    /// Filled slots.
    var count: Int = 0

    /// Use `PagePool.allocate`.
    init(layout: PageLayout, pool: PagePool, bytes: UnsafeMutableRawPointer, place: PagePool.Place) {
        self.layout = layout
        self.pool = pool
        self.bytes = bytes
        self.place = place
    }

    deinit { pool.release(place, layout: layout) }

    @inline(__always) func keyRow(_ slot: Int) -> UnsafeMutableRawPointer { bytes + layout.keyOffset + slot * layout.keyRowByteCount }
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
