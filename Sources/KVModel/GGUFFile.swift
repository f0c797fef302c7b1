import KVQuantization
import Foundation

/// A validated GGUF (version 3) file, mapped rather than read, whose tensors dequantise on demand.
///
/// Layout (all integers little-endian; strings are a UInt64 length then UTF-8 bytes):
///
///     | "GGUF" | version: UInt32 = 3 | tensorCount: UInt64 | metadataCount: UInt64 |
///     | metadata: metadataCount × (key: string, type: UInt32, value) |
///     | tensor infos: tensorCount × (name: string, dims: UInt32, ne: dims × UInt64, type: UInt32, offset: UInt64) |
///     | padding to `general.alignment` (default 32) | data section: each tensor at its offset |
///
/// A value is a scalar of its type, a string, or an array (element type: UInt32, count: UInt64,
/// then the elements). Opening validates everything but the tensor values themselves: counts
/// against the bytes left, string lengths and UTF-8, value types, array nesting (at most
/// `maxArrayDepth`), duplicate keys and names, the alignment, each tensor's shape (at most four
/// dimensions, none zero, no overflow), type, block alignment, offset alignment and that its data
/// lies inside the file. Bad files always throw `GGUFError`; no input crashes the parser.
public struct GGUFFile: Sendable {
    /// GGUF version (always 3).
    public let version: UInt32
    /// Metadata in file order.
    public let metadata: [(key: String, value: GGUFValue)]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    /// The alignment of tensor data (`general.alignment`, default 32).
    public let alignment: Int
    /// Offset of the data section from the start of the file.
    public let dataOffset: Int

    let storage: Data
    private let keyIndex: [String: Int]
    private let tensorIndex: [String: Int]

    /// The deepest nesting of arrays accepted (an array of arrays is depth 2).
    public static let maxArrayDepth = 4

    /// Maps and validates the GGUF file at `url`.
    public init(contentsOf url: URL) throws(GGUFError) {
        let data: Data
        do { data = try Data(contentsOf: url, options: .alwaysMapped) } catch {
            throw .unreadable(path: url.path, reason: (error as NSError).localizedDescription)
        }
        try self.init(data: data)
    }

    /// Validates a GGUF file held in `data` (kept, not copied).
    public init(data: Data) throws(GGUFError) {
        let parsed: Result<Parsed, GGUFError> = data.withUnsafeBytes { raw in
            var reader = GGUFByteReader(bytes: raw)
            do throws(GGUFError) { return .success(try Parsed(&reader)) } catch { return .failure(error) }
        }
        let p = try parsed.get()
        version = p.version
        metadata = p.metadata
        tensors = p.tensors
        alignment = p.alignment
        dataOffset = p.dataOffset
        storage = data
        keyIndex = p.keyIndex
        tensorIndex = p.tensorIndex
    }

    /// The value of metadata `key`, if present.
    public subscript(key: String) -> GGUFValue? { keyIndex[key].map { metadata[$0].value } }

    /// The tensor called `name`, if present.
    public func tensor(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }

    /// Calls `body` with the raw bytes of a tensor (valid only inside `body`).
    ///
    /// - Precondition: `tensor` is one of this file's `tensors` (a caller bug otherwise: traps).
    public func withUnsafeBytes<R>(of tensor: GGUFTensorInfo, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        precondition(tensorIndex[tensor.name].map { tensors[$0] == tensor } ?? false,
                     "GGUFFile.withUnsafeBytes: tensor \(tensor.name) is not one of this file's tensors")
        return try storage.withUnsafeBytes { file in
            // Validated at init: the tensor's data lies inside the file.
            try body(UnsafeRawBufferPointer(rebasing: file[(dataOffset + tensor.offset)..<(dataOffset + tensor.offset + tensor.byteCount)]))
        }
    }

    // MARK: Parsing

