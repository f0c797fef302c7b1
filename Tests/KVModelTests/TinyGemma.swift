import Foundation
@testable import KVModel
import TestSupport

/// A tiny random Gemma 3 model written as GGUF by the test, with the real file's block types (Q8_0
/// embedding and V, Q5_0 Q/K/gate/up, Q4_K attention output, Q6_K down, F32 norms), head dim ≠
/// embedding ÷ heads, MQA, and a short window so that sliding matters: layers 0 and 1 local
/// (window `window`, θ 10⁴), layer 2 global (θ 10⁶). `reference` is a naive FP64 forward pass.
struct TinyGemma {
    static let layers = 3, embedding = 64, heads = 4, kvHeads = 1, headDim = 64, ffn = 256, vocabulary = 40
    static let window = 4, pattern = 3
    static let globalTheta: Float = 1_000_000, localTheta: Float = 10_000, epsilon: Float = 1e-6

    let file: GGUFFile

    init(seed: UInt64 = 3, skip: String? = nil) throws {
        var g = SeededGenerator(seed: seed)
        var w = GGUFWriter()
        w.set("general.architecture", .string("gemma3"))
        w.set("gemma3.block_count", .uint32(UInt32(Self.layers)))
        w.set("gemma3.embedding_length", .uint32(UInt32(Self.embedding)))
        w.set("gemma3.feed_forward_length", .uint32(UInt32(Self.ffn)))
        w.set("gemma3.attention.head_count", .uint32(UInt32(Self.heads)))
        w.set("gemma3.attention.head_count_kv", .uint32(UInt32(Self.kvHeads)))
        w.set("gemma3.attention.key_length", .uint32(UInt32(Self.headDim)))
        w.set("gemma3.attention.value_length", .uint32(UInt32(Self.headDim)))
        w.set("gemma3.rope.freq_base", .float32(Self.globalTheta))
        w.set("gemma3.attention.sliding_window", .uint32(UInt32(Self.window)))
        w.set("gemma3.attention.sliding_window_pattern", .uint32(UInt32(Self.pattern)))
        w.set("gemma3.attention.layer_norm_rms_epsilon", .float32(Self.epsilon))
        func add(_ name: String, _ shape: [Int], _ type: GGMLType, _ scale: Double, offset: Float = 0) {
            let values = (0..<shape.reduce(1, *)).map { _ in Float(g.nextGaussian() * scale) + offset }
            if name != skip { w.addTensor(name, shape: shape, type: type, values: values) }
        }
        let e = Self.embedding, d = Self.headDim
        add("token_embd.weight", [e, Self.vocabulary], .q8_0, 0.3)
        add("output_norm.weight", [e], .f32, 0.1, offset: 1)
        for l in 0..<Self.layers {
            let p = "blk.\(l)."
            add(p + "attn_norm.weight", [e], .f32, 0.1, offset: 1)
            add(p + "attn_q.weight", [e, Self.heads * d], .q5_0, 0.3)
            add(p + "attn_k.weight", [e, Self.kvHeads * d], .q5_0, 0.3)
            add(p + "attn_v.weight", [e, Self.kvHeads * d], .q8_0, 0.3)
            add(p + "attn_q_norm.weight", [d], .f32, 0.2, offset: 1)
            add(p + "attn_k_norm.weight", [d], .f32, 0.2, offset: 1)
            add(p + "attn_output.weight", [Self.heads * d, e], .q4_K, 0.1)
            add(p + "post_attention_norm.weight", [e], .f32, 0.1, offset: 1)
            add(p + "ffn_norm.weight", [e], .f32, 0.1, offset: 1)
            add(p + "ffn_gate.weight", [e, Self.ffn], .q5_0, 0.3)
            add(p + "ffn_up.weight", [e, Self.ffn], .q5_0, 0.3)
            add(p + "ffn_down.weight", [Self.ffn, e], .q6_K, 0.1)
            add(p + "post_ffw_norm.weight", [e], .f32, 0.1, offset: 1)
        }
        file = try GGUFFile(data: Data(w.serialized()))
    }

