import KVQuantization

/// Where one tensor of a GGUF file lives and what it holds.
public struct GGUFTensorInfo: Sendable, Hashable {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    public let name: String
    /// Dimensions, innermost (contiguous) first, as ggml's `ne`: a matrix of `rows` rows of
    /// `columns` values is `[columns, rows]`.
    public let shape: [Int]
    /// Element type.
    public let type: GGMLType
    /// Offset of the data from the start of the data section (a multiple of the alignment).
    public let offset: Int
    /// Bytes of the data.
    public let byteCount: Int

    /// Values in the tensor (the product of `shape`).
    public var elementCount: Int { shape.reduce(1, *) }
    /// Length of one row (`shape[0]`).
    public var rowLength: Int { shape[0] }
    /// Rows (the product of the outer dimensions).
    public var rowCount: Int { shape.dropFirst().reduce(1, *) }
}
