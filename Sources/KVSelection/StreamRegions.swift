import KVQuantization

/// Sizes of the two protected regions of a stream: the first `sinkTokenCount` tokens (attention
/// sinks) and the last `recentTokenCount` tokens (recent window). Everything between is the middle,
/// the only region a policy may quantise or drop.
///
///     | sinks: first S | middle (compressible) | recent window: last R |
///
/// When a stream holds fewer than `S + R` tokens the sinks take the first `min(S, n)`, the window
/// the rest up to `R`, and the middle is empty.
///
/// `tier` is the precision the two regions keep when a plan has to compress (FP16 by default; INT8
/// halves their bytes at an error ~2⁻⁸ of a row's range, which at a ¼ budget buys the middle tokens
/// that would otherwise be dropped). When everything fits, nothing moves, the regions included.
/// Tokens appended since the last plan (a decode session's headroom) stay FP16 until the next plan.
public struct StreamRegions: Sendable, Hashable {
    /// S: tokens kept at `tier` at the start.
    public var sinkTokenCount: Int
    /// R: tokens kept at `tier` at the end.
    public var recentTokenCount: Int
    /// The tier sinks and recent window are kept at (and the plain plan's top share): `.fp16` or
    /// `.int8`.
    public var tier: Tier

    /// S = 4 sinks (StreamingLLM), R = 32 recent tokens (SnapKV's observation window), at FP16.
    ///
    /// - Precondition: sizes non-negative; `tier` is `.fp16` or `.int8`.
    public init(sinkTokenCount: Int = 4, recentTokenCount: Int = 32, tier: Tier = .fp16) {
        precondition(sinkTokenCount >= 0 && recentTokenCount >= 0, "StreamRegions: sizes must be non-negative")
        precondition(tier == .fp16 || tier == .int8, "StreamRegions: the protected tier must be fp16 or int8, got \(tier)")
        self.sinkTokenCount = sinkTokenCount
        self.recentTokenCount = recentTokenCount
        self.tier = tier
    }

    /// The index ranges of the three regions in a stream of `tokenCount` tokens ordered by position.
    ///
    /// - Complexity: O(1).
    public func split(tokenCount n: Int) -> RegionRanges {
        precondition(n >= 0, "StreamRegions: tokenCount must be non-negative")
        let sinkEnd = min(sinkTokenCount, n)
        let recentStart = max(sinkEnd, n - recentTokenCount)
        return RegionRanges(sinks: 0..<sinkEnd, middle: sinkEnd..<recentStart, recent: recentStart..<n)
    }
}

/// Index ranges of the sinks, the middle and the recent window of one stream.
public struct RegionRanges: Sendable, Hashable {
    /// The first tokens, always FP16.
    public var sinks: Range<Int>
    /// The compressible tokens.
    public var middle: Range<Int>
    /// The last tokens, always FP16.
    public var recent: Range<Int>
    /// Number of protected (sink + recent) tokens.
    public var protectedTokenCount: Int { sinks.count + recent.count }
}
