/// How a store page records the positions of its tokens: one `Int32` base and one `UInt16` offset
/// per token slot, 2 bytes per token instead of 4.
///
///     | base: Int32 | offsets: P × UInt16 | zero padding to a multiple of `alignment` |
///
/// Slot `s` holds position `base + offset[s]`. Offsets ascend strictly within a page (`offset[0]`
/// is 0, so `base` is the page's first position), which a store keeps by filling every page in
/// position order. So a page's tokens span at most `maxSpan` (65,535) positions: a page whose next
/// token would lie further than that from its first is closed early, before it is full (see
/// `KVStore`). Padding keeps the rows after the block on 16-byte boundaries (the width of the
/// 128-bit loads every kernel path converts rows with).
public enum PagePositions {
    /// The largest difference between a page's last and first positions.
    public static let maxSpan = Int(UInt16.max)
    /// The block's size is a multiple of this.
    public static let alignment = 16

    /// Bytes of the position block of a page of `capacity` slots (exact): `4 + 2·capacity` rounded
    /// up to a multiple of `alignment`. E.g. 48 for 16 slots, 80 for 32, 144 for 64, 272 for 128.
    public static func byteCount(pageCapacity capacity: Int) -> Int {
        (4 + 2 * capacity + alignment - 1) / alignment * alignment
    }

    /// Bytes of the block beyond the 2 bytes per slot: the base and the padding.
    public static func overheadByteCount(pageCapacity capacity: Int) -> Int {
        byteCount(pageCapacity: capacity) - 2 * capacity
    }
}
