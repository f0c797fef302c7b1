import Testing
@testable import KVQuantization

@Suite struct StorageFormatTests {
    @Test func exactBytes() {
        // INT4, g = 32, d = 128: 64 code bytes + 4 groups × (scale, zero) × 2 bytes = 80 = 0.625 B/element.
        #expect(StorageFormat.grouped(.int4, groupSize: 32).rowByteCount(headDim: 128) == 80)
        #expect(StorageFormat.grouped(.int4, groupSize: 32).bytesPerElement(headDim: 128) == 0.625)
        #expect(StorageFormat.grouped(.int8, groupSize: 64).rowByteCount(headDim: 128) == 128 + 8)
        #expect(StorageFormat.grouped(.int2, groupSize: 32).rowByteCount(headDim: 64) == 16 + 8)
        #expect(StorageFormat.fp16.rowByteCount(headDim: 64) == 128)
        // Ragged: d = 63, g = 32 → two groups; INT4 packs 63 codes into 32 bytes.
        #expect(StorageFormat.grouped(.int4, groupSize: 32).rowByteCount(headDim: 63) == 32 + 8)
        // A group larger than the row is one group.
        #expect(StorageFormat.grouped(.int2, groupSize: 128).rowByteCount(headDim: 7) == 2 + 4)
        // Channelwise: per-token codes plus 4·d bytes per page.
        #expect(StorageFormat.channelwise(.int4).rowByteCount(headDim: 128) == 64)
        #expect(StorageFormat.channelwise(.int4).pageByteCount(headDim: 128, pageCapacity: 32) == 32 * 64 + 512)
        #expect(StorageFormat.grouped(.int8, groupSize: 64).pageByteCount(headDim: 64, pageCapacity: 16) == 16 * 68)
    }

    @Test func codecRowSizeMatchesFormat() throws {
        for d in [1, 7, 9, 63, 64, 96, 128, 256] {
            for f in [StorageFormat.fp16, .int8, .int4, .int2, .grouped(.int8, groupSize: 128)] {
                #expect(try RowCodec(f, headDim: d).rowByteCount == f.rowByteCount(headDim: d))
            }
        }
    }

    @Test func rejectsBadShapes() {
        #expect(throws: FormatError.invalidHeadDim(0)) { try RowCodec(.fp16, headDim: 0) }
        #expect(throws: FormatError.invalidGroupSize(12)) { try RowCodec(.grouped(.int4, groupSize: 12), headDim: 64) }
        #expect(throws: FormatError.invalidGroupSize(0)) { try RowCodec(.grouped(.int4, groupSize: 0), headDim: 64) }
        #expect(throws: FormatError.notRowWise(.channelwise(.int4))) { try RowCodec(.channelwise(.int4), headDim: 64) }
        #expect(throws: FormatError.invalidHeadDim(-3)) { try ChannelwiseKeyCodec(.int8, headDim: -3) }
    }
}
