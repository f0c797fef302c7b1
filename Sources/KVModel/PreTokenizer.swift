import KVQuantization

/// How text is split into pieces before BPE (llama.cpp's `tokenizer.ggml.pre`).
///
/// Both kinds apply GPT-2's pattern
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, implemented as a
/// scanner over Unicode scalars (letters = general categories L*, numbers = N*, whitespace = the
/// White_Space property). `.digitsThenGPT2` first isolates every number character, as Hugging
/// Face's `Digits(individual_digits: true)` and llama.cpp's `smollm`/`starcoder` pre-tokenizers do.
public enum PreTokenizer: Sendable, Hashable {
    /// GPT-2's pattern alone (`gpt2`, `default`).
    case gpt2
    /// Single digits first, then GPT-2's pattern (`smollm`, `starcoder`, `refact`).
    case digitsThenGPT2

    /// The pre-tokenizer llama.cpp calls `name`, if supported.
    public init?(name: String) {
        switch name {
        case "gpt2", "default": self = .gpt2
        case "smollm", "starcoder", "refact": self = .digitsThenGPT2
        default: return nil
        }
    }

    enum Class { case letter, number, space, other }

    static func classify(_ s: Unicode.Scalar) -> Class {
        s.value < 0x80 ? asciiClasses[Int(s.value)] : classifyByProperties(s)
    }

    /// `classifyByProperties` of the 128 ASCII scalars (most text), looked up instead of queried.
    static let asciiClasses: [Class] = (0..<0x80).map { classifyByProperties(Unicode.Scalar(UInt8($0))) }

    static func classifyByProperties(_ s: Unicode.Scalar) -> Class {
        if s.properties.isWhitespace { return .space }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    /// The pieces of `text`, in order; their concatenation is `text`.
    public func split(_ text: String) -> [String] {
        let bytes = Array(text.utf8)
        return byteRanges(text).map { String(decoding: bytes[$0], as: UTF8.self) }
    }

    /// The pieces of `text` as ranges of its UTF-8 bytes (`Array(text.utf8)`), in order: `split`
    /// without building a string per piece.
    func byteRanges(_ text: String) -> [Range<Int>] {
        let scalars = Array(text.unicodeScalars)
        let classes = scalars.map(Self.classify)
        var offsets = [Int]()
        offsets.reserveCapacity(scalars.count + 1)
        var o = 0
        for s in scalars {
            offsets.append(o)
            o += UTF8.width(s)
        }
        offsets.append(o)
        var ranges = [Range<Int>]()
        func emit(_ r: Range<Int>) { ranges.append(offsets[r.lowerBound]..<offsets[r.upperBound]) }
        switch self {
        case .gpt2:
            Self.gpt2(classes, scalars, 0..<scalars.count, emit)
        case .digitsThenGPT2:
            var start = 0
            for i in 0..<scalars.count where classes[i] == .number {
                if start < i { Self.gpt2(classes, scalars, start..<i, emit) }
                emit(i..<(i + 1))
                start = i + 1
            }
            if start < scalars.count { Self.gpt2(classes, scalars, start..<scalars.count, emit) }
        }
        return ranges
    }

    /// GPT-2's pattern over `range` (the range is matched on its own: its end is the text's end).
    static func gpt2(_ c: [Class], _ s: [Unicode.Scalar], _ range: Range<Int>, _ emit: (Range<Int>) -> Void) {
        let n = range.upperBound
        var i = range.lowerBound
        while i < n {
            // Contractions.
            if s[i] == "'", i + 1 < n {
                let a = s[i + 1], b: Unicode.Scalar? = i + 2 < n ? s[i + 2] : nil
                if a == "s" || a == "t" || a == "m" || a == "d" { emit(i..<(i + 2)); i += 2; continue }
                if (a == "r" && b == "e") || (a == "v" && b == "e") || (a == "l" && b == "l") { emit(i..<(i + 3)); i += 3; continue }
            }
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`.
            let j = (s[i] == " " && i + 1 < n) ? i + 1 : i
            let cls = c[j]
            if cls != .space {
                var k = j + 1
                while k < n, c[k] == cls { k += 1 }
                emit(i..<k)
                i = k
                continue
            }
            // `\s+(?!\S)|\s+`.
            var k = i
            while k < n, c[k] == .space { k += 1 }
            if k == n || k - i == 1 { emit(i..<k); i = k } else { emit(i..<(k - 1)); i = k - 1 }
        }
    }
}