    private struct Parsed {
        var version: UInt32 = 0
        var metadata: [(key: String, value: GGUFValue)] = []
        var tensors: [GGUFTensorInfo] = []
        var alignment = 32
        var dataOffset = 0
        var keyIndex: [String: Int] = [:]
        var tensorIndex: [String: Int] = [:]

        init(_ r: inout GGUFByteReader) throws(GGUFError) {
            let magic = try r.bytes(4, "magic")
            guard magic == Array("GGUF".utf8) else { throw .badMagic(found: magic) }
            version = try r.uint32("version")
            guard version == 3 else { throw .unsupportedVersion(version) }
            let tensorCount = try r.uint64("tensor count")
            let keyCount = try r.uint64("metadata count")
            // A metadata entry takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 8 + 4 + 8.
            guard keyCount <= UInt64(r.remaining / 13) else { throw .implausibleCount(what: "metadata", count: keyCount, offset: 16) }
            for _ in 0..<Int(keyCount) {
                let key = try r.string("metadata key")
                let typeOffset = r.offset
                let rawType = try r.uint32("value type of \(key)")
                guard let type = GGUFValueType(rawValue: rawType) else { throw .unknownValueType(key: key, type: rawType) }
                _ = typeOffset
                let value = try r.value(type, key: key, depth: 0)
                guard keyIndex[key] == nil else { throw .duplicateKey(key) }
                keyIndex[key] = metadata.count
                metadata.append((key, value))
            }
            if let i = keyIndex["general.alignment"] {
                guard case .uint32(let a) = metadata[i].value else { throw .invalidAlignment("must be a UInt32, got \(metadata[i].value)") }
                guard a > 0, a & (a - 1) == 0, a <= 1 << 20 else { throw .invalidAlignment("must be a power of two ≤ 2^20, got \(a)") }
                alignment = Int(a)
            }
            guard tensorCount <= UInt64(r.remaining / 32) else {
                throw .implausibleCount(what: "tensor", count: tensorCount, offset: 8)
            }
            var raw = [(name: String, shape: [UInt64], type: UInt32, offset: UInt64)]()
            for _ in 0..<Int(tensorCount) {
                let name = try r.string("tensor name")
                let dimOffset = r.offset
                let dims = try r.uint32("dimension count of \(name)")
                guard dims >= 1, dims <= 4 else { throw .implausibleCount(what: "dimension (of \(name))", count: UInt64(dims), offset: dimOffset) }
                var shape = [UInt64]()
                for _ in 0..<Int(dims) { shape.append(try r.uint64("dimensions of \(name)")) }
                let type = try r.uint32("type of \(name)")
                let offset = try r.uint64("offset of \(name)")
                raw.append((name, shape, type, offset))
            }
            // Data section: the next multiple of the alignment (offset ≤ file size, so no overflow).
            dataOffset = (r.offset + alignment - 1) / alignment * alignment
            let dataBytes = max(0, r.count - dataOffset)
            for t in raw {
                guard tensorIndex[t.name] == nil else { throw .duplicateTensor(t.name) }
                guard let type = GGMLType(rawValue: t.type) else { throw .unsupportedTensorType(tensor: t.name, type: t.type) }
                var elements = 1
                var shape = [Int]()
                for d in t.shape {
                    guard d > 0, d <= UInt64(Int32.max), case let (p, o) = elements.multipliedReportingOverflow(by: Int(d)), !o else {
                        throw .invalidShape(tensor: t.name, shape: t.shape)
                    }
                    elements = p
                    shape.append(Int(d))
                }
                guard shape[0] % type.blockSize == 0 else {
                    throw .misalignedBlocks(tensor: t.name, rowLength: shape[0], blockSize: type.blockSize)
                }
                let (bytes, o) = (elements / type.blockSize).multipliedReportingOverflow(by: type.blockByteCount)
                guard !o else { throw .invalidShape(tensor: t.name, shape: t.shape) }
                guard t.offset % UInt64(alignment) == 0 else {
                    throw .invalidTensorData(tensor: t.name, offset: t.offset, byteCount: bytes, reason: "is not aligned to \(alignment)")
                }
                guard t.offset <= UInt64(dataBytes), bytes <= dataBytes - Int(t.offset) else {
                    throw .invalidTensorData(tensor: t.name, offset: t.offset, byteCount: bytes,
                                             reason: "runs past the end of the file (data section holds \(dataBytes) bytes)")
                }
                tensorIndex[t.name] = tensors.count
                tensors.append(GGUFTensorInfo(name: t.name, shape: shape, type: type, offset: Int(t.offset), byteCount: bytes))
            }
        }
    }
}

