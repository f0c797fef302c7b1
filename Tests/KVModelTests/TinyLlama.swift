import Foundation
@testable import KVModel
import TestSupport

/// A tiny random Llama model written as GGUF by the test (Q8_0 embedding, Q4_1 linear weights, F32
/// norms, as the SmolLM2 file), and a naive FP64 forward pass over the *file's* layout: Q/K rows
/// as stored and llama.cpp's interleaved-pair RoPE, full causal attention over FP64 keys/values.
struct TinyLlama {
    static let layers = 2, embedding = 64, heads = 4, kvHeads = 2, ffn = 96, vocabulary = 50
    static let headDim = embedding / heads
    static let theta: Float = 10000, epsilon: Float = 1e-5

    let data: Data
    let file: GGUFFile

    /// `scaled` multiplies the named tensors' values (to build models whose activations overflow).
    init(seed: UInt64 = 1, architecture: String = "llama", skip: String? = nil, scaled: [String: Float] = [:]) throws {
        var g = SeededGenerator(seed: seed)
        var w = GGUFWriter()
        w.set("general.architecture", .string(architecture))
        w.set("llama.block_count", .uint32(UInt32(Self.layers)))
        w.set("llama.embedding_length", .uint32(UInt32(Self.embedding)))
        w.set("llama.feed_forward_length", .uint32(UInt32(Self.ffn)))
        w.set("llama.attention.head_count", .uint32(UInt32(Self.heads)))
        w.set("llama.attention.head_count_kv", .uint32(UInt32(Self.kvHeads)))
        w.set("llama.rope.freq_base", .float32(Self.theta))
        w.set("llama.attention.layer_norm_rms_epsilon", .float32(Self.epsilon))
        w.set("llama.rope.dimension_count", .uint32(UInt32(Self.headDim)))
        func random(_ n: Int, _ scale: Double) -> [Float] { (0..<n).map { _ in Float(g.nextGaussian() * scale) } }
        func add(_ name: String, _ shape: [Int], _ type: GGMLType, _ scale: Double, offset: Float = 0) {
            let values = random(shape.reduce(1, *), scale).map { ($0 + offset) * (scaled[name] ?? 1) }
            if name != skip { w.addTensor(name, shape: shape, type: type, values: values) }
        }
        let e = Self.embedding, d = Self.headDim
        add("token_embd.weight", [e, Self.vocabulary], .q8_0, 1)
        add("output_norm.weight", [e], .f32, 0.1, offset: 1)
        for l in 0..<Self.layers {
            let p = "blk.\(l)."
            add(p + "attn_norm.weight", [e], .f32, 0.1, offset: 1)
            add(p + "attn_q.weight", [e, Self.heads * d], .q4_1, 0.3)
            add(p + "attn_k.weight", [e, Self.kvHeads * d], .q4_1, 0.3)
            add(p + "attn_v.weight", [e, Self.kvHeads * d], .q4_1, 0.2)
            add(p + "attn_output.weight", [Self.heads * d, e], .q4_1, 0.1)
            add(p + "ffn_norm.weight", [e], .f32, 0.1, offset: 1)
            add(p + "ffn_gate.weight", [e, Self.ffn], .q4_1, 0.2)
            add(p + "ffn_up.weight", [e, Self.ffn], .q4_1, 0.2)
            add(p + "ffn_down.weight", [Self.ffn, e], .q4_1, 0.1)
        }
        data = Data(w.serialized())
        file = try GGUFFile(data: data)
    }

