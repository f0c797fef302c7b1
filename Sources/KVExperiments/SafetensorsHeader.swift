import KVQuantization
import Foundation

/// The parsed and validated header of a safetensors file (internal; see `SafetensorsFile`).
///
/// Validation follows the reference implementation: UTF-8 JSON object (leading whitespace allowed); `__metadata__` an object of
/// strings (or absent / null); every other key a tensor entry with a known `dtype`, a `shape` of
/// non-negative integers and `data_offsets` `[begin, end]` spanning exactly `elementCount × size`
/// bytes; no duplicate keys; and the tensors, sorted by offset, tile the data section exactly.
struct SafetensorsHeader: Sendable {
    /// The largest accepted header, in bytes (the reference implementation's limit).
    static let maxByteCount = 100_000_000

    var metadata: [String: String]
    /// Tensors sorted by their offset in the data section (ties by end, then name).
    var tensors: [SafetensorsTensorInfo]

    /// Parses `header` (the JSON bytes) for a data section of `dataByteCount` bytes.
    ///
    /// - Complexity: O(h + t log t) for h header bytes and t tensors.
    init(header: [UInt8], dataByteCount: Int) throws(SafetensorsError) {
        guard Self.isValidUTF8(header) else { throw .headerNotUTF8 }
        // Leading JSON whitespace is accepted, as by the reference implementation.
        let jsonWhitespace: [UInt8] = [0x20, 0x09, 0x0A, 0x0D]
        guard let first = header.first(where: { !jsonWhitespace.contains($0) }) else {
            throw .headerNotObject(found: header.isEmpty ? "an empty header" : "only whitespace")
        }
        guard first == UInt8(ascii: "{") else {
            throw .headerNotObject(found: "\(Self.describeByte(first)) at its start")
        }
        let root: Any
        do {
            root = try JSONSerialization.jsonObject(with: Data(header), options: [])
        } catch {
            throw .malformedHeader(reason: Self.reason(of: error))
        }
        guard let object = root as? [String: Any] else {
            throw .headerNotObject(found: Self.describe(root))
        }
        // JSONSerialization keeps one of two equal keys silently; find duplicates, and the order of
        // the top-level keys (for deterministic error reports), by scanning the valid JSON.
        var keyOrder = try JSONKeyScanner.topLevelKeys(of: header)
        if Set(keyOrder) != Set(object.keys) {  // defensive: never silently drop an entry
            keyOrder = object.keys.sorted()
        }

        var metadata: [String: String] = [:]
        var tensors: [SafetensorsTensorInfo] = []
        tensors.reserveCapacity(keyOrder.count)
        for name in keyOrder {
            guard let entry = object[name] else { continue }  // unreachable: keyOrder == object.keys
            if name == "__metadata__" {
                metadata = try Self.parseMetadata(entry)
            } else {
                tensors.append(try Self.parseTensor(name: name, entry: entry, dataByteCount: dataByteCount))
            }
        }
        try Self.checkLayout(&tensors, dataByteCount: dataByteCount)
        self.metadata = metadata
        self.tensors = tensors
    }

    // MARK: Entries

    private static func parseMetadata(_ entry: Any) throws(SafetensorsError) -> [String: String] {
        if entry is NSNull { return [:] }
        guard let dict = entry as? [String: Any] else {
            throw .invalidMetadata(key: nil, found: describe(entry))
        }
        var metadata: [String: String] = [:]
        for key in dict.keys.sorted() {
            guard let value = dict[key] as? String else {
                throw .invalidMetadata(key: key, found: describe(dict[key] as Any))
            }
            metadata[key] = value
        }
        return metadata
    }