/// Bounds-checked little-endian reads from a buffer; every read that would run past the end throws.
struct GGUFByteReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0
    var count: Int { bytes.count }
    var remaining: Int { bytes.count - offset }

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    mutating func need(_ n: Int, _ what: String) throws(GGUFError) {
        guard n >= 0, n <= remaining else { throw .truncated(offset: offset, needed: n, what: what) }
    }

    mutating func load<T: FixedWidthInteger>(_: T.Type, _ what: String) throws(GGUFError) -> T {
        try need(MemoryLayout<T>.size, what)
        let v = T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }

    mutating func uint32(_ what: String) throws(GGUFError) -> UInt32 { try load(UInt32.self, what) }
    mutating func uint64(_ what: String) throws(GGUFError) -> UInt64 { try load(UInt64.self, what) }

    mutating func bytes(_ n: Int, _ what: String) throws(GGUFError) -> [UInt8] {
        try need(n, what)
        defer { offset += n }
        return Array(bytes[offset..<(offset + n)])
    }

    mutating func string(_ what: String) throws(GGUFError) -> String {
        let start = offset
        let n = try uint64("length of \(what)")
        guard n <= UInt64(remaining) else { throw .truncated(offset: start, needed: n > UInt64(Int.max) ? Int.max : Int(n), what: what) }
        let raw = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + Int(n))])
        guard let s = String(validating: raw, as: UTF8.self) else { throw .invalidString(offset: start) }
        offset += Int(n)
        return s
    }

    mutating func value(_ type: GGUFValueType, key: String, depth: Int) throws(GGUFError) -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try load(UInt8.self, key))
        case .int8: return .int8(try load(Int8.self, key))
        case .uint16: return .uint16(try load(UInt16.self, key))
        case .int16: return .int16(try load(Int16.self, key))
        case .uint32: return .uint32(try load(UInt32.self, key))
        case .int32: return .int32(try load(Int32.self, key))
        case .uint64: return .uint64(try load(UInt64.self, key))
        case .int64: return .int64(try load(Int64.self, key))
        case .float32: return .float32(Float(bitPattern: try load(UInt32.self, key)))
        case .float64: return .float64(Double(bitPattern: try load(UInt64.self, key)))
        case .bool:
            let b = try load(UInt8.self, key)
            guard b <= 1 else { throw .unknownValueType(key: key + " (Boolean byte \(b))", type: GGUFValueType.bool.rawValue) }
            return .bool(b == 1)
        case .string: return .string(try string(key))
        case .array:
            guard depth < GGUFFile.maxArrayDepth else {
                throw .implausibleCount(what: "array nesting (of \(key))", count: UInt64(depth + 1), offset: offset)
            }
            let raw = try uint32("array element type of \(key)")
            guard let element = GGUFValueType(rawValue: raw) else { throw .unknownValueType(key: key, type: raw) }
            let countOffset = offset
            let n = try uint64("array length of \(key)")
            let minimum = element.fixedByteCount ?? (element == .string ? 8 : 12)
            guard n <= UInt64(remaining / minimum) else { throw .implausibleCount(what: "array element (of \(key))", count: n, offset: countOffset) }
            var out = [GGUFValue]()
            out.reserveCapacity(Int(n))
            for _ in 0..<Int(n) { out.append(try value(element, key: key, depth: depth + 1)) }
            return .array(elementType: element, out)
        }
    }
}
