import KVQuantization

/// What a safetensors header says about one tensor: its dtype, shape and where its bytes lie.
///
/// Instances come only from a validated header, so `byteCount == elementCount × dtype.byteSize`
/// and `dataOffsets` lie inside the data section.
public struct SafetensorsTensorInfo: Sendable, Hashable {
    /// The tensor's name (its key in the header).
    public let name: String
    /// The element type.
    public let dtype: SafetensorsDType
    /// The dimensions, outermost first (row-major); `[]` is a scalar.
    public let shape: [Int]
    /// The product of `shape` (1 for a scalar, 0 if any dimension is 0).
    public let elementCount: Int
    /// The tensor's bytes, relative to the start of the data section (the header's `data_offsets`).
    public let dataOffsets: Range<Int>

    /// Bytes of the tensor's data: `elementCount × dtype.byteSize`.
    public var byteCount: Int { dataOffsets.count }
}
