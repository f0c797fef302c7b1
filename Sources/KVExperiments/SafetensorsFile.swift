import KVQuantization
import Foundation

/// A validated safetensors file, mapped rather than read, whose tensors convert on demand.
///
/// Layout (all integers little-endian):
///
///     | N: UInt64 | header: N bytes of UTF-8 JSON | data section: the tensors' bytes, back to back |
///     0           8                               8 + N                                     file end
///
///     header = {"__metadata__": {"key": "value", …},                          (optional)
///               "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, …}
///
/// Opening validates the whole header and layout (see `SafetensorsError` for every rule) but reads
/// no tensor data: `init(contentsOf:)` maps the file, so a large dump costs address space, not
/// memory, until `floats(_:)` or `int32s(_:)` converts the one tensor asked for into a new array.
///
/// Bad files always throw; no input crashes the parser. (A mapped file that another process
/// truncates while it is open can still fault on access, as with any memory-mapped file.)
public struct SafetensorsFile: Sendable {
    /// The `__metadata__` string map (empty when the header has none).
    public let metadata: [String: String]
    /// Every tensor, in the order of their data in the file.
    public let tensors: [SafetensorsTensorInfo]
    /// Bytes of the JSON header (including any padding), `N` in the layout above.
    public let headerByteCount: Int

    private let storage: Data
    private let index: [String: Int]

    /// Maps and validates the safetensors file at `url`.
    ///
    /// - Complexity: O(header size + t log t) for t tensors; tensor data is not read.
    public init(contentsOf url: URL) throws(SafetensorsError) {
        let data: Data
        do {
            data = try Data(contentsOf: url, options: .alwaysMapped)
        } catch {
            throw .unreadable(path: url.path, reason: SafetensorsHeader.reason(of: error))
        }
        try self.init(data: data)
    }

    /// Validates a safetensors file held in `data` (which is kept, not copied).
    ///
    /// - Complexity: O(header size + t log t) for t tensors; tensor data is not read.
    public init(data: Data) throws(SafetensorsError) {
        let fileByteCount = data.count
        guard fileByteCount >= 8 else { throw .fileTooShort(byteCount: fileByteCount) }
        let header: [UInt8]
        let headerLength: UInt64 = data.withUnsafeBytes {
            UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        }
        guard headerLength <= UInt64(SafetensorsHeader.maxByteCount) else {
            throw .headerTooLarge(headerByteCount: headerLength, limit: SafetensorsHeader.maxByteCount)
        }
        // headerLength <= 1e8, so the conversion and 8 + n cannot overflow.
        let n = Int(headerLength)
        guard n <= fileByteCount - 8 else {
            throw .headerExceedsFile(headerByteCount: headerLength, available: fileByteCount - 8)
        }
        header = data.withUnsafeBytes { Array($0[8 ..< 8 + n]) }
        let parsed = try SafetensorsHeader(header: header, dataByteCount: fileByteCount - 8 - n)
        metadata = parsed.metadata
        tensors = parsed.tensors
        headerByteCount = n
        storage = data
        var index: [String: Int] = [:]
        for (i, t) in parsed.tensors.enumerated() { index[t.name] = i }
        self.index = index
    }

    /// The tensors' names, in the order of their data in the file.
    public var tensorNames: [String] { tensors.map(\.name) }

    /// Bytes of the data section (all tensors' data).
    public var dataByteCount: Int { storage.count - 8 - headerByteCount }

    /// The dtype, shape and offsets of the tensor called `name`, or `nil` if there is none.
    public func info(_ name: String) -> SafetensorsTensorInfo? {
        index[name].map { tensors[$0] }
    }

    /// True if the file holds a tensor called `name`.
    public func contains(_ name: String) -> Bool { index[name] != nil }

    /// Calls `body` with the raw little-endian bytes of the tensor called `name`.
    ///
    /// The buffer is valid only inside `body` and must not escape it.
    public func withUnsafeBytes<R>(
        of name: String, _ body: (UnsafeRawBufferPointer) throws(SafetensorsError) -> R
    ) throws(SafetensorsError) -> R {
        guard let info = info(name) else { throw .tensorNotFound(name) }
        return try withUnsafeBytes(of: info, body)
    }

    func withUnsafeBytes<R>(
        of info: SafetensorsTensorInfo, _ body: (UnsafeRawBufferPointer) throws(SafetensorsError) -> R
    ) throws(SafetensorsError) -> R {
        let start = 8 + headerByteCount
        let result: Result<R, SafetensorsError> = storage.withUnsafeBytes { file in
            // Validated at init: dataOffsets lie inside the data section.
            let bytes = UnsafeRawBufferPointer(
                rebasing: file[start + info.dataOffsets.lowerBound ..< start + info.dataOffsets.upperBound])
            do throws(SafetensorsError) {
                return .success(try body(bytes))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}
