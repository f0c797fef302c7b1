#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Per-channel code widths of a `.mixedChannelwise` key format: for each KV head of a layer, one
/// `CodeWidth` per channel, and the bytes of codes every token row takes (the same for every head).
///
/// Channels with the same width form a *segment*. Segments are stored widest first (8, 4, 3, 2 bits),
/// each holding its channels in ascending order, as a block of its own code rows
/// (`MixedChannelwiseKeyCodec`): a segment of n channels takes `width.packedByteCount(codes: n)`
/// bytes per token, and a head's segments together at most `rowByteCount` (the rest is zero).
///
/// Widths come from a measured allocation (`allocate`): channels whose range times query energy is
/// large get more bits. They are a property of the model, calibrated once (`kvcrush calibrate`).
///
/// The value is a handle: the widths are interned for the process's lifetime (one entry per distinct
/// allocation, a few hundred bytes), so `StorageFormat` stays a trivial value that the read path
/// copies without reference counting (holding the arrays inline cost 5–12% of a decode step in
/// `kvcrush bench` through the layouts and codecs that contain formats). Equal widths give equal
/// handles.
public struct ChannelWidths: Sendable, Hashable, CustomStringConvertible {
    /// The interned entry's index.
    let id: Int32

    /// `widths[kvHead][channel]`.
    public var widths: [[CodeWidth]] { ChannelWidthsRegistry.shared.entry(id).widths }
    /// Bytes of one token's codes (all segments, padding included), the same for every head.
    public var rowByteCount: Int { ChannelWidthsRegistry.shared.entry(id).rowByteCount }

    /// Widths given per KV head and channel; `rowByteCount` defaults to the largest head's segments.
    ///
    /// - Precondition: at least one head, every head the same channel count ≥ 1, and every head's
    ///   segments fit in `rowByteCount`.
    public init(widths: [[CodeWidth]], rowByteCount: Int? = nil) {
        precondition(!widths.isEmpty && !widths[0].isEmpty && widths.allSatisfy { $0.count == widths[0].count },
                     "ChannelWidths: every KV head needs the same positive number of channel widths")
        let need = widths.map(Self.segmentByteCount).max()!
        let bytes = rowByteCount ?? need
        precondition(bytes >= need, "ChannelWidths: the segments need \(need) bytes per row, more than \(bytes)")
        id = ChannelWidthsRegistry.shared.intern(.init(widths: widths, rowByteCount: bytes))
    }

    /// Channels per head.
    public var headDim: Int { ChannelWidthsRegistry.shared.entry(id).widths[0].count }
    /// KV heads.
    public var kvHeadCount: Int { ChannelWidthsRegistry.shared.entry(id).widths.count }
    /// Code bits per element, padding included: `8·rowByteCount / headDim`.
    public var averageBits: Double { Double(8 * rowByteCount) / Double(headDim) }

    /// The widths a format stores segments in, widest first.
    public static let segmentOrder: [CodeWidth] = [.int8, .int4, .int3, .int2]

    /// Bytes of one row of a head's segments: Σ over widths of `packedByteCount(codes: n_width)`.
    public static func segmentByteCount(_ head: [CodeWidth]) -> Int {
        segmentOrder.reduce(0) { sum, w in sum + w.packedByteCount(codes: head.lazy.filter { $0 == w }.count) }
    }

    /// `mix3.5/channel` (the average bits; two allocations with the same average print alike).
    public var description: String { Self.name(averageBits: averageBits) }

    /// `mix4/channel`, `mix3.5/channel`, … (the average to at most two decimals).
    public static func name(averageBits b: Double) -> String {
        if b == b.rounded() { return "mix\(Int(b))/channel" }
        var s = String((b * 100).rounded() / 100)
        while s.hasSuffix("0") { s.removeLast() }
        return "mix\(s)/channel"
    }
}