    private static func parseTensor(
        name: String, entry: Any, dataByteCount: Int
    ) throws(SafetensorsError) -> SafetensorsTensorInfo {
        guard let fields = entry as? [String: Any] else {
            throw .invalidTensorEntry(tensor: name, found: describe(entry))
        }
        guard let dtypeValue = fields["dtype"] else { throw .missingField(tensor: name, field: "dtype") }
        guard let shapeValue = fields["shape"] else { throw .missingField(tensor: name, field: "shape") }
        guard let offsetsValue = fields["data_offsets"] else {
            throw .missingField(tensor: name, field: "data_offsets")
        }

        guard let dtypeString = dtypeValue as? String else {
            throw .invalidField(tensor: name, field: "dtype", expected: "a string", found: describe(dtypeValue))
        }
        guard let dtype = SafetensorsDType(rawValue: dtypeString) else {
            throw .unsupportedDType(tensor: name, dtype: dtypeString)
        }

        guard let dims = shapeValue as? [Any] else {
            throw .invalidField(tensor: name, field: "shape", expected: "an array of integers",
                                found: describe(shapeValue))
        }
        var shape: [Int] = []
        shape.reserveCapacity(dims.count)
        for (axis, dim) in dims.enumerated() {
            guard let d = integer(dim), d >= 0 else {
                throw .invalidDimension(tensor: name, axis: axis, found: describe(dim))
            }
            shape.append(d)
        }

        let offsetsExpected = "two non-negative integers [begin, end]"
        guard let offsets = offsetsValue as? [Any] else {
            throw .invalidField(tensor: name, field: "data_offsets", expected: offsetsExpected,
                                found: describe(offsetsValue))
        }
        guard offsets.count == 2 else {
            throw .invalidField(tensor: name, field: "data_offsets", expected: offsetsExpected,
                                found: "an array of \(offsets.count)")
        }
        guard let begin = integer(offsets[0]), begin >= 0 else {
            throw .invalidField(tensor: name, field: "data_offsets", expected: offsetsExpected,
                                found: "begin \(describe(offsets[0]))")
        }
        guard let end = integer(offsets[1]), end >= 0 else {
            throw .invalidField(tensor: name, field: "data_offsets", expected: offsetsExpected,
                                found: "end \(describe(offsets[1]))")
        }
        guard begin <= end else { throw .invalidOffsets(tensor: name, begin: begin, end: end) }

        var elementCount = 1
        for d in shape {
            let (product, overflow) = elementCount.multipliedReportingOverflow(by: d)
            guard !overflow else { throw .sizeOverflow(tensor: name, shape: shape) }
            elementCount = product
        }
        let (byteCount, overflow) = elementCount.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow else { throw .sizeOverflow(tensor: name, shape: shape) }
        // Both offsets are non-negative and begin <= end, so end - begin cannot overflow.
        guard end - begin == byteCount else {
            throw .byteCountMismatch(tensor: name, expected: byteCount, found: end - begin)
        }
        guard end <= dataByteCount else {
            throw .offsetsBeyondData(tensor: name, end: end, dataByteCount: dataByteCount)
        }
        return SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, elementCount: elementCount,
                                     dataOffsets: begin..<end)
    }

    /// Sorts `tensors` by offset and checks that they tile `0 ..< dataByteCount` exactly.
    private static func checkLayout(
        _ tensors: inout [SafetensorsTensorInfo], dataByteCount: Int
    ) throws(SafetensorsError) {
        tensors.sort {
            ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name)
                < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name)
        }
        var covered = 0
        var previous: String?
        for t in tensors {
            let begin = t.dataOffsets.lowerBound
            if begin < covered, let previous {
                throw .overlappingTensors(previous, t.name)
            }
            if begin > covered {
                throw .unusedBytes(offset: covered, byteCount: begin - covered)
            }
            covered = t.dataOffsets.upperBound
            previous = t.name
        }
        if covered < dataByteCount {
            throw .trailingBytes(offset: covered, byteCount: dataByteCount - covered)
        }
    }

    // MARK: JSON values

    /// The integer a JSON number holds, or `nil` for non-integers (`2.0`, booleans, out of range).
    static func integer(_ value: Any) -> Int? {
        guard let number = value as? NSNumber else { return nil }
        switch String(cString: number.objCType) {
        case "s", "i", "l", "q":
            let v = number.int64Value
            return Int(exactly: v)
        case "S", "I", "L", "Q":
            return Int(exactly: number.uint64Value)
        default:  // "c" (booleans), "d"/"f" (JSON numbers with a fraction or exponent)
            return nil
        }
    }

    /// A short description of a JSON value for error messages.
    static func describe(_ value: Any) -> String {
        if value is NSNull { return "null" }
        if let s = value as? String {
            return s.count > 40 ? "string \"\(s.prefix(40))…\"" : "string \"\(s)\""
        }
        if let n = value as? NSNumber {
            if String(cString: n.objCType) == "c" { return "boolean \(n.boolValue)" }
            return "number \(n)"
        }
        if let a = value as? [Any] { return "an array of \(a.count)" }
        if value is [String: Any] { return "an object" }
        return "\(type(of: value))"
    }

    static func isValidUTF8(_ bytes: [UInt8]) -> Bool {
        var decoder = UTF8()
        var iterator = bytes.makeIterator()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    static func describeByte(_ byte: UInt8) -> String {
        if byte >= 0x20 && byte < 0x7F { return "'\(Character(UnicodeScalar(byte)))'" }
        return "byte 0x" + String(byte, radix: 16, uppercase: true)
    }

    static func reason(of error: any Error) -> String {
        let ns = error as NSError
        if let detail = ns.userInfo[NSDebugDescriptionErrorKey] as? String { return detail }
        return ns.localizedDescription
    }
}

