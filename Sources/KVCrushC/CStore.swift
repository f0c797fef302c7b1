import CKVCrush
import KVCrush

// Stores, sequences and memory counts of kvcrush.h.

@_cdecl("kvcrush_store_create")
public func kvcrushStoreCreate(_ config: UnsafePointer<kvcrush_config>?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> kvcrush_status {
    cCall("kvcrush_store_create") { () throws(CFailure) in
        let c = try required(config, "config").pointee
        let out = try required(out, "store")
        guard c.struct_size >= UInt32(MemoryLayout<kvcrush_config>.size) else {
            throw .argument("config.struct_size is \(c.struct_size), expected \(MemoryLayout<kvcrush_config>.size) (use kvcrush_config_init)")
        }
        guard c.byte_limit >= -1 else { throw .argument("config.byte_limit must be -1 (no limit) or >= 0, got \(c.byte_limit)") }
        guard c.attend_threads >= 0 else { throw .argument("config.attend_threads must be >= 0, got \(c.attend_threads)") }
        var preset: CompressionPreset?
        if let p = c.preset {
            let name = String(cString: p)
            guard let found = CompressionPreset.named(name) else {
                throw .policy("unknown preset '\(name)' (expected one of \(CompressionPreset.all.map(\.name).joined(separator: ", ")))")
            }
            preset = found
        }
        guard c.attention_scale == 0 || (c.attention_scale.isFinite && c.attention_scale > 0) else {
            throw .argument("config.attention_scale must be 0 (1/sqrt(head_dim)) or finite and positive, got \(c.attention_scale)")
        }
        var configuration = KVStoreConfiguration(
            layerCount: Int(c.layers), queryHeadCount: Int(c.query_heads), kvHeadCount: Int(c.kv_heads), headDim: Int(c.head_dim),
            pageCapacity: Int(c.page_capacity), byteLimit: c.byte_limit < 0 ? nil : Int(c.byte_limit),
            attentionScale: c.attention_scale == 0 ? nil : c.attention_scale)
        if let preset { configuration = preset.configure(configuration) }
        let store: KVStore
        do throws(KVStoreConfigurationError) { store = try KVStore(configuration) } catch { throw .argument(error.description) }
        out.pointee = StoreHandle(store: store, presetName: preset?.name, attendThreads: c.attend_threads == 0 ? nil : Int(c.attend_threads))
            .retainedPointer()
    }
}

@_cdecl("kvcrush_store_destroy")
public func kvcrushStoreDestroy(_ store: OpaquePointer?) {
    guard let store else { return }
    Unmanaged<StoreHandle>.fromOpaque(UnsafeRawPointer(store)).release()
}

@_cdecl("kvcrush_store_config")
public func kvcrushStoreConfig(_ store: OpaquePointer?, _ config: UnsafeMutablePointer<kvcrush_config>?) -> kvcrush_status {
    cCall("kvcrush_store_config") { () throws(CFailure) in
        let h = try StoreHandle.from(store), out = try required(config, "config")
        let c = h.store.configuration
        out.pointee = kvcrush_config(
            struct_size: UInt32(MemoryLayout<kvcrush_config>.size), layers: Int32(c.layerCount), query_heads: Int32(c.queryHeadCount),
            kv_heads: Int32(c.kvHeadCount), head_dim: Int32(c.headDim), page_capacity: Int32(c.pageCapacity),
            byte_limit: c.byteLimit.map(Int64.init) ?? -1, attention_scale: c.attentionScale ?? 0,
            attend_threads: Int32(h.attendThreads ?? 0), preset: h.presetName.map { UnsafePointer($0) })
    }
}

// MARK: Sequences

@_cdecl("kvcrush_sequence_add")
public func kvcrushSequenceAdd(_ store: OpaquePointer?, _ sequence: UnsafeMutablePointer<UInt64>?) -> kvcrush_status {
    cCall("kvcrush_sequence_add") { () throws(CFailure) in
        let h = try StoreHandle.from(store), out = try required(sequence, "sequence")
        out.pointee = h.writing {
            let id = h.store.addSequence()
            h.inserted(id)
            return id.rawValue
        }
    }
}

@_cdecl("kvcrush_sequence_fork")
public func kvcrushSequenceFork(_ store: OpaquePointer?, _ sequence: UInt64, _ fork: UnsafeMutablePointer<UInt64>?) -> kvcrush_status {
    cCall("kvcrush_sequence_fork") { () throws(CFailure) in
        let h = try StoreHandle.from(store), out = try required(fork, "fork")
        out.pointee = try h.writing { () throws(CFailure) in
            let new = h.store.fork(try h.sequence(sequence))
            h.inserted(new)
            return new.rawValue
        }
    }
}

@_cdecl("kvcrush_sequence_remove")
public func kvcrushSequenceRemove(_ store: OpaquePointer?, _ sequence: UInt64) -> kvcrush_status {
    cCall("kvcrush_sequence_remove") { () throws(CFailure) in
        let h = try StoreHandle.from(store)
        try h.writing { () throws(CFailure) in
            let id = try h.sequence(sequence)
            h.store.removeSequence(id)
            h.removed(id)
        }
    }
}

@_cdecl("kvcrush_sequences")
public func kvcrushSequences(_ store: OpaquePointer?, _ ids: UnsafeMutablePointer<UInt64>?, _ capacity: Int,
                             _ count: UnsafeMutablePointer<Int>?) -> kvcrush_status {
    cCall("kvcrush_sequences") { () throws(CFailure) in
        let h = try StoreHandle.from(store), count = try required(count, "count")
        guard capacity == 0 || ids != nil else { throw .null("ids (with a non-zero capacity)") }
        let all = h.reading { h.sequenceIDs.sorted() }
        for (i, id) in all.prefix(capacity).enumerated() { ids![i] = id }
        count.pointee = all.count
    }
}

@_cdecl("kvcrush_sequence_length")
public func kvcrushSequenceLength(_ store: OpaquePointer?, _ sequence: UInt64, _ layer: Int32,
                                  _ length: UnsafeMutablePointer<Int64>?) -> kvcrush_status {
    cCall("kvcrush_sequence_length") { () throws(CFailure) in
        let h = try StoreHandle.from(store), out = try required(length, "length")
        out.pointee = try h.reading { () throws(CFailure) in
            Int64(h.store.nextPosition(of: try h.sequence(sequence), layer: try h.layer(layer)))
        }
    }
}

// MARK: Memory

@_cdecl("kvcrush_byte_count")
public func kvcrushByteCount(_ store: OpaquePointer?, _ bytes: UnsafeMutablePointer<Int64>?) -> kvcrush_status {
    cCall("kvcrush_byte_count") { () throws(CFailure) in
        let h = try StoreHandle.from(store), out = try required(bytes, "bytes")
        out.pointee = Int64(h.store.byteCount)
    }
}

@_cdecl("kvcrush_tier_counts")
public func kvcrushTierCounts(_ store: OpaquePointer?, _ sequence: UInt64, _ layer: Int32,
                              _ bytes: UnsafeMutablePointer<Int64>?, _ tokens: UnsafeMutablePointer<Int64>?) -> kvcrush_status {
    cCall("kvcrush_tier_counts") { () throws(CFailure) in
        let h = try StoreHandle.from(store), c = h.store.configuration
        let (b, t) = try h.reading { () throws(CFailure) in
            let id = try h.sequence(sequence)
            let layers = layer == -1 ? Array(0..<c.layerCount) : [try h.layer(layer)]
            var b = [Int64](repeating: 0, count: Tier.stored.count), t = b
            for l in layers {
                for kv in 0..<c.kvHeadCount {
                    let bc = h.store.byteCounts(of: id, layer: l, kvHead: kv), tc = h.store.tokenCounts(of: id, layer: l, kvHead: kv)
                    for tier in Tier.stored {
                        b[tier.rawValue] += Int64(bc[tier] ?? 0)
                        t[tier.rawValue] += Int64(tc[tier] ?? 0)
                    }
                }
            }
            return (b, t)
        }
        if let bytes { for i in b.indices { bytes[i] = b[i] } }
        if let tokens { for i in t.indices { tokens[i] = t[i] } }
    }
}
