// Umbrella module: `import KVCrush` brings in every library module of the package.
@_exported import KVQuantization
@_exported import KVSelection
@_exported import KVStore
@_exported import KVExperiments
@_exported import KVModel
