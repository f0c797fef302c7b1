#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Fixed-size pages per layout, carved out of large slabs so that a stream's consecutive pages sit
/// at consecutive addresses, with exact byte accounting.
///
/// Why slabs: decode attention reads every page of a stream in order. With one heap allocation
/// per page, a stream's pages lie hundreds of KB apart (the streams of a layer grow interleaved),
/// and the CPU's hardware prefetchers lose the stream at every page boundary: measured on this
/// package's reference machine (Zen 4), an FP16 layer of 32 × 16k tokens read at 11 GB/s from
/// scattered pages and at 29 GB/s (one core's full read bandwidth) from contiguous, huge-page
/// backed runs. So:
/// - each layout has its own slabs, divided into page-sized *slots* grouped in *blocks* of
///   `blockSlotCount` consecutive slots;
/// - `allocate(_:after:)` puts a page right after the stream's previous page when that slot is
///   free; otherwise it starts the page at the first slot of an entirely free block, which no
///   other stream starts in, so the stream can keep growing there;
/// - when no block is free and at least an eighth of the layout's slots are *holes* (free slots
///   below the last used slot of their block, left by released pages), the first hole is used,
///   which bounds the memory held in holes; else a new slab is made. Free slots above a block's
///   last used slot are the tail its stream grows into and are never given to another stream, so
///   a stream holds at most `blockSlotCount − 1` unused slots per layout beyond its pages. Slabs grow geometrically per layout (16 slots first, then doubling, up to 8 MiB), and
///   slabs of 2 MiB or more are 2 MiB-aligned and advised for transparent huge pages (fewer TLB
///   misses on a streaming read).
///
/// Accounting: `bytesInUse` is the sum of `layout.byteCount` over live pages (held by some stream
/// or reader): budgets and byte limits are in these bytes. `reservedByteCount` is the slabs'
/// address space, the pool's real footprint: live pages, the free tails of blocks that streams are
/// still growing into, and at most one empty slab kept per layout for reuse (further emptied slabs
/// return to the allocator at once).
///
/// Reservation limit: a pool made with `reservationLimit` (a store's `byteLimit`) does not make a
/// new slab that would take `reservedByteCount` past it while its layout has any free slot: the
/// page then goes to a hole, else to the highest free slot of another stream's block tail (so many
/// short streams share blocks instead of each holding a block's worth of unused slots), and no
/// spare empty slab is kept past the limit. A slab past the limit is made only when the layout is
/// full, so the pool's footprint stays within the limit's pages in their (64-byte-rounded) slots
/// plus two slabs (≤ 2 × (`maxSlabBytes` + `hugePageBytes`): the one past the limit and the
/// huge-page rounding of smaller ones) per layout, plus free slots of layouts whose pages were
/// released. Below the limit the placement is the one described above (contiguous runs for long
/// streams).
///
/// Thread-safe: pages are released from whichever thread drops the last reference.
///
/// Complexity: `allocate` is O(1) when the page follows its predecessor (the common case: all but
/// one page in `blockSlotCount`), else O(slabs + slots/64) of the layout; release is O(1), plus
/// O(slabs) when a slab empties.
public final class PagePool: Sendable {
    /// Where a page's bytes lie: slab identifier and slot index.
    struct Place: Sendable, Hashable {
        let slab: Int
        let slot: Int
    }

    /// Consecutive slots a stream may grow into without another stream starting among them.
    public static let blockSlotCount = 16
    /// Slab size cap; slabs of `hugePageBytes` or more are huge-page aligned and advised.
    static let maxSlabBytes = 8 << 20
    static let hugePageBytes = 2 << 20

    /// A slab: `slotCount` slots of `slotBytes` bytes, with a used-slot bitmap.
    private final class Slab: @unchecked Sendable {
        let base: UnsafeMutableRawPointer
        let byteCount: Int
        let slotCount: Int
        var used: [UInt64]
        var usedCount = 0

        /// Bytes of a slab of `slotCount` slots (rounded up to huge pages from `hugePageBytes` on).
        static func byteCount(slotCount: Int, slotBytes: Int) -> Int {
            let raw = slotCount * slotBytes
            return raw >= PagePool.hugePageBytes ? (raw + PagePool.hugePageBytes - 1) / PagePool.hugePageBytes * PagePool.hugePageBytes : raw
        }

