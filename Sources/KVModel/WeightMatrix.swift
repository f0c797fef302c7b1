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
/// dispatch. The arithmetic, chosen by `quantizesActivations`, the batch and the matrix type:
///
/// - block-quantised matrices with `quantizesActivations` (the default): the vectors are quantised
///   to 16 bits per 32 values once per call (`ActivationBlocks.quantize`, split over the threads by
///   vectors), then integer dot products on the weights' codes: one vector (decode) takes
///   `WeightKernels.quantizedDotReference` straight on the blocks; more (prefill) pack `panelRowCount`
///   rows at a time into an integer panel (each weight block unpacked once per call) and take
///   `quantizedPanelDotReference` with every vector. Both carry the activations' rounding (about 2⁻¹⁶
///   of a block's largest activation times Σ|w|) and differ from each other only by FP32 summation
///   order.
/// - F32/F16 matrices, and all with the option off: FP32. Several vectors: rows dequantised panel by
///   panel into FP32, then the FP32 tile kernel; one vector: straight on the blocks, bit-identical
///   to the batched one. Each output is `WeightKernels.dotReference` of the dequantised row (the
///   weights `GGUFFile.floats` gives) and the vector.
///
/// Outputs do not depend on the thread count or the kernel path (each is one thread's sum in a
/// fixed order). Rows are split in contiguous runs over `threadCount` threads.
struct MatrixProducts: Sendable {
    let file: GGUFFile
    let threadCount: Int
    let quantizesActivations: Bool
    let path: WeightKernelPath

    /// Rows dequantised or packed at a time per thread (a multiple of the tiles' 3 and 16 rows; 48
    /// rows of 2048 FP32 values is 384 KiB, within a core's L2, and 48 × 2048 16-bit codes 192 KiB).
    static let panelRowCount = 48
    /// Rows per unit of work of a one-vector product.
    static let vectorRowCount = 32
    /// Weight bytes below which a one-vector product is not split over threads.
    /// (2026-12-04, 2 threads, `kvcrush run --continue 256`: 0 → 1 MiB took SmolLM2 decode from 102.5
    /// to 120.8 tokens/s and Gemma 3 from 79.5 to 92.2; 256 KiB and 4 MiB no better.)
    static let minimumParallelBytes = 1 << 20

    /// `y_m[t][o] = W_m[o]·x[t]` for each matrix `W_m` and the `count` inputs `x` (`[count][columns]`).
    ///
    /// - Precondition: every matrix has `x.count / count` columns and lies in `file`.
    func apply(_ matrices: [WeightMatrix], to x: [Float], count: Int) -> [[Float]] {
        precondition(!matrices.isEmpty && count > 0, "MatrixProducts.apply: nothing to multiply")
        let c = matrices[0].columns
        precondition(x.count == count * c && matrices.allSatisfy { $0.columns == c },
                     "MatrixProducts.apply: \(x.count) inputs for \(count) vectors of the matrices' \(matrices.map(\.columns)) columns")
        let quantizes = quantizesActivations && c % 32 == 0 && matrices.contains { $0.type.isBlockQuantized }
        let path = self.path
        let p = c / 32
        let vector: ActivationBlocks? = quantizes && count == 1 ? x.withUnsafeBufferPointer { ActivationBlocks($0) } : nil
        // The quantised vectors of a batch (codes [count][c], scales and sums [count][c/32]).
        let batch = quantizes && count > 1
        let codes = UnsafeMutablePointer<Int16>.allocate(capacity: batch ? count * c : 0)
        let scales = UnsafeMutablePointer<Float>.allocate(capacity: batch ? count * p : 0)
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: batch ? count * p : 0)
        defer { codes.deallocate(); scales.deallocate(); sums.deallocate() }
        if batch {
            let (qc, qs, qm) = (UnsafeSharedPointer(base: codes), UnsafeSharedPointer(base: scales), UnsafeSharedPointer(base: sums))
            x.withUnsafeBufferPointer { xb in
                let input = UnsafeSharedPointer(base: UnsafeMutablePointer(mutating: xb.baseAddress!))
                let threads = max(1, min(threadCount, count / 16))
                let work: @Sendable (Int) -> Void = { t in
                    let a = count * t / threads, n = count * (t + 1) / threads - a
                    ActivationBlocks.quantize(input.base + a * c, count: n, columns: c, codes: qc.base + a * c,
                                              scales: qs.base + a * p, sums: qm.base + a * p, path: path)
                }
                if threads == 1 { work(0) } else { DispatchQueue.concurrentPerform(iterations: threads, execute: work) }
            }
        }
        let unit = count == 1 ? Self.vectorRowCount : Self.panelRowCount
        // Units of work: (matrix, first row) in matrix order, each `unit` rows (fewer at a matrix's end).
        let jobs = matrices.indices.flatMap { m in stride(from: 0, to: matrices[m].rows, by: unit).map { (matrix: m, first: $0) } }
        // A one-vector product over fewer bytes than `minimumParallelBytes` runs on the calling thread
        // (waking another costs about as much as it would save).
        let bytes = matrices.reduce(0) { $0 + $1.rows * $1.rowByteCount }
        let threads = count == 1 && bytes < Self.minimumParallelBytes ? 1 : max(1, min(threadCount, jobs.count))
        // All outputs in one buffer, matrix after matrix.
        let starts = matrices.reduce(into: [0]) { $0.append($0.last! + count * $1.rows) }
        let activations = UnsafeSharedPointer(base: codes), activationScales = UnsafeSharedPointer(base: scales),
            activationSums = UnsafeSharedPointer(base: sums)
        var all = [Float](repeating: 0, count: starts.last!)
        file.storage.withUnsafeBytes { bytes in
            let rows = matrices.map { $0.rows(in: bytes) }
            all.withUnsafeMutableBufferPointer { out in
                let output = UnsafeSharedPointer(base: out.baseAddress!)
                x.withUnsafeBufferPointer { xb in
                    let input = UnsafeSharedPointer(base: UnsafeMutablePointer(mutating: xb.baseAddress!))
                    let work: @Sendable (Int) -> Void = { t in
                        let range = (jobs.count * t / threads)..<(jobs.count * (t + 1) / threads)
                        let needsFloats = count > 1 && !(quantizes && rows.allSatisfy { $0.type.isBlockQuantized })
                        let panel = needsFloats ? UnsafeMutablePointer<Float>.allocate(capacity: unit * c) : nil
                        let packed = batch ? QuantizedPanel(rows: unit, columns: c) : nil
                        defer { panel?.deallocate(); packed?.deallocate() }
                        for (m, first) in jobs[range] {
                            let w = rows[m], n = min(unit, matrices[m].rows - first), y = output.base + starts[m]
                            if quantizes && w.type.isBlockQuantized {
                                if let packed {
                                    WeightKernels.multiplyQuantized(w, first: first, count: n, codes: activations.base,
                                                                    scales: activationScales.base, sums: activationSums.base, tokens: count,
                                                                    into: y + first, yStride: matrices[m].rows, panel: packed, path: path)
                                } else if let vector {
                                    WeightKernels.multiplyQuantizedVector(w, first: first, count: n, x: vector, into: y + first, path: path)
                                }
                            } else if let panel {
                                WeightKernels.dequantize(w, first: first, count: n, into: panel, stride: c, path: path)
                                WeightKernels.multiply(panel, wStride: c, rows: n, columns: c, x: input.base, xStride: c, count: count,
                                                       into: y + first, yStride: matrices[m].rows, path: path)
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
