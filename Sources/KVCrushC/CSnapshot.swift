import CKVCrush
import Foundation
import KVCrush

// Snapshots of kvcrush.h.

@_cdecl("kvcrush_store_save")
public func kvcrushStoreSave(_ store: OpaquePointer?, _ path: UnsafePointer<CChar>?, _ sequences: UnsafePointer<UInt64>?,
                             _ count: Int) -> kvcrush_status {
    cCall("kvcrush_store_save") { () throws(CFailure) in
        let h = try StoreHandle.from(store), path = String(cString: try required(path, "path"))
        try h.reading { () throws(CFailure) in
            var ids: [SequenceID]?
            if let sequences {
                guard count >= 0 else { throw .argument("count must be >= 0") }
                ids = try UnsafeBufferPointer(start: sequences, count: count).map { (id) throws(CFailure) in try h.sequence(id) }
                guard Set(ids!).count == ids!.count else { throw .argument("a sequence is named twice") }
            }
            do throws(SnapshotError) { try h.store.saveSnapshot(to: URL(fileURLWithPath: path), sequences: ids) } catch {
                throw CFailure(status: KVCRUSH_ERROR_IO, message: error.description)
            }
        }
    }
}

@_cdecl("kvcrush_store_load")
public func kvcrushStoreLoad(_ path: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> kvcrush_status {
    cCall("kvcrush_store_load") { () throws(CFailure) in
        let path = String(cString: try required(path, "path")), out = try required(out, "store")
        let store: KVStore
        do throws(SnapshotError) { store = try KVStore.restoring(from: URL(fileURLWithPath: path)) } catch {
            if case .byteLimitExceeded = error { throw CFailure(status: KVCRUSH_ERROR_BYTE_LIMIT, message: error.description) }
            throw CFailure(status: KVCRUSH_ERROR_SNAPSHOT, message: error.description)
        }
        out.pointee = StoreHandle(store: store, presetName: nil, attendThreads: nil).retainedPointer()
    }
}
