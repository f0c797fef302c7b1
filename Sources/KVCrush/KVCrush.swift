// Umbrella of the core product: `import KVCrush` brings in the formats, the selection policies,
// the store and the compression bridge (the model runner and the experiments are their own
// products: `import KVModel`, `import KVExperiments`).
@_exported import KVQuantization
@_exported import KVSelection
@_exported import KVStore
@_exported import KVCompression
