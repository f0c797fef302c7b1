import Foundation
import Testing
import TestSupport
import KVStore
@testable import KVModel

/// The seed corpora of the `gguf` and `tokenizer` fuzz targets (Fixtures/fuzz, see its README):
/// synthetic GGUF files (every tensor type, every value type, miniature Llama and Gemma models with
/// their tokenizers) and tokenizer inputs (small vocabularies with short real texts). Every GGUF
/// seed must open and its model or tokenizer load, so the fuzzer starts from valid inputs. With
/// `KVCRUSH_WRITE_FUZZ_SEEDS=1` the seeds are written first.
@Suite struct GGUFFuzzSeedTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/fuzz")

    /// A miniature model: one layer of width 32, two heads (one KV head), four-token vocabulary
    /// tokenizer metadata of `tokenizer` ("gpt2" or "llama").
    static func miniature(architecture: String, tokenizer: String, seed: UInt64) -> [UInt8] {
        var g = SeededGenerator(seed: seed)
        var w = GGUFWriter()
        let a = architecture, e = 32, heads = 2, d = 16, ffn = 32, vocabulary = 8
        w.set("general.architecture", .string(a))
        w.set("\(a).block_count", .uint32(1))
        w.set("\(a).embedding_length", .uint32(UInt32(e)))
        w.set("\(a).feed_forward_length", .uint32(UInt32(ffn)))
        w.set("\(a).attention.head_count", .uint32(UInt32(heads)))
        w.set("\(a).attention.head_count_kv", .uint32(1))
        w.set("\(a).attention.layer_norm_rms_epsilon", .float32(1e-5))
        if a == "gemma3" {
            w.set("gemma3.attention.key_length", .uint32(UInt32(d)))
            w.set("gemma3.attention.sliding_window", .uint32(4))
            w.set("gemma3.attention.sliding_window_pattern", .uint32(2))
        }
        func add(_ name: String, _ shape: [Int], _ type: GGMLType, _ scale: Double, offset: Float = 0) {
            w.addTensor(name, shape: shape, type: type, values: (0..<shape.reduce(1, *)).map { _ in Float(g.nextGaussian() * scale) + offset })
        }
        add("token_embd.weight", [e, vocabulary], .q8_0, 1)
        add("output_norm.weight", [e], .f32, 0.1, offset: 1)
        let p = "blk.0."
        add(p + "attn_norm.weight", [e], .f32, 0.1, offset: 1)
        add(p + "attn_q.weight", [e, heads * d], .q4_1, 0.3)
        add(p + "attn_k.weight", [e, d], .q5_0, 0.3)
        add(p + "attn_v.weight", [e, d], .q4_0, 0.2)
        add(p + "attn_output.weight", [heads * d, e], .f16, 0.1)
        add(p + "ffn_norm.weight", [e], .f32, 0.1, offset: 1)
        add(p + "ffn_gate.weight", [e, ffn], .q5_1, 0.2)
        add(p + "ffn_up.weight", [e, ffn], .q8_0, 0.2)
        add(p + "ffn_down.weight", [ffn, e], .q4_1, 0.1)
        if a == "gemma3" {
            add(p + "attn_q_norm.weight", [d], .f32, 0.2, offset: 1)
            add(p + "attn_k_norm.weight", [d], .f32, 0.2, offset: 1)
            add(p + "post_attention_norm.weight", [e], .f32, 0.1, offset: 1)
            add(p + "post_ffw_norm.weight", [e], .f32, 0.1, offset: 1)
        }
        w.set("tokenizer.ggml.model", .string(tokenizer))
        if tokenizer == "gpt2" {
            w.set("tokenizer.ggml.pre", .string("smollm"))
            w.set("tokenizer.ggml.tokens", .array(elementType: .string, ["<s>", "h", "e", "a", "p", "Ġ", "he", "ap"].map { .string($0) }))
            w.set("tokenizer.ggml.merges", .array(elementType: .string, ["h e", "a p"].map { .string($0) }))
        } else {
            w.set("tokenizer.ggml.tokens", .array(elementType: .string, ["<unk>", "<s>", "▁", "h", "e", "▁he", "<0x61>", "\n"].map { .string($0) }))
            w.set("tokenizer.ggml.scores", .array(elementType: .float32, [0, 0, -1, -2, -2, -0.5, 0, 0].map { .float32($0) }))
            w.set("tokenizer.ggml.token_type", .array(elementType: .int32, [2, 3, 1, 1, 1, 1, 6, 4].map { .int32($0) }))
            w.set("tokenizer.ggml.add_space_prefix", .bool(true))
        }
        w.set("tokenizer.ggml.bos_token_id", .uint32(1))
        return w.serialized()
    }

    static func ggufSeeds() -> [(String, [UInt8])] {
        var g = SeededGenerator(seed: 17)
        var types = GGUFWriter(alignment: 64)
        for type in GGMLType.allCases {
            let shape = type.blockSize == 256 ? [256, 1] : [64, 2]
            types.addTensor("t.\(type)", shape: shape, type: type, values: (0..<shape.reduce(1, *)).map { _ in Float(g.nextGaussian()) })
        }
        types.set("general.alignment", .uint32(64))
        var values = GGUFWriter()
        values.set("u8", .uint8(200)); values.set("i8", .int8(-3)); values.set("u16", .uint16(65000)); values.set("i16", .int16(-300))
        values.set("u32", .uint32(1 << 31)); values.set("i32", .int32(-1)); values.set("f32", .float32(1.5)); values.set("bool", .bool(true))
        values.set("string", .string("naïve ▁ 🙂")); values.set("u64", .uint64(.max)); values.set("i64", .int64(.min)); values.set("f64", .float64(-0.25))
        values.set("array", .array(elementType: .array, [.array(elementType: .uint8, [.uint8(1), .uint8(2)]), .array(elementType: .string, [.string("x")])]))
        values.addTensor("scalar", shape: [1], type: .f32, values: [42])
        return [("every-tensor-type", types.serialized()), ("every-value-type", values.serialized()),
                ("mini-llama-bpe", miniature(architecture: "llama", tokenizer: "gpt2", seed: 1)),
                ("mini-gemma-spm", miniature(architecture: "gemma3", tokenizer: "llama", seed: 2))]
    }

    /// An input of the tokenizer target (its layout is described in Tests/Fuzz/TokenizerFuzzTarget.swift).
    static func tokenizerInput(flags: UInt8, tokens: [String], traits: [UInt8] = [], merges: [(UInt8, UInt8)] = [], text: String) -> [UInt8] {
        var b: [UInt8] = [flags, UInt8(tokens.count)]
        for t in tokens { b += Array(t.utf8) + [0] }
        b += (0..<tokens.count).map { $0 < traits.count ? traits[$0] : 0 }
        for (x, y) in merges { b += [x, y] }
        b += [0xFF, 0xFF]
        return b + Array(text.utf8)
    }

    static func tokenizerSeeds() throws -> [(String, [UInt8])] {
        let heapq = String(decoding: try Data(contentsOf: URL(fileURLWithPath: "/work/shared/data/heapq-2048.txt")).prefix(400), as: UTF8.self)
        let pydoc = "The simple form, \"assert expression\", is equivalent to\n\n   if __debug__:\n       if not expression: raise AssertionError\n"
        let mixed = "naïve café, 日本語 🙂 tabs\tand  runs   of spaces; numbers 12345 and 3.14"
        // BPE: GPT-2-alphabet pieces (flag 0x20 maps token bytes to the alphabet), all bytes (0x04), digits (0x02).
        let bpeTokens = ["he", "ap", "heap", " the", " a", "in", "ing", "er", "qu", "ue", "queue", "12", "=="]
        let bpeMerges: [(UInt8, UInt8)] = [(0, 1), (5, 6), (8, 9), (2, 10)]
        // SentencePiece: pieces with scores and types in the traits (type: trait mod 7, or with flag
        // 0x08 one of normal, user-defined, unused; score: trait / 8 − 12).
        let spmTokens = ["▁the", "▁a", "he", "ap", "▁heap", "in", "ing", "  ", "\n", "<s>", "qu", "eue"]
        let spmTraits: [UInt8] = [200, 180, 120, 121, 220, 100, 140, 4 + 7 * 20, 4 + 7 * 21, 3, 90, 91]
        return [
            ("bpe-heapq", tokenizerInput(flags: 0x04 | 0x20, tokens: bpeTokens, merges: bpeMerges, text: heapq)),
            ("bpe-digits-mixed", tokenizerInput(flags: 0x02 | 0x04 | 0x20 | 0x40, tokens: bpeTokens, merges: bpeMerges, text: mixed)),
            ("bpe-raw-pydoc", tokenizerInput(flags: 0, tokens: bpeTokens, merges: bpeMerges, text: pydoc)),
            ("spm-heapq", tokenizerInput(flags: 0x01 | 0x04 | 0x08, tokens: spmTokens, traits: spmTraits, text: heapq)),
            ("spm-prefix-mixed", tokenizerInput(flags: 0x01 | 0x04 | 0x10 | 0x40, tokens: spmTokens, traits: spmTraits, text: mixed)),
            ("spm-types-pydoc", tokenizerInput(flags: 0x01 | 0x10, tokens: spmTokens, traits: spmTraits, text: pydoc)),
        ]
    }

    @Test func seedsAreValidInputs() throws {
        let fm = FileManager.default
        if ProcessInfo.processInfo.environment["KVCRUSH_WRITE_FUZZ_SEEDS"] == "1" {
            for (dir, seeds, ext) in [("gguf", Self.ggufSeeds(), "gguf"), ("tokenizer", try Self.tokenizerSeeds(), "bin")] {
                let d = Self.root.appendingPathComponent(dir)
                try fm.createDirectory(at: d, withIntermediateDirectories: true)
                for (name, bytes) in seeds { try Data(bytes).write(to: d.appendingPathComponent("\(name).\(ext)")) }
            }
        }
        let names = try fm.contentsOfDirectory(atPath: Self.root.appendingPathComponent("gguf").path).sorted()
        #expect(names.count >= 4)
        for name in names {
            let data = try Data(contentsOf: Self.root.appendingPathComponent("gguf/\(name)"))
            #expect(data.count <= 1 << 16, "seed \(name) is longer than the fuzzer's -max_len")
            let file = try GGUFFile(data: data)
            for t in file.tensors { #expect(file.floats(t).count == t.elementCount) }
            switch file["general.architecture"]?.string {
            case "llama": _ = try LlamaModel(file: file, threadCount: 1)
            case "gemma3": _ = try GemmaModel(file: file, threadCount: 1)
            default: break
            }
            if file["tokenizer.ggml.model"] != nil { _ = try loadTokenizer(file: file) }
        }
        #expect(try fm.contentsOfDirectory(atPath: Self.root.appendingPathComponent("tokenizer").path).count >= 6)
    }
}