        init(slotCount: Int, slotBytes: Int) {
            self.slotCount = slotCount
            let raw = slotCount * slotBytes
            let huge = raw >= PagePool.hugePageBytes
            byteCount = Self.byteCount(slotCount: slotCount, slotBytes: slotBytes)
            base = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: huge ? PagePool.hugePageBytes : 64)
            #if os(Linux)
            if huge { _ = madvise(base, byteCount, 14 /* MADV_HUGEPAGE */) }
            #endif
            used = [UInt64](repeating: 0, count: (slotCount + 63) / 64)
        }

        deinit { base.deallocate() }

        func isUsed(_ s: Int) -> Bool { used[s >> 6] & (1 << UInt64(s & 63)) != 0 }

        func take(_ s: Int) {
            used[s >> 6] |= 1 << UInt64(s & 63)
            usedCount += 1
        }

        func free(_ s: Int) {
            used[s >> 6] &= ~(1 << UInt64(s & 63))
            usedCount -= 1
        }

        /// First slot of the first entirely free block.
        func firstFreeBlock() -> Int? {
            guard slotCount - usedCount >= PagePool.blockSlotCount else { return nil }
            let mask: UInt64 = (1 << UInt64(PagePool.blockSlotCount)) - 1
            let blocksPerWord = 64 / PagePool.blockSlotCount
            for (w, word) in used.enumerated() where word != .max {
                for k in 0..<blocksPerWord where (word >> UInt64(k * PagePool.blockSlotCount)) & mask == 0 {
                    let slot = w * 64 + k * PagePool.blockSlotCount
                    if slot < slotCount { return slot }
                }
            }
            return nil
        }

        /// The used bits of block `b`.
        func blockBits(_ b: Int) -> UInt64 {
            let first = b * PagePool.blockSlotCount
            return (used[first >> 6] >> UInt64(first & 63)) & ((1 << UInt64(PagePool.blockSlotCount)) - 1)
        }

        /// Free slots of a block that lie below its last used slot: left behind by released pages.
        /// (Free slots above the last used one are the tail its stream is still growing into.)
        func holeCount() -> Int {
            var n = 0
            for b in 0..<(slotCount / PagePool.blockSlotCount) {
                let bits = blockBits(b)
                if bits != 0 { n += (64 - bits.leadingZeroBitCount) - bits.nonzeroBitCount }
            }
            return n
        }

        /// The highest free slot (in a block tail, the one its stream would reach last).
        func lastFreeSlot() -> Int? {
            guard usedCount < slotCount else { return nil }
            for w in stride(from: used.count - 1, through: 0, by: -1) {
                var free = ~used[w]
                if w == used.count - 1, slotCount % 64 != 0 { free &= (1 << UInt64(slotCount % 64)) - 1 }
                if free != 0 { return w * 64 + 63 - free.leadingZeroBitCount }
            }
            return nil
        }

