import KVQuantization

/// One GGUF metadata value: a scalar, a string, or an array of values of one type.
public enum GGUFValue: Sendable, Hashable, CustomStringConvertible {
    /// Integers of each width GGUF defines (type ids 0–5, 10, 11).
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    /// Floats (type ids 6, 12), a Boolean (one byte, 0 or 1; id 7), a UTF-8 string (id 8) and
    /// 64-bit integers.
    case float32(Float), bool(Bool), string(String), uint64(UInt64), int64(Int64), float64(Double)
    /// An array; `elementType` is the GGUF type id of its elements (every element has it).
    case array(elementType: GGUFValueType, [GGUFValue])

    /// The value as an integer if it is one of the integer cases and fits in `Int`.
    public var integer: Int? {
        switch self {
        case .uint8(let v): Int(v)
        case .int8(let v): Int(v)
        case .uint16(let v): Int(v)
        case .int16(let v): Int(v)
        case .uint32(let v): Int(v)
        case .int32(let v): Int(v)
        case .uint64(let v): Int(exactly: v)
        case .int64(let v): Int(exactly: v)
        default: nil
        }
    }

    /// The value as a floating-point number if it is a float or an integer.
    public var double: Double? {
        switch self {
        case .float32(let v): Double(v)
        case .float64(let v): v
        default: integer.map(Double.init)
        }
    }

    /// The string, if this is a string.
    public var string: String? { if case .string(let s) = self { s } else { nil } }

    /// The Boolean, if this is a Boolean.
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }

    /// The elements, if this is an array.
    public var array: [GGUFValue]? { if case .array(_, let a) = self { a } else { nil } }

    public var description: String {
        switch self {
        case .uint8(let v): "\(v)"
        case .int8(let v): "\(v)"
        case .uint16(let v): "\(v)"
        case .int16(let v): "\(v)"
        case .uint32(let v): "\(v)"
        case .int32(let v): "\(v)"
        case .float32(let v): "\(v)"
        case .bool(let v): "\(v)"
        case .string(let v): "\"\(v)\""
        case .uint64(let v): "\(v)"
        case .int64(let v): "\(v)"
        case .float64(let v): "\(v)"
        case .array(let t, let a): "[\(a.count) × \(t)]"
        }
    }
}

/// The type ids of GGUF metadata values (the file's `gguf_metadata_value_type`).
public enum GGUFValueType: UInt32, Sendable, Hashable, CaseIterable {
    /// The ids as the file stores them.
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Bytes of one value of a fixed-size type; `nil` for strings and arrays.
    public var fixedByteCount: Int? {
        switch self {
        case .uint8, .int8, .bool: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64: 8
        case .string, .array: nil
        }
    }
}
