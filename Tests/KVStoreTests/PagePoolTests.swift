import Testing
import TestSupport
import KVQuantization
@testable import KVStore

/// The slab page pool: streams growing side by side get contiguous runs, pages never overlap and
/// keep their bytes, accounting is exact, and the memory held beyond live pages stays bounded.
@Suite struct PagePoolTests {
    static let layout = PageLayout(keyFormat: .fp16, valueFormat: .fp16, headDim: 128, capacity: 32)
    static var slotBytes: Int { (layout.byteCount + 63) / 64 * 64 }

    @Test func interleavedStreamsGetContiguousRuns() {
        let pool = PagePool()
        let streams = 32, pagesPerStream = 100
        var pages = [[Page]](repeating: [], count: streams)
        for _ in 0..<pagesPerStream {
            for s in 0..<streams { pages[s].append(pool.allocate(Self.layout, after: pages[s].last)) }
        }
        for s in 0..<streams {
            var breaks = 0
            for k in 1..<pagesPerStream where pages[s][k].bytes != pages[s][k - 1].bytes + Self.slotBytes { breaks += 1 }
            // A stream leaves its run only at the end of a block (and not even then when the next block is free).
            #expect(breaks <= pagesPerStream / PagePool.blockSlotCount, "stream \(s): \(breaks) breaks in \(pagesPerStream) pages")
        }
        #expect(pool.pagesInUse == streams * pagesPerStream && pool.bytesInUse == streams * pagesPerStream * Self.layout.byteCount)
        #expect(pool.reservedByteCount >= pool.bytesInUse)
        pages.removeAll()
        #expect(pool.pagesInUse == 0 && pool.bytesInUse == 0)
        // Emptied slabs return to the allocator, but for one spare.
        #expect(pool.reservedByteCount <= PagePool.maxSlabBytes + PagePool.hugePageBytes)
    }

    /// Random churn over several layouts: every page keeps its own bytes (no two live pages share
    /// memory), the counters match the live set, and the reserved bytes stay within the bound the
    /// placement rule gives: a new slab only when under an eighth of the slots (or one block) are
    /// holes, and at most one block's tail per stream beyond that.
    @Test func churnKeepsPagesDisjointAndMemoryBounded() throws {
        let layouts = [Self.layout, PageLayout(keyFormat: .channelwise(.int4), valueFormat: .int4, headDim: 64, capacity: 16),
                       PageLayout(keyFormat: .int8, valueFormat: .int8, headDim: 8, capacity: 4)]
        forEachSeededCase(6, base: 9100) { g in
            let pool = PagePool()
            var live = [(page: Page, stream: Int, tag: UInt8)]()
            var last = [Int: Page]()
            var peak = [PageLayout: Int]()
            for step in 0..<3000 {
                if live.isEmpty || Int.random(in: 0..<100, using: &g) < 60 {
                    let stream = Int.random(in: 0..<40, using: &g), layout = layouts[stream % layouts.count]
                    let page = pool.allocate(layout, after: last[stream])
                    let tag = UInt8(truncatingIfNeeded: step)
                    page.bytes.initializeMemory(as: UInt8.self, repeating: tag, count: layout.byteCount)
                    live.append((page, stream, tag))
                    last[stream] = page
                    let n = live.filter { $0.page.layout == layout }.count
                    peak[layout] = max(peak[layout] ?? 0, n)
                } else {
                    let k = Int.random(in: 0..<live.count, using: &g)
                    if last[live[k].stream] === live[k].page { last[live[k].stream] = nil }
                    live.remove(at: k)
                }
            }
            for (page, _, tag) in live {
                let b = UnsafeRawBufferPointer(start: page.bytes, count: page.layout.byteCount)
                #expect(b.allSatisfy { $0 == tag }, "seed \(g.seed): a page's bytes were overwritten")
            }
            #expect(pool.pagesInUse == live.count && pool.bytesInUse == live.reduce(0) { $0 + $1.page.layout.byteCount })
            var bound = 0
            for layout in layouts {
                let slot = (layout.byteCount + 63) / 64 * 64, p = peak[layout] ?? 0
                let streams = (0..<40).filter { $0 % layouts.count == layouts.firstIndex(of: layout)! }.count
                // Slots: the peak plus one tail per stream, 8/7 of that plus one block for holes, plus
                // the last (largest) slab and a spare, each rounded up to huge pages.
                let slots = ((p + streams * (PagePool.blockSlotCount - 1)) * 8 + 6) / 7 + PagePool.blockSlotCount
                bound += slots * slot + 2 * (PagePool.maxSlabBytes + PagePool.hugePageBytes)
            }
            #expect(pool.reservedByteCount <= bound, "seed \(g.seed): reserved \(pool.reservedByteCount) > \(bound)")
        }
    }

    /// With a reservation limit, many one-page streams share blocks once the slabs reach the limit
    /// instead of each holding a block: the footprint stays within the limit plus one slab, pages
    /// stay disjoint, and streams that keep growing still get runs below the limit.
    @Test func reservationLimitBoundsManyShortStreams() {
        let slot = Self.slotBytes, limit = 4 << 20
        let pool = PagePool(reservationLimit: limit)
        var pages = [Page]()
        for i in 0..<(limit / slot) {  // as many one-page streams as the limit holds pages
            let page = pool.allocate(Self.layout)
            page.bytes.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: i), count: Self.layout.byteCount)
            pages.append(page)
        }
        #expect(pool.reservedByteCount <= limit + PagePool.maxSlabBytes + PagePool.hugePageBytes, "reserved \(pool.reservedByteCount)")
        for (i, page) in pages.enumerated() {
            let b = UnsafeRawBufferPointer(start: page.bytes, count: Self.layout.byteCount)
            #expect(b.allSatisfy { $0 == UInt8(truncatingIfNeeded: i) }, "page \(i) was overwritten")
        }
        // Without the limit the same streams reserve a block each.
        let unlimited = PagePool()
        let held = (0..<256).map { _ in unlimited.allocate(Self.layout) }
        #expect(unlimited.reservedByteCount >= held.count * PagePool.blockSlotCount * slot)
        // Far below the limit, interleaved growing streams still get their runs.
        let roomy = PagePool(reservationLimit: 1 << 30)
        var runs = [[Page]](repeating: [], count: 8)
        for _ in 0..<64 { for s in 0..<8 { runs[s].append(roomy.allocate(Self.layout, after: runs[s].last)) } }
        for s in 0..<8 {
            let breaks = (1..<64).filter { runs[s][$0].bytes != runs[s][$0 - 1].bytes + slot }.count
            #expect(breaks <= 64 / PagePool.blockSlotCount)
        }
    }
}
