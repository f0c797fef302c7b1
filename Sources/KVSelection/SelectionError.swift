import KVQuantization

/// Bad input from outside the package (weights, budgets, error models) that a selection or planning
/// call refuses, with the offending value.
///
/// Caller bugs (mismatched shapes between arrays the caller built, indices out of range) trap with a
/// message instead; these cases are for values that come from files, configurations or a runtime.
public enum SelectionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `values.count` of an attention-weight array does not match its declared shape.
    case weightCountMismatch(expected: Int, actual: Int)
    /// The attention weight at flat index `index` is NaN, infinite or negative.
    case invalidWeight(index: Int, value: Float)
    /// A budget fraction that is NaN, infinite or negative.
    case invalidBudgetFraction(Double)
    /// An absolute byte budget that is negative.
    case invalidBudgetByteCount(Int)
    /// A representative share that is NaN or outside `0...1`.
    case invalidRepresentativeShare(Double)
    /// A tier that cannot be used where it was given (e.g. `.dropped` as the representative tier).
    case invalidTier(Tier, role: String)
    /// A per-tier relative error that is NaN, infinite, negative, or above the dropped error 1.
    case invalidTierError(Tier, Double)
    /// Sinks, recent window and decode headroom alone cost more than the budget allows.
    case budgetBelowProtectedTokens(requiredByteCount: Int, budgetByteCount: Int)

    public var description: String {
        switch self {
        case .weightCountMismatch(let e, let a):
            "attention weights: expected \(e) values for the declared shape, got \(a)"
        case .invalidWeight(let i, let v):
            "attention weight \(i) is \(v); weights must be finite and non-negative"
        case .invalidBudgetFraction(let f):
            "budget fraction is \(f); it must be finite and non-negative"
        case .invalidBudgetByteCount(let b):
            "budget byte count is \(b); it must be non-negative"
        case .invalidRepresentativeShare(let s):
            "representative share is \(s); it must be in 0...1"
        case .invalidTier(let t, let role):
            "tier \(t) cannot be used as the \(role)"
        case .invalidTierError(let t, let e):
            "relative error \(e) for tier \(t) must be finite and in 0...1"
        case .budgetBelowProtectedTokens(let r, let b):
            "sinks and recent window need \(r) bytes but the budget is \(b) bytes"
        }
    }
}
