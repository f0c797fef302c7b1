// swift-tools-version:6.0
import PackageDescription

// No package dependencies and no unsafe flags: other packages must be able to depend on this one.
//
// Products:
// - KVCrush: the core library runtimes embed (`import KVCrush`): formats, selection, compression,
//   the store.
// - KVCrushModel: the example runtime (GGUF reader, Llama forward pass, tokenizer), `import KVModel`.
// - KVCrushExperiments: the evaluation protocols and their inputs and reports, `import KVExperiments`.
// - kvcrush: the command.
//
// Module dependencies (each may import only those listed):
//   CKVKernels ← KVQuantization ← KVSelection ─┐
//                     ↑  └──────── KVStore ────┴─ KVCompression ← KVModel ← KVExperiments ← kvcrush
// Internals shared between the package's modules and tests are `package`, not `public`.
let package = Package(
    name: "KVCrush",
    products: [
        .library(name: "KVCrush", targets: ["KVCrush"]),
        .library(name: "KVCrushModel", targets: ["KVModel"]),
        .library(name: "KVCrushExperiments", targets: ["KVExperiments"]),
        // The C ABI (kvcrush.h in Sources/CKVCrush/include): libKVCrushC.so.
        .library(name: "KVCrushC", type: .dynamic, targets: ["KVCrushC"]),
        .executable(name: "kvcrush", targets: ["kvcrush"]),
    ],
    targets: [
        // AVX-512 hot loops of the read path, one file per concern (per-function target attributes,
        // runtime CPU dispatch; no flags).
        .target(name: "CKVKernels"),
        // Formats: FP16 rows, affine group codecs, per-channel keys, SIMD kernels + scalar twins, the
        // kernel-path choice; the tier/format/plan vocabulary (`Tier`, `TierFormats`, `RetentionPlan`).
        .target(name: "KVQuantization", dependencies: ["CKVKernels"], linkerSettings: [.linkedLibrary("m")]),
        // Scores, policies, KVCrush representatives, byte budgets -> retention plans. Never sees the store.
        .target(name: "KVSelection", dependencies: ["KVQuantization"]),
        // The paged mixed-precision store and its one dequantising read path. Decides nothing.
        .target(name: "KVStore", dependencies: ["KVQuantization"]),
        // The bridge: KVCompressor, CompressionSettings, cache policies, prefill and decode sessions.
        .target(name: "KVCompression", dependencies: ["KVQuantization", "KVSelection", "KVStore"]),
        // Umbrella of the core product: `import KVCrush`.
        .target(name: "KVCrush", dependencies: ["KVQuantization", "KVSelection", "KVStore", "KVCompression"]),
        // The example runtime: GGUF reader, Llama forward pass whose KV cache is a KVStore, BPE tokenizer.
        .target(name: "KVModel", dependencies: ["KVQuantization", "KVStore", "KVCompression"]),
        // Safetensors, KV dumps, the attention-level and end-to-end protocols, reports.
        .target(name: "KVExperiments", dependencies: ["KVQuantization", "KVSelection", "KVStore", "KVCompression", "KVModel"]),
        // The C ABI: kvcrush.h (the types, imported by the implementation so they cannot disagree) and
        // its @_cdecl implementation over the core's public API.
        .target(name: "CKVCrush"),
        .target(name: "KVCrushC", dependencies: ["CKVCrush", "KVCrush"]),
        .executableTarget(name: "kvcrush", dependencies: ["KVCrush", "KVModel", "KVExperiments"]),

        // Child processes of the store's reliability tests (killed mid-save; resident memory under a
        // byte limit). Not a product: built with the tests.
        .executableTarget(name: "KVStoreProbe", dependencies: ["KVQuantization", "KVStore"], path: "Tests/KVStoreProbe"),
        .target(name: "TestSupport", dependencies: ["KVQuantization"], path: "Tests/TestSupport"),
        .testTarget(name: "KVQuantizationTests", dependencies: ["KVQuantization", "TestSupport", "KVExperiments"]),
        .testTarget(name: "KVSelectionTests", dependencies: ["KVSelection", "TestSupport"]),
        .testTarget(name: "KVStoreTests", dependencies: ["KVStore", "TestSupport", "KVExperiments", "KVCrush"]),
        .testTarget(name: "KVCompressionTests", dependencies: ["KVCompression", "KVCrush", "TestSupport", "KVExperiments"]),
        .testTarget(name: "KVExperimentsTests", dependencies: ["KVExperiments", "TestSupport"]),
        .testTarget(name: "KVModelTests", dependencies: ["KVModel", "KVExperiments", "TestSupport"]),
        // The command line's parsing layer (the executable target is importable by tests).
        .testTarget(name: "kvcrushTests", dependencies: ["kvcrush", "KVExperiments", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
