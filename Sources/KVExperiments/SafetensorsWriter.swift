import KVQuantization
import Foundation
#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Collects named tensors and metadata and writes them as one safetensors file.
///
/// The output is what the reference implementation writes: compact JSON with `__metadata__` first
/// (keys sorted; omitted when empty), then the tensors in data order, padded with spaces to a
/// multiple of 8 bytes; the data is ordered by dtype (F32, I32, BF16, F16, as the reference
/// orders them), then by name, so every tensor starts at a multiple of its element size. The same
/// tensors and metadata always give the same bytes, byte-identical to the reference's output when
/// there is at most one metadata key (it orders metadata by hash).
///
///     var writer = SafetensorsWriter(metadata: ["format": "kv-dump/1"])
///     writer.add(.float32(keys, shape: [3, 2048, 64]), named: "layers.0.keys")
///     try writer.write(to: url)
public struct SafetensorsWriter: Sendable {
    /// The `__metadata__` string map.
    public var metadata: [String: String]
    /// Names of the tensors added so far, in the order they were added.
    public private(set) var tensorNames: [String] = []
    private var tensors: [String: SafetensorsTensor] = [:]

    /// An empty writer with the given metadata.
    public init(metadata: [String: String] = [:]) {
        self.metadata = metadata
    }

    /// Adds `tensor` under `name`.
    ///
    /// - Precondition: `name` is new and is not `__metadata__`.
    public mutating func add(_ tensor: SafetensorsTensor, named name: String) {
        precondition(name != "__metadata__", "SafetensorsWriter: '__metadata__' cannot name a tensor")
        precondition(tensors[name] == nil, "SafetensorsWriter: tensor '\(name)' was already added")
        tensors[name] = tensor
        tensorNames.append(name)
    }

    /// The tensor added under `name`, if any.
    public subscript(name: String) -> SafetensorsTensor? { tensors[name] }

    /// Names in data order, the reference implementation's: F32, I32, BF16, F16 (its dtype order,
    /// reversed), then by name.
    private var dataOrder: [String] {
        func rank(_ name: String) -> Int {
            switch tensors[name]?.dtype {
            case .f32?: 3
            case .i32?: 2
            case .bf16?: 1
            default: 0
            }
        }
        return tensorNames.sorted { a, b in
            let ra = rank(a), rb = rank(b)
            return ra != rb ? ra > rb : a < b
        }
    }

    /// The header bytes (JSON plus space padding to a multiple of 8), without the length prefix.
    func headerBytes() -> [UInt8] {
        var json = "{"
        var first = true
        if !metadata.isEmpty {
            json += Self.quoted("__metadata__") + ":{"
            json += metadata.keys.sorted().map { Self.quoted($0) + ":" + Self.quoted(metadata[$0] ?? "") }
                .joined(separator: ",")
            json += "}"
            first = false
        }
        var offset = 0
        for name in dataOrder {
            guard let t = tensors[name] else { continue }
            if !first { json += "," }
            first = false
            let end = offset + t.bytes.count
            json += Self.quoted(name) + ":{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":["
                + t.shape.map(String.init).joined(separator: ",")
                + "],\"data_offsets\":[\(offset),\(end)]}"
            offset = end
        }
        json += "}"
        var bytes = Array(json.utf8)
        let padding = (8 - bytes.count % 8) % 8
        bytes.append(contentsOf: repeatElement(UInt8(ascii: " "), count: padding))
        return bytes
    }

    /// The complete file in memory.
    ///
    /// - Complexity: O(total bytes); prefer `write(to:)` for large files, which streams.
    public func serialized() -> Data {
        let header = headerBytes()
        var data = Data(capacity: 8 + header.count + tensors.values.reduce(0) { $0 + $1.bytes.count })
        data.append(contentsOf: Self.lengthPrefix(header.count))
        data.append(contentsOf: header)
        for name in dataOrder { if let t = tensors[name] { data.append(contentsOf: t.bytes) } }
        return data
    }

    /// Writes the file to `url`: into a temporary file beside it, then renamed over `url`, so
    /// readers never see a partial file.
    ///
    /// - Throws: `SafetensorsError.writeFailed` with the underlying reason.
    public func write(to url: URL) throws(SafetensorsError) {
        let directory = url.deletingLastPathComponent()
        let temporary = directory.appendingPathComponent(".\(url.lastPathComponent).\(UUID().uuidString).tmp")
        let path = url.path
        guard FileManager.default.createFile(atPath: temporary.path, contents: nil) else {
            throw .writeFailed(path: path, reason: "cannot create temporary file '\(temporary.path)'")
        }
        do {
            let handle = try FileHandle(forWritingTo: temporary)
            do {
                let header = headerBytes()
                try handle.write(contentsOf: Self.lengthPrefix(header.count) + header)
                for name in dataOrder {
                    if let t = tensors[name] { try handle.write(contentsOf: t.bytes) }
                }
                try handle.synchronize()
                try handle.close()
            } catch {
                try? handle.close()
                throw error
            }
        } catch {
            try? FileManager.default.removeItem(at: temporary)
            throw .writeFailed(path: path, reason: SafetensorsHeader.reason(of: error))
        }
        guard rename(temporary.path, path) == 0 else {
            let reason = String(cString: strerror(errno))
            try? FileManager.default.removeItem(at: temporary)
            throw .writeFailed(path: path, reason: "cannot rename temporary file into place: \(reason)")
        }
    }

    private static func lengthPrefix(_ n: Int) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: UInt64(n) >> (8 * $0)) }
    }

    /// `s` as a JSON string literal: quotes, backslashes and control characters escaped.
    static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
