// swift-tools-version:6.0
import PackageDescription

// No package dependencies and no unsafe flags: other packages must be able to depend on this one.
let package = Package(
    name: "KVCrush",
    products: [
        .library(name: "KVCrush", targets: ["KVCrush"]),
        .executable(name: "kvcrush", targets: ["kvcrush"]),
    ],
    targets: [
        // Formats: FP16 rows, affine group codecs, per-channel keys, SIMD kernels + scalar twins.
        .target(name: "KVQuantization", dependencies: ["CKVKernels"], linkerSettings: [.linkedLibrary("m")]),
        // AVX-512 hot loops of the read path (per-function target attributes, runtime dispatch; no flags).
        .target(name: "CKVKernels"),
        // Scores, policies, KVCrush representatives, byte budgets -> retention plans.
        .target(name: "KVSelection", dependencies: ["KVQuantization"]),
        // The paged mixed-precision store and its one dequantising read path.
        .target(name: "KVStore", dependencies: ["KVQuantization", "KVSelection"]),
        // Safetensors, KV dumps, the evaluation protocol, reports.
        .target(name: "KVExperiments", dependencies: ["KVQuantization", "KVSelection", "KVStore"]),
        // The example runtime: GGUF reader, Llama forward pass whose KV cache is a KVStore, BPE tokenizer.
        .target(name: "KVModel", dependencies: ["KVQuantization", "KVSelection", "KVStore"]),
        // Umbrella: `import KVCrush`.
        .target(name: "KVCrush", dependencies: ["KVQuantization", "KVSelection", "KVStore", "KVExperiments", "KVModel"]),
        .executableTarget(name: "kvcrush", dependencies: ["KVCrush"]),

        .target(name: "TestSupport", dependencies: ["KVQuantization"], path: "Tests/TestSupport"),
        .testTarget(name: "KVQuantizationTests", dependencies: ["KVQuantization", "TestSupport", "KVExperiments"]),
        .testTarget(name: "KVSelectionTests", dependencies: ["KVSelection", "TestSupport"]),
        .testTarget(name: "KVStoreTests", dependencies: ["KVStore", "TestSupport", "KVExperiments", "KVCrush"]),
        .testTarget(name: "KVExperimentsTests", dependencies: ["KVExperiments", "TestSupport"]),
        .testTarget(name: "KVModelTests", dependencies: ["KVModel", "KVExperiments", "TestSupport"]),
        // The command line's parsing layer (the executable target is importable by tests).
        .testTarget(name: "kvcrushTests", dependencies: ["kvcrush", "KVExperiments", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
