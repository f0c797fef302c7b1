import KVQuantization

/// The byte layout of one kind of page: `capacity` token slots of one stream, keys and values in
/// fixed formats.
///
///     | base: Int32 | offsets: capacity × UInt16 | pad | key params (channelwise) | keys: capacity × keyRow | values: capacity × valueRow |
///     '------------ PagePositions.byteCount ---------'
///
/// In the order attention reads them (positions for the causal check, the page's key parameters to
/// fold into the query, keys, values), so a page is one forward sweep for the hardware
/// prefetchers. Slot `s` holds position `base + offset[s]`, offsets strictly ascending (see
/// `PagePositions`). `byteCount` is exact and is what the pool accounts for every page of this
/// kind, full or not:
///
///     byteCount = PagePositions.byteCount(capacity) + keyParams + capacity · (keyRow + valueRow)
///               = capacity · (keyRow + valueRow + 2) + keyParams + (base and padding: 4…19 bytes)
public struct PageLayout: Sendable, Hashable {
    public let keyFormat: StorageFormat
    public let valueFormat: StorageFormat
    public let headDim: Int
    public let capacity: Int

    public let keyRowByteCount: Int
    public let valueRowByteCount: Int
    /// Offset of the position base (0); the offsets follow it.
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
        precondition(capacity > 0 && capacity <= 65536, "PageLayout: capacity \(capacity) outside 1...65536")
        self.keyFormat = keyFormat
        self.valueFormat = valueFormat
        self.headDim = headDim
        self.capacity = capacity
        keyRowByteCount = keyFormat.rowByteCount(headDim: headDim)
        valueRowByteCount = valueFormat.rowByteCount(headDim: headDim)
        positionOffset = 0
        keyParameterOffset = PagePositions.byteCount(pageCapacity: capacity)
        keyParameterByteCount = keyFormat.pageParameterByteCount(headDim: headDim)
        keyOffset = keyParameterOffset + keyParameterByteCount
        valueOffset = keyOffset + capacity * keyRowByteCount
        byteCount = valueOffset + capacity * valueRowByteCount
    }

    /// Bytes of a full page per token slot.
    public var bytesPerSlot: Double { Double(byteCount) / Double(capacity) }
}

/// One page: a raw buffer of `layout.byteCount` bytes in a slot of a `PagePool` slab, and how many
/// of its token slots are filled (slots `0..<count`, positions strictly ascending, spanning at most
/// `PagePositions.maxSpan`).
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
    /// The first position (slot 0's). Meaningful once a slot is filled.
    @inline(__always) var basePosition: Int32 { bytes.loadUnaligned(fromByteOffset: layout.positionOffset, as: Int32.self) }
    /// The offsets, `capacity` of them after the base.
    @inline(__always) var offsets: UnsafeMutablePointer<UInt16> {
        (bytes + layout.positionOffset + 4).assumingMemoryBound(to: UInt16.self)
    }
    @inline(__always) func position(_ slot: Int) -> Int32 { basePosition + Int32(offsets[slot]) }
    /// The last filled slot's position (`count > 0`).
    @inline(__always) var lastPosition: Int32 { position(count - 1) }

    /// Sets the position of `slot`: slot 0 sets the base, every later slot must lie strictly after
    /// the previous one and at most `PagePositions.maxSpan` after the base (caller bug otherwise).
    @inline(__always) func setPosition(_ p: Int32, _ slot: Int) {
        if slot == 0 {
            bytes.storeBytes(of: p, toByteOffset: layout.positionOffset, as: Int32.self)
            offsets[0] = 0
        } else {
            let offset = Int(p) - Int(basePosition)
            precondition(offset > Int(offsets[slot - 1]) && offset <= PagePositions.maxSpan,
                         "Page.setPosition: position \(p) does not follow slot \(slot - 1) within the page's span")
            offsets[slot] = UInt16(offset)
        }
    }

    /// Whether position `p` (after every filled slot's) may go into the next slot: the page is not
    /// full and `p` is within `PagePositions.maxSpan` of the base.
    @inline(__always) func canTake(_ p: Int32) -> Bool {
        count < layout.capacity && (count == 0 || Int(p) - Int(basePosition) <= PagePositions.maxSpan)
    }

    var isFull: Bool { count == layout.capacity }
}
