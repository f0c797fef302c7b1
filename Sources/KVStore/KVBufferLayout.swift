/// The order of a caller's buffer of per-head rows (keys, values, queries or attention outputs).
///
/// Every row is `headDim` contiguous values; the layout says how rows follow one another. For
/// `heads` heads and `tokens` tokens (query rows, for queries and outputs):
///
///     .headMajor   [head][token][headDim]    row (h, t) at (h · tokens + t) · headDim
///     .tokenMajor  [token][head][headDim]    row (h, t) at (t · heads + h) · headDim
///
/// `.tokenMajor` is what a model's Q/K/V projections produce (one token's heads side by side); the
/// store reads and writes it in place, gathering a KV head's query group per stream (O(rows ·
/// headDim), against the attention's O(rows · tokens · headDim)). The two layouts coincide when
/// `tokens == 1` (a decode step) or `heads == 1`.
public enum KVBufferLayout: Sendable, Hashable {
    /// `[head][token][headDim]`: the store's own order.
    case headMajor
    /// `[token][head][headDim]`: a model's projection order.
    case tokenMajor

    /// The index of the first element of row (`head`, `token`) in a buffer of `heads × tokens` rows
    /// of `headDim`.
    @inline(__always)
    func rowOffset(head: Int, token: Int, heads: Int, tokens: Int, headDim: Int) -> Int {
        (self == .headMajor ? head * tokens + token : token * heads + head) * headDim
    }

    /// Whether a buffer of `heads × tokens` rows in this layout is `[head][token][headDim]`.
    func isHeadMajor(heads: Int, tokens: Int) -> Bool { self == .headMajor || heads == 1 || tokens == 1 }
}