extension ChannelWidths {
    /// The allocation that minimises the predicted score error of each KV head,
    ///
    ///     Σ_c weight_c · (range_c / (2^b_c − 1))²,
    ///
    /// (`range_c`: the typical range of channel c over a page's tokens, e.g. the RMS over pages;
    /// `weight_c`: the query energy E[q_c²] of the head's query group) under `rowByteCount` bytes of
    /// codes per token, widths from `candidates`, in units of `granularity` channels of adjacent
    /// importance (weight·range²; units of 8 keep each segment a multiple of 8 channels, the SIMD
    /// width of the per-channel kernels).
    ///
    /// Greedy reverse water-filling: every unit starts at the narrowest candidate; the upgrade with the
    /// largest error reduction per added bit that still fits is taken until none fits. Deterministic
    /// (ties go to the more important unit).
    ///
    /// - Precondition: `ranges` and `weights` have one entry per head, `headDim` each, finite and
    ///   ≥ 0; `granularity` divides `headDim`; the narrowest candidate fits in `rowByteCount`.
    /// - Complexity: O(heads · (d/g)² · |candidates|).
    public static func allocate(ranges: [[Double]], weights: [[Double]], rowByteCount: Int,
                                candidates: [CodeWidth] = [.int2, .int3, .int4, .int8], granularity: Int = 8) -> ChannelWidths {
        precondition(!ranges.isEmpty && ranges.count == weights.count, "ChannelWidths.allocate: one range and weight vector per head")
        let d = ranges[0].count
        precondition(d > 0 && granularity > 0 && d % granularity == 0, "ChannelWidths.allocate: granularity \(granularity) must divide \(d)")
        let ladder = candidates.sorted { $0.bits < $1.bits }
        precondition(!ladder.isEmpty && Set(ladder).count == ladder.count, "ChannelWidths.allocate: distinct candidates")
        var out = [[CodeWidth]]()
        for (r, w) in zip(ranges, weights) {
            precondition(r.count == d && w.count == d && (r + w).allSatisfy { $0.isFinite && $0 >= 0 },
                         "ChannelWidths.allocate: ranges and weights must be finite, ≥ 0, \(d) per head")
            let importance = (0..<d).map { w[$0] * r[$0] * r[$0] }
            let order = (0..<d).sorted { importance[$0] != importance[$1] ? importance[$0] > importance[$1] : $0 < $1 }
            let units = d / granularity
            let unitImportance = (0..<units).map { u in order[(u * granularity)..<((u + 1) * granularity)].reduce(0) { $0 + importance[$1] } }
            var level = [Int](repeating: 0, count: units)
            var counts = [CodeWidth: Int]()
            counts[ladder[0]] = d
            func bytes(_ c: [CodeWidth: Int]) -> Int { c.reduce(0) { $0 + $1.key.packedByteCount(codes: $1.value) } }
            precondition(bytes(counts) <= rowByteCount, "ChannelWidths.allocate: \(rowByteCount) bytes cannot hold \(d) \(ladder[0]) codes")
            func error(_ u: Int, _ l: Int) -> Double {
                let m = Double(ladder[l].maxCode)
                return unitImportance[u] / (m * m)
            }
            while true {
                var best: (gain: Double, unit: Int)? = nil
                for u in 0..<units where level[u] + 1 < ladder.count {
                    var c = counts
                    c[ladder[level[u]], default: 0] -= granularity
                    c[ladder[level[u] + 1], default: 0] += granularity
                    guard bytes(c) <= rowByteCount else { continue }
                    let gain = (error(u, level[u]) - error(u, level[u] + 1)) / Double(ladder[level[u] + 1].bits - ladder[level[u]].bits)
                    if best == nil || gain > best!.gain { best = (gain, u) }
                }
                guard let b = best else { break }
                counts[ladder[level[b.unit]], default: 0] -= granularity
                counts[ladder[level[b.unit] + 1], default: 0] += granularity
                level[b.unit] += 1
            }
            var head = [CodeWidth](repeating: ladder[0], count: d)
            for u in 0..<units { for c in order[(u * granularity)..<((u + 1) * granularity)] { head[c] = ladder[level[u]] } }
            out.append(head)
        }
        return ChannelWidths(widths: out, rowByteCount: rowByteCount)
    }
}

/// The interned contents of every `ChannelWidths` made in the process (behind a pthread mutex, which
/// ThreadSanitizer sees). Only codec construction and validation read it, never the read path.
final class ChannelWidthsRegistry: @unchecked Sendable {
    struct Entry: Hashable {
        var widths: [[CodeWidth]]
        var rowByteCount: Int
    }

    static let shared = ChannelWidthsRegistry()

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var entries = [Entry]()
    private var index = [Entry: Int32]()

    private init() {
        mutex = .allocate(capacity: 1)
        let status = pthread_mutex_init(mutex, nil)
        precondition(status == 0, "ChannelWidthsRegistry: pthread_mutex_init failed with \(status)")
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    func intern(_ e: Entry) -> Int32 {
        locked {
            if let i = index[e] { return i }
            precondition(entries.count < Int(Int32.max), "ChannelWidthsRegistry: too many distinct widths")
            let i = Int32(entries.count)
            entries.append(e)
            index[e] = i
            return i
        }
    }

    func entry(_ id: Int32) -> Entry { locked { entries[Int(id)] } }

    /// Mixed-width codecs built once per (widths, KV head) for `KernelSet.current`, kept for the
    /// process's lifetime like the widths themselves (`MixedChannelwiseKeyCodec.shared`).
    private var codecs = [SIMD2<Int32>: MixedChannelwiseKeyCodec.Shared]()

    func sharedCodec(_ id: Int32, kvHead: Int, make: () -> MixedChannelwiseKeyCodec.Shared) -> MixedChannelwiseKeyCodec.Shared {
        let key = SIMD2(id, Int32(kvHead))
        if let c = locked({ codecs[key] }) { return c }
        let made = make()  // outside the lock: building the codec reads the widths through `entry`
        return locked {
            if let c = codecs[key] { return c }
            codecs[key] = made
            return made
        }
    }
}
