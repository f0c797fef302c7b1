// libFuzzer target: the GGUF reader and everything that reads a GGUF file's contents. Any input
// must be opened or refused with a `GGUFError` (never a trap, never an out-of-bounds read). An
// accepted file must satisfy the reader's layout invariants; every tensor must dequantise (every
// block type) to its element count, piece by piece as the whole does; the tokenizer, hyperparameters
// and model loaders must build or throw `LlamaModelError`, and a model that loads must run one
// token (or refuse, with a `KVStoreError`, keys or values outside FP16). Built and run by `.ci/fuzz`.
import Foundation
import KVQuantization
import KVStore
@testable import KVModel

/// Values dequantised per input at most (tensors may share data, so their total is unbounded).
let maxDequantisedValues = 1 << 20

@_cdecl("LLVMFuzzerTestOneInput")
public func ggufFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let file: GGUFFile
    do {
        file = try GGUFFile(data: Data(bytes: data, count: size))
    } catch {
        precondition(!error.description.isEmpty)
        return 0
    }
    checkLayout(file, size: size)
    checkValues(file)
    checkLoaders(file)
    return 0
}

func checkLayout(_ file: GGUFFile, size: Int) {
    precondition(file.version == 3)
    precondition(file.alignment > 0 && file.alignment & (file.alignment - 1) == 0)
    precondition(file.dataOffset % file.alignment == 0)
    var keys = Set<String>()
    for (key, value) in file.metadata {
        precondition(keys.insert(key).inserted, "duplicate key \(key) accepted")
        precondition(file[key]?.description == value.description, "lookup of \(key)")
    }
    var names = Set<String>()
    for t in file.tensors {
        precondition(names.insert(t.name).inserted, "duplicate tensor \(t.name) accepted")
        precondition(file.tensor(t.name) == t, "lookup of \(t.name)")
        precondition((1...4).contains(t.shape.count) && t.shape.allSatisfy { $0 > 0 })
        precondition(t.rowLength % t.type.blockSize == 0, "\(t.name): row not whole blocks")
        precondition(t.byteCount == t.elementCount / t.type.blockSize * t.type.blockByteCount, "\(t.name): byte count")
        precondition(t.offset % file.alignment == 0, "\(t.name): misaligned")
        precondition(file.dataOffset + t.offset + t.byteCount <= size, "\(t.name): data outside the file")
        precondition(t.rowCount * t.rowLength == t.elementCount)
    }
}

func checkValues(_ file: GGUFFile) {
    var budget = maxDequantisedValues
    for t in file.tensors where t.elementCount <= budget {
        budget -= t.elementCount
        let values = file.floats(t)
        precondition(values.count == t.elementCount, "\(t.name): \(values.count) values")
        guard t.type.isBlockQuantized else { continue }
        // The piece view (what the integer weight kernels read) gives the same values, and its
        // codes lie in the type's range.
        let range: ClosedRange<Int32> = switch t.type {
        case .q8_0: -128...127
        case .q4_0: -8...7
        case .q5_0: -16...15
        case .q6_K: -32...31
        case .q4_1, .q4_K: 0...15
        default: 0...31
        }
        // The first and last pieces of each tensor (where offsets could go wrong): every piece
        // allocates its codes, and checking every piece of a 1 M-value budget was most of the time.
        let pieces = t.elementCount / 32
        file.withUnsafeBytes(of: t) { raw in
            for p in Set(Array(0..<min(pieces, 32)) + Array(max(0, pieces - 32)..<pieces)).sorted() {
                let piece = GGUFDequantizer.piece(raw, type: t.type, index: p)
                for j in 0..<32 {
                    precondition(range.contains(piece.codes[j]), "\(t.name) piece \(p): code \(piece.codes[j]) outside \(range)")
                    let v = piece.value(j), w = values[32 * p + j]
                    precondition(v.bitPattern == w.bitPattern || (v.isNaN && w.isNaN), "\(t.name) piece \(p) value \(j): \(v) vs \(w)")
                }
            }
        }
    }
}

func checkLoaders(_ file: GGUFFile) {
    if file["tokenizer.ggml.model"] != nil, let tokenizer = try? loadTokenizer(file: file) {
        let vocabulary = (tokenizer as? BPETokenizer)?.tokens.count ?? (tokenizer as! SentencePieceTokenizer).tokens.count
        for text in ["", "Hello, world! 123", " \n\t  x", "naïve café ▁ 日本語 🙂", "<0x41>'s 're"] {
            let ids = tokenizer.encodePrompt(text)
            precondition(ids.allSatisfy { $0 >= 0 && Int($0) < vocabulary }, "an id outside the vocabulary")
            _ = tokenizer.decode(ids)
        }
        _ = tokenizer.decode((0..<min(vocabulary, 256)).map(Int32.init))
    }
    _ = try? LlamaHyperparameters(file: file)
    _ = try? GemmaHyperparameters(file: file)
    let model: (any CausalLanguageModel)?
    switch file["general.architecture"]?.string {
    case "llama": model = try? LlamaModel(file: file, threadCount: 1)
    case "gemma3": model = try? GemmaModel(file: file, threadCount: 1)
    default: model = nil
    }
    guard let model else { return }
    let store = try! KVStore(model.storeConfiguration(pageCapacity: 4))
    let id = store.addSequence()
    // Weights may be finite yet give keys or values outside FP16, or queries attention cannot score:
    // the store refuses them (a typed error).
    guard let logits = try? model.forward([0], sequence: id, in: store, logits: .last, observer: nil, attentionObserver: nil) else { return }
    precondition(logits.count == model.cacheShape.vocabularySize, "\(logits.count) logits")
}
