#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CKVCrush
import KVCrush

// Library-wide functions of kvcrush.h: version, last error, configuration defaults, presets.

@_cdecl("kvcrush_version")
public func kvcrushVersion() -> UnsafePointer<CChar> { staticCString("0.1.0") }

@_cdecl("kvcrush_abi_version")
public func kvcrushABIVersion() -> UInt32 { 1 }

@_cdecl("kvcrush_last_error")
public func kvcrushLastError() -> UnsafePointer<CChar> { LastError.current }

@_cdecl("kvcrush_config_init")
public func kvcrushConfigInit(_ config: UnsafeMutablePointer<kvcrush_config>?) {
    guard let config else { return }
    config.pointee = kvcrush_config(
        struct_size: UInt32(MemoryLayout<kvcrush_config>.size), layers: 0, query_heads: 0, kv_heads: 0, head_dim: 0,
        page_capacity: 32, byte_limit: -1, attention_scale: 0, attend_threads: 0, preset: nil)
}

/// The presets' names as C strings made once (static for the life of the process).
nonisolated(unsafe) private let presetNames: [UnsafeMutablePointer<CChar>] = CompressionPreset.all.map { strdup($0.name)! }

@_cdecl("kvcrush_preset_count")
public func kvcrushPresetCount() -> Int { CompressionPreset.all.count }

@_cdecl("kvcrush_preset_info")
public func kvcrushPresetInfo(_ index: Int, _ name: UnsafeMutablePointer<UnsafePointer<CChar>?>?,
                              _ budget: UnsafeMutablePointer<Double>?, _ pageCapacity: UnsafeMutablePointer<Int32>?) -> kvcrush_status {
    cCall("kvcrush_preset_info") { () throws(CFailure) in
        let all = CompressionPreset.all
        guard 0 <= index && index < all.count else { throw .argument("preset index \(index) outside 0..<\(all.count)") }
        name?.pointee = UnsafePointer(presetNames[index])
        budget?.pointee = all[index].budget
        pageCapacity?.pointee = Int32(all[index].pageCapacity)
    }
}