    /// Naive FP64 forward over `tokens` from position 0: logits `[token][vocabulary]` and, per
    /// layer, keys `[kvHead][token][headDim]` in the file's (interleaved) order.
    func reference(_ tokens: [Int32]) throws -> (logits: [[Double]], keys: [[Double]]) {
        func t(_ name: String) throws -> [Double] { try file.floats(name).map(Double.init) }
        let e = Self.embedding, d = Self.headDim, n = tokens.count, group = Self.heads / Self.kvHeads
        func matvec(_ w: [Double], _ x: [Double], rows: Int) -> [Double] {
            (0..<rows).map { o in (0..<x.count).reduce(0.0) { $0 + w[o * x.count + $1] * x[$1] } }
        }
        func norm(_ x: [Double], _ w: [Double]) -> [Double] {
            let ms = x.reduce(0) { $0 + $1 * $1 } / Double(x.count)
            let inv = 1 / (ms + Double(Self.epsilon)).squareRoot()
            return zip(x, w).map { $0 * inv * $1 }
        }
        func rope(_ x: inout [Double], heads: Int, position: Int) {
            for h in 0..<heads {
                for j in 0..<(d / 2) {
                    let angle = Double(position) * pow(Double(Self.theta), -2 * Double(j) / Double(d))
                    let a = x[h * d + 2 * j], b = x[h * d + 2 * j + 1]
                    x[h * d + 2 * j] = a * cos(angle) - b * sin(angle)
                    x[h * d + 2 * j + 1] = a * sin(angle) + b * cos(angle)
                }
            }
        }
        let embd = try t("token_embd.weight")
        var xs = tokens.map { tok in Array(embd[(Int(tok) * e)..<(Int(tok) * e + e)]) }
        var keysOut = [[Double]]()
        for l in 0..<Self.layers {
            let p = "blk.\(l)."
            let wq = try t(p + "attn_q.weight"), wk = try t(p + "attn_k.weight"), wv = try t(p + "attn_v.weight")
            let wo = try t(p + "attn_output.weight"), an = try t(p + "attn_norm.weight"), fn = try t(p + "ffn_norm.weight")
            let wg = try t(p + "ffn_gate.weight"), wu = try t(p + "ffn_up.weight"), wd = try t(p + "ffn_down.weight")
            var K = [[Double]](), V = [[Double]](), Q = [[Double]]()
            for (pos, x) in xs.enumerated() {
                let h = norm(x, an)
                var q = matvec(wq, h, rows: Self.heads * d), k = matvec(wk, h, rows: Self.kvHeads * d)
                rope(&q, heads: Self.heads, position: pos)
                rope(&k, heads: Self.kvHeads, position: pos)
                Q.append(q); K.append(k); V.append(matvec(wv, h, rows: Self.kvHeads * d))
            }
            var layerKeys = [Double](repeating: 0, count: Self.kvHeads * n * d)
            for pos in 0..<n { for kv in 0..<Self.kvHeads { for i in 0..<d { layerKeys[(kv * n + pos) * d + i] = K[pos][kv * d + i] } } }
            keysOut.append(layerKeys)
            for pos in 0..<n {
                var attn = [Double](repeating: 0, count: Self.heads * d)
                for h in 0..<Self.heads {
                    let kv = h / group
                    let scores = (0...pos).map { j in (0..<d).reduce(0.0) { $0 + Q[pos][h * d + $1] * K[j][kv * d + $1] } / Double(d).squareRoot() }
                    let m = scores.max()!, ex = scores.map { exp($0 - m) }, z = ex.reduce(0, +)
                    for j in 0...pos { for i in 0..<d { attn[h * d + i] += ex[j] / z * V[j][kv * d + i] } }
                }
                let o = matvec(wo, attn, rows: e)
                for i in 0..<e { xs[pos][i] += o[i] }
                let h2 = norm(xs[pos], fn)
                let gate = matvec(wg, h2, rows: Self.ffn), up = matvec(wu, h2, rows: Self.ffn)
                let act = zip(gate, up).map { $0 / (1 + exp(-$0)) * $1 }
                let down = matvec(wd, act, rows: e)
                for i in 0..<e { xs[pos][i] += down[i] }
            }
        }
        let on = try t("output_norm.weight")
        let logits = xs.map { matvec(embd, norm($0, on), rows: Self.vocabulary) }
        return (logits, keysOut)
    }
}