        func firstHole() -> Int? {
            for b in 0..<(slotCount / PagePool.blockSlotCount) {
                let bits = blockBits(b)
                let top = 64 - bits.leadingZeroBitCount
                if bits != 0, bits.nonzeroBitCount < top { return b * PagePool.blockSlotCount + (~bits).trailingZeroBitCount }
            }
            return nil
        }
    }

    /// The slabs of one layout.
    private struct Arena {
        let slotBytes: Int
        /// Slabs by identifier; `order` lists the identifiers oldest first (the search order).
        var slabs: [Int: Slab] = [:]
        var order: [Int] = []
        var slotCount = 0
        var nextSlabSlotCount = PagePool.blockSlotCount

        init(layout: PageLayout) { slotBytes = (max(layout.byteCount, 1) + 63) / 64 * 64 }

        func pointer(_ p: Place) -> UnsafeMutableRawPointer { slabs[p.slab]!.base + p.slot * slotBytes }
    }

    private struct State {
        var arenas: [PageLayout: Arena] = [:]
        var nextSlabID = 0
        var bytesInUse = 0
        var pagesInUse = 0
        var pagesInUseByLayout: [PageLayout: Int] = [:]
        var reservedBytes = 0
    }
    private let state = StateLock(State())
    /// The footprint (`reservedByteCount`) past which free slots are shared before a slab is made.
    let reservationLimit: Int?

    init(reservationLimit: Int? = nil) { self.reservationLimit = reservationLimit }

    /// Bytes of all live pages.
    public var bytesInUse: Int { state.withLock { $0.bytesInUse } }
    /// Number of live pages.
    public var pagesInUse: Int { state.withLock { $0.pagesInUse } }
    /// Live pages per layout.
    public var pagesInUseByLayout: [PageLayout: Int] { state.withLock { $0.pagesInUseByLayout } }
    /// Bytes of all slabs: live pages plus free slots (block tails, holes, one spare slab per layout).
    public var reservedByteCount: Int { state.withLock { $0.reservedBytes } }

    /// A new page of `layout`, placed right after `previous` (the stream's preceding page of the same
    /// layout) when that slot is free, else at the start of a free block (see the type's notes).
    func allocate(_ layout: PageLayout, after previous: Page? = nil) -> Page {
        let hint = previous.flatMap { $0.layout == layout ? $0.place : nil }
        let (bytes, place) = state.withLock { s -> (UnsafeMutableRawPointer, Place) in
            s.bytesInUse += layout.byteCount
            s.pagesInUse += 1
            s.pagesInUseByLayout[layout, default: 0] += 1
            if s.arenas[layout] == nil { s.arenas[layout] = Arena(layout: layout) }
            let place = Self.take(&s.arenas[layout]!, hint: hint, nextSlabID: &s.nextSlabID, reservedBytes: &s.reservedBytes,
                                  limit: reservationLimit)
            return (s.arenas[layout]!.pointer(place), place)
        }
        return Page(layout: layout, pool: self, bytes: bytes, place: place)
    }

    private static func take(_ a: inout Arena, hint: Place?, nextSlabID: inout Int, reservedBytes: inout Int, limit: Int?) -> Place {
        if let h = hint, let slab = a.slabs[h.slab], h.slot + 1 < slab.slotCount, !slab.isUsed(h.slot + 1) {
            slab.take(h.slot + 1)
            return Place(slab: h.slab, slot: h.slot + 1)
        }
        for id in a.order {
            let slab = a.slabs[id]!
            if let slot = slab.firstFreeBlock() {
                slab.take(slot)
                return Place(slab: id, slot: slot)
            }
        }
        if a.order.reduce(0, { $0 + a.slabs[$1]!.holeCount() }) >= max(blockSlotCount, a.slotCount / 8) {
            for id in a.order {
                let slab = a.slabs[id]!
                if let slot = slab.firstHole() {
                    slab.take(slot)
                    return Place(slab: id, slot: slot)
                }
            }
        }
        let slotCount = a.nextSlabSlotCount
        if let limit, reservedBytes + Slab.byteCount(slotCount: slotCount, slotBytes: a.slotBytes) > limit {
            // At the reservation limit: any free slot of the layout before a new slab.
            for id in a.order { if let slot = a.slabs[id]!.firstHole() { a.slabs[id]!.take(slot); return Place(slab: id, slot: slot) } }
            for id in a.order.reversed() { if let slot = a.slabs[id]!.lastFreeSlot() { a.slabs[id]!.take(slot); return Place(slab: id, slot: slot) } }
        }
        let grown = min(2 * slotCount, max(blockSlotCount, maxSlabBytes / a.slotBytes / blockSlotCount * blockSlotCount))
        a.nextSlabSlotCount = max(slotCount, grown)
        let slab = Slab(slotCount: slotCount, slotBytes: a.slotBytes)
        let id = nextSlabID
        nextSlabID += 1
        a.slabs[id] = slab
        a.order.append(id)
        a.slotCount += slotCount
        reservedBytes += slab.byteCount
        slab.take(0)
        return Place(slab: id, slot: 0)
    }

    func release(_ place: Place, layout: PageLayout) {
        // A slab that empties is freed outside the lock (its deinit deallocates).
        let emptied: Slab? = state.withLock { s in
            s.bytesInUse -= layout.byteCount
            s.pagesInUse -= 1
            s.pagesInUseByLayout[layout, default: 0] -= 1
            if s.pagesInUseByLayout[layout] == 0 { s.pagesInUseByLayout[layout] = nil }
            guard let slab = s.arenas[layout]?.slabs[place.slab] else {
                preconditionFailure("PagePool.release: page of an unknown slab")
            }
            slab.free(place.slot)
            guard slab.usedCount == 0 else { return nil }
            // Keep one empty slab per layout for reuse (within the reservation limit); free this one
            // if another is already empty.
            let arena = s.arenas[layout]!
            let withinLimit = reservationLimit.map { s.reservedBytes <= $0 } ?? true
            guard !withinLimit || arena.order.contains(where: { $0 != place.slab && arena.slabs[$0]!.usedCount == 0 }) else { return nil }
            s.arenas[layout]!.slabs[place.slab] = nil
            s.arenas[layout]!.order.removeAll { $0 == place.slab }
            s.arenas[layout]!.slotCount -= slab.slotCount
            s.reservedBytes -= slab.byteCount
            return slab
        }
        _ = emptied
    }
}
