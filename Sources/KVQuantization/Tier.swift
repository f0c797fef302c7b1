/// A precision level a token can sit at. Tokens only ever move down: `fp16 → int8 → int4 → int2 →
/// dropped`, never back up (once quantised, the FP16 value is gone).
///
/// The formats behind the tiers are configured separately for keys and values (`TierFormats`).
public enum Tier: Int, Sendable, Hashable, Comparable, CaseIterable, CustomStringConvertible {
    case fp16 = 0
    case int8 = 1
    case int4 = 2
    case int2 = 3
    case dropped = 4

    /// The tiers that keep a token in memory, most precise first.
    public static let stored: [Tier] = [.fp16, .int8, .int4, .int2]

    public static func < (a: Tier, b: Tier) -> Bool { a.rawValue < b.rawValue }

    public var description: String {
        switch self {
        case .fp16: "fp16"
        case .int8: "int8"
        case .int4: "int4"
        case .int2: "int2"
        case .dropped: "dropped"
        }
    }

    /// Parses `fp16`, `int8`, `int4`, `int2` or `dropped`.
    public init?(name: String) {
        guard let t = Tier.allCases.first(where: { $0.description == name }) else { return nil }
        self = t
    }
}
