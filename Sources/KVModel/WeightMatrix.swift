import Dispatch
import KVQuantization

/// A weight matrix as its GGUF file stores it, read in place: `rows` rows of `columns` values in
/// `type` blocks, row r at byte `offset + r·rowByteCount` of the file (no copy is made; the file
/// stays memory-mapped).
///
///     file: | … | row 0: columns/blockSize blocks | row 1 | … | row rows−1 | … |
///               ^ offset                           ^ offset + rowByteCount
struct WeightMatrix: Sendable, Hashable {
    /// The tensor's name (for messages).
    let name: String
    let type: GGMLType
    let rows: Int
    let columns: Int
    /// Offset of row 0 from the start of the file.
    let offset: Int

    /// Bytes of one row.
    var rowByteCount: Int { columns / type.blockSize * type.blockByteCount }

    /// The two-dimensional tensor `info` of `file` (`shape` = [columns, rows]).
    init(_ info: GGUFTensorInfo, in file: GGUFFile) {
        precondition(info.shape.count == 2, "WeightMatrix: tensor \(info.name) of shape \(info.shape) is not a matrix")
        name = info.name
        type = info.type
        columns = info.shape[0]
        rows = info.shape[1]
        offset = file.dataOffset + info.offset
    }

    /// The matrix's rows inside `file`'s bytes.
    func rows(in file: UnsafeRawBufferPointer) -> UnsafeWeightRows {
        precondition(offset >= 0 && offset + rows * rowByteCount <= file.count, "WeightMatrix: \(name) lies outside the file")
        return UnsafeWeightRows(type: type, columns: columns, rowByteCount: rowByteCount, base: file.baseAddress! + offset)
    }
}

/// Products of weight matrices with batches of FP32 vectors, on the file's blocks, split over threads.
///
/// One call applies several matrices that share their input (Q, K and V; gate and up) in one
/// dispatch. Two arithmetics, chosen by the batch:
///
/// - more than one vector (prefill): rows are dequantised panel by panel (`panelRowCount` rows, so
///   each weight block is unpacked once per call, i.e. once per chunk) into FP32, then multiplied
///   with every vector by the FP32 tile kernel. Each output is `WeightKernels.dotReference` of the
///   dequantised row (the weights `GGUFFile.floats` gives) and the vector.
/// - one vector (decode): with `quantizesDecodeActivations`, block-quantised matrices take the
///   16-bit-activation product (`WeightKernels.quantizedDotReference`); F32/F16 matrices and, with
///   the option off, all: the FP32 product above, straight on the blocks, bit-identical to the
///   batched one.
///
/// Outputs do not depend on the thread count or the kernel path (each is one thread's sum in a
/// fixed order). Rows are split in contiguous runs over `threadCount` threads.
struct MatrixProducts: Sendable {
    let file: GGUFFile
    let threadCount: Int
    let quantizesDecodeActivations: Bool
    let path: WeightKernelPath

    /// Rows dequantised at a time per thread (a multiple of the C tile's 3 rows; 48 rows of 2048
    /// FP32 values is 384 KiB, within a core's L2).
    static let panelRowCount = 48
    /// Rows per unit of work of a one-vector product.
    static let vectorRowCount = 32

    /// `y_m[t][o] = W_m[o]·x[t]` for each matrix `W_m` and the `count` inputs `x` (`[count][columns]`).
    ///
    /// - Precondition: every matrix has `x.count / count` columns and lies in `file`.
    func apply(_ matrices: [WeightMatrix], to x: [Float], count: Int) -> [[Float]] {
        precondition(!matrices.isEmpty && count > 0, "MatrixProducts.apply: nothing to multiply")
        let c = matrices[0].columns
        precondition(x.count == count * c && matrices.allSatisfy { $0.columns == c },
                     "MatrixProducts.apply: \(x.count) inputs for \(count) vectors of the matrices' \(matrices.map(\.columns)) columns")
        let quantized = count == 1 && quantizesDecodeActivations
        let activations: ActivationBlocks? = quantized && c % 32 == 0 && matrices.contains { $0.type.isBlockQuantized }
            ? x.withUnsafeBufferPointer { ActivationBlocks($0) } : nil
        let unit = count == 1 ? Self.vectorRowCount : Self.panelRowCount
        // Units of work: (matrix, first row) in matrix order, each `unit` rows (fewer at a matrix's end).
        let jobs = matrices.indices.flatMap { m in stride(from: 0, to: matrices[m].rows, by: unit).map { (matrix: m, first: $0) } }
        let threads = max(1, min(threadCount, jobs.count))
        // All outputs in one buffer, matrix after matrix.
        let starts = matrices.reduce(into: [0]) { $0.append($0.last! + count * $1.rows) }
        let path = self.path
        var all = [Float](repeating: 0, count: starts.last!)
        file.storage.withUnsafeBytes { bytes in
            let rows = matrices.map { $0.rows(in: bytes) }
            all.withUnsafeMutableBufferPointer { out in
                let output = UnsafeSharedPointer(base: out.baseAddress!)
                x.withUnsafeBufferPointer { xb in
                    let input = UnsafeSharedPointer(base: UnsafeMutablePointer(mutating: xb.baseAddress!))
                    let work: @Sendable (Int) -> Void = { t in
                        let range = (jobs.count * t / threads)..<(jobs.count * (t + 1) / threads)
                        let panel = count == 1 ? nil : UnsafeMutablePointer<Float>.allocate(capacity: unit * c)
                        defer { panel?.deallocate() }
                        for (m, first) in jobs[range] {
                            let w = rows[m], n = min(unit, matrices[m].rows - first), y = output.base + starts[m]
                            if let panel {
                                WeightKernels.dequantize(w, first: first, count: n, into: panel, stride: c, path: path)
                                WeightKernels.multiply(panel, wStride: c, rows: n, columns: c, x: input.base, xStride: c, count: count,
                                                       into: y + first, yStride: matrices[m].rows, path: path)
                            } else if let activations, w.type.isBlockQuantized {
                                WeightKernels.multiplyQuantizedVector(w, first: first, count: n, x: activations, into: y + first, path: path)
                            } else {
                                WeightKernels.multiplyVector(w, first: first, count: n, x: input.base, into: y + first, path: path)
                            }
                        }
                    }
                    if threads == 1 { work(0) } else { DispatchQueue.concurrentPerform(iterations: threads, execute: work) }
                }
            }
        }
        if matrices.count == 1 { return [all] }
        return matrices.indices.map { Array(all[starts[$0]..<starts[$0 + 1]]) }
    }
}

extension MatrixProducts {
    /// Rows `indices` of `matrix`, dequantised: `[index][columns]` (the embedding lookup).
    ///
    /// - Precondition: every index is a row of `matrix`.
    func rows(of matrix: WeightMatrix, _ indices: [Int]) -> [Float] {
        var out = [Float](repeating: 0, count: indices.count * matrix.columns)
        file.storage.withUnsafeBytes { bytes in
            let rows = matrix.rows(in: bytes)
            out.withUnsafeMutableBufferPointer { o in
                for (i, r) in indices.enumerated() {
                    precondition(r >= 0 && r < matrix.rows, "MatrixProducts.rows: row \(r) outside \(matrix.name)'s \(matrix.rows)")
                    WeightKernels.dequantize(rows, first: r, count: 1, into: o.baseAddress! + i * matrix.columns, stride: matrix.columns, path: path)
                }
            }
        }
        return out
    }
}

/// A pointer that threads may share because each writes a disjoint part of it.
struct UnsafeSharedPointer<T>: @unchecked Sendable {
    let base: UnsafeMutablePointer<T>
}
