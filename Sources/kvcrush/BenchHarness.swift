import Dispatch
import Foundation
import Synchronization
import KVCrush

/// The measuring tools of `kvcrush bench`: timing with medians, the read-bandwidth probe, the
/// last-level cache size, repeatable random fill, and the plain FP32 attention loop the store is
/// compared with.
enum BenchHarness {
    struct Timing {
        var median: Double, min: Double, max: Double
        init(_ samples: [Double]) {
            let s = samples.sorted()
            median = s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
            min = s.first!
            max = s.last!
        }
    }

    /// A pointer shared by threads that touch disjoint parts of it.
    struct Shared<T>: @unchecked Sendable { let p: UnsafeMutablePointer<T> }

    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e6 }

    /// Times `body` (milliseconds): one warm-up, then repetitions until `seconds` or `maxReps`.
    static func time(seconds: Double, minReps: Int, maxReps: Int, _ body: () -> Void) -> Timing {
        body()
        var samples = [Double]()
        let start = now()
        while samples.count < minReps || (samples.count < maxReps && now() - start < seconds * 1000) {
            let t0 = now()
            body()
            samples.append(now() - t0)
        }
        return Timing(samples)
    }

    static func lastLevelCacheBytes() -> Int {
        for index in (0...4).reversed() {
            let path = "/sys/devices/system/cpu/cpu0/cache/index\(index)/size"
            guard let s = try? String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
                  !s.isEmpty else { continue }
            let unit = s.last!, number = Int(s.dropLast()) ?? Int(s) ?? 0
            switch unit {
            case "K": return number << 10
            case "M": return number << 20
            default: return number
            }
        }
        return 32 << 20
    }

    /// Fills `n` floats with uniform values in [−1, 1) from a 64-bit LCG (fast, repeatable).
    static func fillRandom(_ p: UnsafeMutablePointer<Float>, _ n: Int, seed: UInt64) {
        var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        for i in 0..<n {
            x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            p[i] = Float(Int32(truncatingIfNeeded: x >> 32)) * 0x1p-31
        }
    }

    /// Median read bandwidth (GB/s) over a buffer of `byteCount` bytes split among `threads`.
    static func bandwidth(_ buffer: UnsafeMutablePointer<Float>, count: Int, threads: Int, reps: Int) -> Double {
        let shared = Shared(p: buffer), per = count / threads
        let sink = Shared(p: UnsafeMutablePointer<Double>.allocate(capacity: threads))
        defer { sink.p.deallocate() }
        let t = time(seconds: 0, minReps: reps, maxReps: reps) {
            DispatchQueue.concurrentPerform(iterations: threads) { i in
                sink.p[i] = PageKernels.readSum(shared.p + i * per, count: per)
            }
        }
        return Double(per * threads * 4) / (t.median * 1e6)
    }

    /// The FP32 loop a user would write: per query head, SIMD dot products with every key, max,
    /// exp, sum, then a SIMD weighted sum of the values. K and V are `[kvHead][token][d]`.
    static func fp32Attention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                              queryHeads: Int, group: Int, tokens n: Int, d: Int, threads: Int) {
        let qs = Shared(p: UnsafeMutablePointer(mutating: q)), ks = Shared(p: UnsafeMutablePointer(mutating: k))
        let vs = Shared(p: UnsafeMutablePointer(mutating: v)), os = Shared(p: out)
        let scale = 1 / Float(d).squareRoot()
        let next = Atomic<Int>(0)  // heads handed out as threads finish, as `attend` does
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: n)
            defer { scores.deallocate() }
            while true {
                let h = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard h < queryHeads else { break }
                let qh = UnsafeRawPointer(qs.p + h * d), kh = ks.p + (h / group) * n * d, vh = vs.p + (h / group) * n * d
                var m = -Float.infinity
                for j in 0..<n {
                    let kr = UnsafeRawPointer(kh + j * d)
                    var acc = SIMD16<Float>()
                    for i in stride(from: 0, to: d, by: 16) {
                        acc += qh.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self) * kr.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
                    }
                    scores[j] = acc.sum() * scale
                    m = max(m, scores[j])
                }
                var l: Float = 0
                for j in 0..<n { scores[j] = Foundation.exp(scores[j] - m); l += scores[j] }
                let o = UnsafeMutableRawPointer(os.p + h * d)
                for i in stride(from: 0, to: d, by: 16) { o.storeBytes(of: SIMD16<Float>(), toByteOffset: 4 * i, as: SIMD16<Float>.self) }
                for j in 0..<n {
                    let vr = UnsafeRawPointer(vh + j * d), w = scores[j] / l
                    for i in stride(from: 0, to: d, by: 16) {
                        let a = o.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
                        o.storeBytes(of: a + w * vr.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self), toByteOffset: 4 * i, as: SIMD16<Float>.self)
                    }
                }
            }
        }
    }

    /// The read-bandwidth probe: a buffer of 256 MiB (or 8× the LLC, if larger), read as four
    /// concurrent streams per thread, and the bandwidth measured at the start of the run.
    ///
    /// (A 1 GiB probe read only ~14 GB/s on one thread here, against ~26 at 256 MiB and ~25 GB/s
    /// quoted in issue 6, so the smaller, harsher figure is the bound.)
    final class Probe {
        let buffer: UnsafeMutablePointer<Float>
        let count: Int
        /// Median GB/s per thread count, measured when the probe was made.
        private(set) var startGBs: [Int: Double] = [:]

        init(llcBytes: Int, threadCounts: [Int], reps: Int) {
            count = max(256 << 20, 8 * llcBytes) / 4
            buffer = .allocate(capacity: count)
            BenchHarness.fillRandom(buffer, count, seed: 1)
            for t in threadCounts { startGBs[t] = bandwidth(threads: t, reps: reps) }
        }

        deinit { buffer.deallocate() }

        var byteCount: Int { 4 * count }

        /// Median read bandwidth (GB/s) over `reps` reads of the buffer split among `threads`.
        func bandwidth(threads: Int, reps: Int) -> Double {
            BenchHarness.bandwidth(buffer, count: count, threads: threads, reps: reps)
        }
    }
}