    /// Naive FP64 forward over `tokens` from position 0: logits `[token][vocabulary]`.
    func reference(_ tokens: [Int32]) throws -> [[Double]] {
        func t(_ name: String) throws -> [Double] { try file.floats(name).map(Double.init) }
        let e = Self.embedding, d = Self.headDim, n = tokens.count, group = Self.heads / Self.kvHeads
        func matvec(_ w: [Double], _ x: [Double], rows: Int) -> [Double] {
            (0..<rows).map { o in (0..<x.count).reduce(0.0) { $0 + w[o * x.count + $1] * x[$1] } }
        }
        func norm(_ x: ArraySlice<Double>, _ w: [Double]) -> [Double] {
            let ms = x.reduce(0) { $0 + $1 * $1 } / Double(x.count)
            let inv = 1 / (ms + Double(Self.epsilon)).squareRoot()
            return zip(x, w).map { $0 * inv * $1 }
        }
        func headNorm(_ x: [Double], heads: Int, _ w: [Double]) -> [Double] {
            (0..<heads).flatMap { h in norm(x[(h * d)..<(h * d + d)], w) }
        }
        func rope(_ x: inout [Double], heads: Int, position: Int, theta: Float) {
            for h in 0..<heads {
                for j in 0..<(d / 2) {
                    let angle = Double(position) * pow(Double(theta), -2 * Double(j) / Double(d))
                    let a = x[h * d + j], b = x[h * d + j + d / 2]
                    x[h * d + j] = a * cos(angle) - b * sin(angle)
                    x[h * d + j + d / 2] = b * cos(angle) + a * sin(angle)
                }
            }
        }
        func gelu(_ x: Double) -> Double { 0.5 * x * (1 + tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x))) }
        let embd = try t("token_embd.weight")
        var xs = tokens.map { tok in embd[(Int(tok) * e)..<(Int(tok) * e + e)].map { $0 * Double(e).squareRoot() } }
        for l in 0..<Self.layers {
            let p = "blk.\(l).", local = (l + 1) % Self.pattern != 0
            let wq = try t(p + "attn_q.weight"), wk = try t(p + "attn_k.weight"), wv = try t(p + "attn_v.weight")
            let qn = try t(p + "attn_q_norm.weight"), kn = try t(p + "attn_k_norm.weight")
            let wo = try t(p + "attn_output.weight"), an = try t(p + "attn_norm.weight"), fn = try t(p + "ffn_norm.weight")
            let pan = try t(p + "post_attention_norm.weight"), pfn = try t(p + "post_ffw_norm.weight")
            let wg = try t(p + "ffn_gate.weight"), wu = try t(p + "ffn_up.weight"), wd = try t(p + "ffn_down.weight")
            var K = [[Double]](), V = [[Double]](), Q = [[Double]]()
            for (pos, x) in xs.enumerated() {
                let h = norm(x[...], an)
                var q = headNorm(matvec(wq, h, rows: Self.heads * d), heads: Self.heads, qn)
                var k = headNorm(matvec(wk, h, rows: Self.kvHeads * d), heads: Self.kvHeads, kn)
                rope(&q, heads: Self.heads, position: pos, theta: local ? Self.localTheta : Self.globalTheta)
                rope(&k, heads: Self.kvHeads, position: pos, theta: local ? Self.localTheta : Self.globalTheta)
                Q.append(q); K.append(k); V.append(matvec(wv, h, rows: Self.kvHeads * d))
            }
            for pos in 0..<n {
                var attn = [Double](repeating: 0, count: Self.heads * d)
                let first = local ? max(0, pos - Self.window + 1) : 0
                for h in 0..<Self.heads {
                    let kv = h / group
                    let scores = (first...pos).map { j in (0..<d).reduce(0.0) { $0 + Q[pos][h * d + $1] * K[j][kv * d + $1] } / Double(d).squareRoot() }
                    let m = scores.max()!, ex = scores.map { exp($0 - m) }, z = ex.reduce(0, +)
                    for (k, j) in (first...pos).enumerated() { for i in 0..<d { attn[h * d + i] += ex[k] / z * V[j][kv * d + i] } }
                }
                let o = norm(matvec(wo, attn, rows: e)[...], pan)
                for i in 0..<e { xs[pos][i] += o[i] }
                let h2 = norm(xs[pos][...], fn)
                let gate = matvec(wg, h2, rows: Self.ffn), up = matvec(wu, h2, rows: Self.ffn)
                let down = norm(matvec(wd, zip(gate, up).map { gelu($0) * $1 }, rows: e)[...], pfn)
                for i in 0..<e { xs[pos][i] += down[i] }
            }
        }
        let on = try t("output_norm.weight")
        return xs.map { matvec(embd, norm($0[...], on), rows: Self.vocabulary) }
    }
}
