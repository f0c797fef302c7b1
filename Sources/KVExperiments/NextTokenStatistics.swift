import KVQuantization
import Foundation
import KVModel

/// Log-probabilities and divergences of next-token distributions given as logits.
///
/// Everything is computed in Double from FP32 logits, with the maximum subtracted first, so no
/// overflow is possible for finite logits.
public enum NextTokenStatistics {
    /// log softmax(logits)[token].
    public static func logProbability(of token: Int32, in logits: ArraySlice<Float>) -> Double {
        let base = logits.startIndex
        return Double(logits[base + Int(token)]) - logSumExp(logits)
    }

    /// log Σ exp(logits).
    public static func logSumExp(_ logits: ArraySlice<Float>) -> Double {
        let m = Double(logits.max() ?? 0)
        var s = 0.0
        for v in logits { s += Foundation.exp(Double(v) - m) }
        return m + Foundation.log(s)
    }

    /// log softmax of `logits`.
    public static func logSoftmax(_ logits: ArraySlice<Float>) -> [Double] {
        let z = logSumExp(logits)
        return logits.map { Double($0) - z }
    }

    /// KL(P ‖ Q) = Σ p·(log p − log q) for log-probabilities `logP` (the reference) and `logQ`.
    public static func klDivergence(_ logP: [Double], _ logQ: [Double]) -> Double {
        precondition(logP.count == logQ.count, "NextTokenStatistics.klDivergence: \(logP.count) vs \(logQ.count) entries")
        var s = 0.0
        for i in logP.indices where logP[i] > -.infinity { s += Foundation.exp(logP[i]) * (logP[i] - logQ[i]) }
        return max(0, s)
    }

    /// The index of the largest logit (the first if tied): `LlamaModel.mostLikelyToken`.
    public static func argmax(_ logits: ArraySlice<Float>) -> Int32 { LlamaModel.mostLikelyToken(logits) }
}
