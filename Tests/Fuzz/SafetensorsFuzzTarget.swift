// libFuzzer target: the safetensors parser. Any input must be parsed or refused with a
// `SafetensorsError`; whatever is accepted must satisfy the layout invariants and convert without
// trapping. Built and run by `.ci/fuzz` (not part of the package).
import Foundation
import KVExperiments

@_cdecl("LLVMFuzzerTestOneInput")
public func safetensorsFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Data(bytes: data, count: size)
    let file: SafetensorsFile
    do {
        file = try SafetensorsFile(data: bytes)
    } catch {
        precondition(!error.description.isEmpty)
        return 0
    }
    var covered = 0
    for t in file.tensors {
        precondition(t.dataOffsets.lowerBound == covered, "tensors must tile the data section")
        precondition(t.byteCount == t.elementCount * t.dtype.byteSize, "byte count of \(t.name)")
        covered = t.dataOffsets.upperBound
        switch t.dtype {
        case .f32, .f16, .bf16:
            let values = try? file.floats(t.name)
            precondition(values?.count == t.elementCount, "floats of \(t.name)")
        case .i32:
            let values = try? file.int32s(t.name)
            precondition(values?.count == t.elementCount, "int32s of \(t.name)")
        default:
            precondition((try? file.floats(t.name)) == nil, "\(t.dtype) converted to floats")
        }
    }
    precondition(covered == file.dataByteCount, "trailing bytes accepted")
    precondition(8 + file.headerByteCount + file.dataByteCount == size, "sizes do not add up")
    return 0
}