/// Finds duplicate keys in well-formed JSON, which `JSONSerialization` silently merges.
///
/// Runs only on text `JSONSerialization` accepted, but never indexes out of bounds on any input.
/// Iterative (an explicit stack), so nesting depth cannot overflow the call stack.
enum JSONKeyScanner {
    private struct Frame {
        var isObject: Bool
        var name: String
        var keys: Set<String> = []
        var order: [String] = []
    }

    /// The keys of the top-level object, in text order; throws on the first duplicate key in any
    /// object (`duplicateName` at the top level, `duplicateKey` below it).
    static func topLevelKeys(of json: [UInt8]) throws(SafetensorsError) -> [String] {
        var stack: [Frame] = []
        var topLevel: [String] = []
        var lastKey: String?
        var i = 0
        let n = json.count
        while i < n {
            let c = json[i]
            switch c {
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                let parent = stack.last
                let name: String
                if let parent, let lastKey {
                    name = stack.count == 1 ? lastKey : parent.name + "." + lastKey
                } else {
                    name = parent?.name ?? "header"
                }
                stack.append(Frame(isObject: c == UInt8(ascii: "{"), name: name))
                lastKey = nil
                i += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                if let frame = stack.popLast(), stack.isEmpty { topLevel = frame.order }
                lastKey = nil
                i += 1
            case UInt8(ascii: "\""):
                var j = i + 1
                var escaped = false
                while j < n && json[j] != UInt8(ascii: "\"") {
                    if json[j] == UInt8(ascii: "\\") { escaped = true; j += 1 }
                    j += 1
                }
                guard j < n else { return topLevel }  // unterminated: not valid JSON anyway
                var k = j + 1
                while k < n, json[k] == 0x20 || json[k] == 0x09 || json[k] == 0x0A || json[k] == 0x0D { k += 1 }
                if k < n, json[k] == UInt8(ascii: ":"), let top = stack.last, top.isObject {
                    let key = decodeString(json[i...j], escaped: escaped)
                    if stack[stack.count - 1].keys.contains(key) {
                        if stack.count == 1 { throw .duplicateName(key) }
                        throw .duplicateKey(key: key, inside: top.name)
                    }
                    stack[stack.count - 1].keys.insert(key)
                    if stack.count == 1 { stack[0].order.append(key) }
                    lastKey = key
                } else {
                    lastKey = nil
                }
                i = j + 1
            default:
                i += 1
            }
        }
        return topLevel
    }

    /// Decodes a quoted JSON string (quotes included).
    private static func decodeString(_ quoted: ArraySlice<UInt8>, escaped: Bool) -> String {
        if !escaped { return String(decoding: quoted.dropFirst().dropLast(), as: UTF8.self) }
        if let s = (try? JSONSerialization.jsonObject(with: Data(quoted), options: .fragmentsAllowed)) as? String {
            return s
        }
        return String(decoding: quoted, as: UTF8.self)
    }
}
