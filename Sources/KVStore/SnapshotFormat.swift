import KVQuantization

/// The snapshot file format, version 4 (versions 1 to 3 are read too, and converted). All integers
/// little-endian.
///
///     file    = header · section("CONF") · section("PAGE") · section("SEQS")      (nothing after)
///     header  = magic "KVCSNAP\n" (8) · version u32 · sectionCount u32 (= 3) · reserved u32 (= 0)
///               · CRC-32C of the preceding 20 bytes u32
///     section = tag (4 ASCII) · payloadByteCount u64 · payload · CRC-32C of tag, count and payload u32
///
///     CONF    = layerCount, queryHeadCount, kvHeadCount, headDim, pageCapacity (u64 each)
///               · hasByteLimit u8 · byteLimit i64 · hasScale u8 · scale f32 bits
///               · tiers · hasLayerFormats u8 · (layerCount × tiers, when hasLayerFormats = 1) · rotation
///               · hasWindows u8 · (layerCount × window u32, 0: full attention; when hasWindows = 1)
///     tiers   = for each stored tier (fp16, int8, int4, int2): key format · value format
///               · page capacity u32 (0: the configuration's pageCapacity)
///     format  = kind u8 (0 fp16, 1 grouped, 2 channelwise, 3 Lloyd–Max, 4 mixed channelwise)
///               · code bits u8 (0, 2, 3, 4, 8; 0 for mixed) · groupSize u32 (grouped only; the row's
///               code bytes for mixed; else 0) · for mixed only: kvHeads u32 · headDim u32 · widths
///               (kvHeads × headDim code bits u8, per head in channel order)
///     rotation = seed u64 · key layers · value layers
///     layers  = kind u8 (0 none, 1 all, 2 only) · count u32 · layer u32* (only: ascending, distinct)
///     PAGE    = pageCount u32 · page*
///     page    = layer u32 · tier u8 · isStaging u8 · count u32 · base position i32 · count offsets u16
///               · count key rows · count value rows · page key parameters (channelwise sealed pages)
///     SEQS    = nextSequenceID u64 · sequenceCount u32 · sequence*
///     sequence = id u64 · per layer: nextPosition i32
///               · per layer, per KV head, per stored tier: pageCount u32 · page indices u32*
///               · staging page index u32 (0xFFFFFFFF: none)
///
/// A page's positions are `base + offset`, offsets strictly ascending from 0 (the layout of
/// `PagePositions`); each tier follows the invariants of `TierState` (checked when loading).
///
/// Older versions, converted when read (and saved again as version 4):
/// - version 3: CONF without the sliding windows (read as none: `layerSlidingWindows` nil); the rest
///   as version 4.
/// - version 2: CONF without page capacities, per-layer formats and rotation (`tiers` = key and
///   value format only, formats of kinds 0–2 at 2, 4 or 8 bits; no hasLayerFormats; no rotation,
///   read as `RotationSettings.none`); a page = tier u8 · isStaging u8 · count u32 · count key rows ·
///   count value rows · page key parameters · count positions i32, in any order. Each page's slots
///   are put in position order (rows permuted: the data is unchanged). A row-wise tier whose pages
///   are then not in ascending order is repacked (rows copied, so bit-exact; a stream that shared
///   such pages with a fork no longer shares them). A page spanning more than 65,535 positions is
///   split into pages that do not; for a page with per-channel keys that re-quantises each part's
///   keys from their decoded values (within the format's error bound of them), and a staging page's
///   parts but the last are sealed. Pages are shared as before otherwise.
/// - version 1: as version 2, with two more u64 fields in CONF after pageCapacity, sinkCount and
///   recentCount (policy settings the store never read; they now belong to `CompressionSettings`),
///   skipped (they must still be at most Int32.max).
///
/// Pages are stored once however many sequences share them (forks), so a restored store shares
/// them the same way and `byteCount` is unchanged. Only filled slots are written: the bytes beyond
/// `count` in a page are not part of its state.
enum SnapshotFormat {
    static let magic: [UInt8] = Array("KVCSNAP\n".utf8)
    /// The version written.
    static let version: UInt32 = 4
    /// The versions read.
    static let readableVersions: ClosedRange<UInt32> = 1...4
    static let headerByteCount = 24
    static let sectionTags = ["CONF", "PAGE", "SEQS"]
    static let noPage: UInt32 = 0xFFFF_FFFF
    /// Most streams (layers × KV heads) a snapshot's configuration may have.
    static let maxStreamCount = 1 << 20
}

/// Appends little-endian fields to a byte array.
struct SnapshotWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ x: UInt8) { bytes.append(x) }
    mutating func u16(_ x: UInt16) { withUnsafeBytes(of: x.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ x: UInt32) { withUnsafeBytes(of: x.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func i32(_ x: Int32) { u32(UInt32(bitPattern: x)) }
    mutating func u64(_ x: UInt64) { withUnsafeBytes(of: x.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func i64(_ x: Int64) { u64(UInt64(bitPattern: x)) }
    mutating func raw(_ p: UnsafeRawPointer, _ n: Int) { bytes.append(contentsOf: UnsafeRawBufferPointer(start: p, count: n)) }

    /// Appends `payload` as a section with its tag, length and checksum.
    mutating func section(_ tag: String, _ payload: [UInt8]) {
        let start = bytes.count
        bytes.append(contentsOf: Array(tag.utf8))
        u64(UInt64(payload.count))
        bytes.append(contentsOf: payload)
        let crc = bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[start...])) }
        u32(crc)
    }

    mutating func format(_ f: StorageFormat) {
        switch f {
        case .fp16: u8(0); u8(0); u32(0)
        case .grouped(let w, let g): u8(1); u8(UInt8(w.bits)); u32(UInt32(g))
        case .channelwise(let w): u8(2); u8(UInt8(w.bits)); u32(0)
        case .lloydMax(let w): u8(3); u8(UInt8(w.bits)); u32(0)
        case .mixedChannelwise(let m):
            u8(4); u8(0); u32(UInt32(m.rowByteCount)); u32(UInt32(m.kvHeadCount)); u32(UInt32(m.headDim))
            for head in m.widths { for w in head { u8(UInt8(w.bits)) } }
        }
    }

    mutating func configuration(_ c: KVStoreConfiguration) {
        for x in [c.layerCount, c.queryHeadCount, c.kvHeadCount, c.headDim, c.pageCapacity] {
            u64(UInt64(x))
        }
        u8(c.byteLimit == nil ? 0 : 1)
        i64(Int64(c.byteLimit ?? 0))
        u8(c.attentionScale == nil ? 0 : 1)
        u32(c.attentionScale?.bitPattern ?? 0)
        tiers(c.tierFormats)
        u8(c.layerTierFormats == nil ? 0 : 1)
        for f in c.layerTierFormats ?? [] { tiers(f) }
        rotation(c.rotation)
        u8(c.layerSlidingWindows == nil ? 0 : 1)
        for w in c.layerSlidingWindows ?? [] { u32(UInt32(w ?? 0)) }
    }

    mutating func tiers(_ f: TierFormats) {
        for t in Tier.stored {
            format(f.keyFormat(t))
            format(f.valueFormat(t))
            u32(UInt32(f.pageCapacities[t] ?? 0))
        }
    }

    mutating func rotation(_ r: RotationSettings) {
        u64(r.seed)
        for layers in [r.keys, r.values] {
            switch layers {
            case .none: u8(0); u32(0)
            case .all: u8(1); u32(0)
            case .only(let set):
                u8(2)
                u32(UInt32(set.count))
                for l in set.sorted() { u32(UInt32(l)) }
            }
        }
    }
}

/// Reads little-endian fields from one section's payload; every read is bounds-checked and a short
/// payload is a `.malformed` error naming the field.
struct SnapshotReader {
    let bytes: UnsafeRawBufferPointer
    let section: String
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer, section: String) {
        self.bytes = bytes
        self.section = section
    }

    var remaining: Int { bytes.count - offset }

    func fail(_ reason: String) -> SnapshotError { .malformed(section: section, reason: reason) }

    mutating func take(_ n: Int, _ what: String) throws(SnapshotError) -> UnsafeRawBufferPointer {
        guard n >= 0, n <= remaining else {
            throw fail("the payload ends inside \(what) (needs \(n) bytes at offset \(offset), \(remaining) left)")
        }
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)])
    }

    mutating func u8(_ what: String) throws(SnapshotError) -> UInt8 { try take(1, what)[0] }
    mutating func u16(_ what: String) throws(SnapshotError) -> UInt16 {
        UInt16(littleEndian: try take(2, what).loadUnaligned(as: UInt16.self))
    }
    mutating func u32(_ what: String) throws(SnapshotError) -> UInt32 {
        UInt32(littleEndian: try take(4, what).loadUnaligned(as: UInt32.self))
    }
    mutating func i32(_ what: String) throws(SnapshotError) -> Int32 { Int32(bitPattern: try u32(what)) }
    mutating func u64(_ what: String) throws(SnapshotError) -> UInt64 {
        UInt64(littleEndian: try take(8, what).loadUnaligned(as: UInt64.self))
    }

    /// A u64 that must fit in `Int`.
    mutating func int(_ what: String) throws(SnapshotError) -> Int {
        let x = try u64(what)
        guard x <= UInt64(Int.max) else { throw fail("\(what) \(x) does not fit in Int") }
        return Int(x)
    }

    /// A flag byte that must be 0 or 1.
    mutating func flag(_ what: String) throws(SnapshotError) -> Bool {
        let x = try u8(what)
        guard x <= 1 else { throw fail("\(what) is \(x), must be 0 or 1") }
        return x == 1
    }

    /// A count that must be at most `limit`.
    mutating func count(_ what: String, max limit: Int) throws(SnapshotError) -> Int {
        let x = Int(try u32(what))
        guard x <= limit else { throw fail("\(what) is \(x), at most \(limit) fit") }
        return x
    }

    func finish() throws(SnapshotError) {
        guard remaining == 0 else { throw fail("\(remaining) unread bytes at the end of the payload") }
    }

    mutating func format(_ what: String) throws(SnapshotError) -> StorageFormat {
        let kind = try u8("\(what) kind"), bits = try u8("\(what) code bits"), group = try u32("\(what) group size")
        func width() throws(SnapshotError) -> CodeWidth {
            guard let w = CodeWidth(rawValue: Int(bits)) else { throw fail("\(what) has \(bits)-bit codes (2, 3, 4 or 8 exist)") }
            return w
        }
        switch kind {
        case 0:
            guard bits == 0, group == 0 else { throw fail("\(what) is fp16 with nonzero code bits or group size") }
            return .fp16
        case 1:
            guard group <= 1 << 20 else { throw fail("\(what) group size \(group) is implausible") }
            return .grouped(try width(), groupSize: Int(group))
        case 2:
            guard group == 0 else { throw fail("\(what) is channelwise with a group size") }
            return .channelwise(try width())
        case 3:
            guard group == 0 else { throw fail("\(what) is Lloyd–Max with a group size") }
            return .lloydMax(try width())
        case 4:
            guard bits == 0 else { throw fail("\(what) is mixed channelwise with \(bits)-bit codes") }
            let heads = Int(try u32("\(what) KV heads")), d = Int(try u32("\(what) head dim"))
            guard heads >= 1, d >= 1, heads <= remaining, d <= remaining / heads else {
                throw fail("\(what) has widths for \(heads) KV heads of \(d) channels, more than the payload holds")
            }
            var widths = [[CodeWidth]]()
            for h in 0..<heads {
                var head = [CodeWidth]()
                for ch in 0..<d {
                    let b = try u8("\(what) width of KV head \(h) channel \(ch)")
                    guard let w = CodeWidth(rawValue: Int(b)) else { throw fail("\(what) KV head \(h) channel \(ch) has \(b)-bit codes (2, 3, 4 or 8 exist)") }
                    head.append(w)
                }
                widths.append(head)
            }
            let need = widths.map(ChannelWidths.segmentByteCount).max()!
            guard Int(group) >= need, Int(group) <= 4 * d else { throw fail("\(what) has \(group) code bytes per row; its widths need \(need)...\(4 * d)") }
            return .mixedChannelwise(ChannelWidths(widths: widths, rowByteCount: Int(group)))
        default:
            throw fail("\(what) kind \(kind) is unknown (0 fp16, 1 grouped, 2 channelwise, 3 Lloyd–Max, 4 mixed channelwise)")
        }
    }

    /// The CONF payload of a file of `version`.
    mutating func configuration(version: UInt32) throws(SnapshotError) -> KVStoreConfiguration {
        let layerCount = try int("layerCount"), queryHeadCount = try int("queryHeadCount")
        let kvHeadCount = try int("kvHeadCount"), headDim = try int("headDim")
        let pageCapacity = try int("pageCapacity")
        if version == 1 {
            for field in ["sinkCount", "recentCount"] {
                let x = try int(field)
                guard x <= Int(Int32.max) else { throw fail("\(field) \(x) (version 1) must be in 0...Int32.max") }
            }
        }
        let hasLimit = try flag("hasByteLimit")
        let limit = Int64(bitPattern: try u64("byteLimit"))
        let hasScale = try flag("hasAttentionScale")
        let scale = Float(bitPattern: try u32("attentionScale"))
        let formats = try tiers("tierFormats", version: version)
        var layerFormats: [TierFormats]?
        if version >= 3, try flag("hasLayerFormats") {
            // Bounded by the payload: each layer's entry is 4 × 16 bytes.
            guard layerCount <= remaining / 64 else { throw fail("layerCount \(layerCount) layers of formats do not fit the payload") }
            layerFormats = []
            for l in 0..<layerCount { layerFormats!.append(try tiers("layerTierFormats[\(l)]", version: version)) }
        }
        let rotation = version >= 3 ? try self.rotation(layerCount: layerCount) : .none
        var windows: [Int?]?
        if version >= 4, try flag("hasWindows") {
            guard layerCount <= remaining / 4 else { throw fail("layerCount \(layerCount) windows do not fit the payload") }
            windows = []
            for l in 0..<layerCount {
                let w = try u32("layerSlidingWindows[\(l)]")
                windows!.append(w == 0 ? nil : Int(w))
            }
        }
        return KVStoreConfiguration(
            layerCount: layerCount, queryHeadCount: queryHeadCount, kvHeadCount: kvHeadCount, headDim: headDim,
            pageCapacity: pageCapacity, tierFormats: formats, layerTierFormats: layerFormats,
            byteLimit: hasLimit ? Int(limit) : nil, attentionScale: hasScale ? scale : nil, rotation: rotation,
            layerSlidingWindows: windows)
    }

    /// The rotation of a version 3 CONF: layers listed ascending, distinct, below `layerCount`.
    mutating func rotation(layerCount: Int) throws(SnapshotError) -> RotationSettings {
        let seed = try u64("rotation seed")
        var sets = [RotationSettings.Layers]()
        for what in ["rotation keys", "rotation values"] {
            let kind = try u8("\(what) kind")
            let count = try count("\(what) layer count", max: min(layerCount, remaining / 4))
            switch kind {
            case 0, 1:
                guard count == 0 else { throw fail("\(what) is \(kind == 0 ? "none" : "all") with \(count) layers listed") }
                sets.append(kind == 0 ? .none : .all)
            case 2:
                var layers = [Int]()
                for _ in 0..<count {
                    let l = Int(try u32("\(what) layer"))
                    guard l < layerCount && l > (layers.last ?? -1) else {
                        throw fail("\(what) lists layer \(l) out of order or outside 0..<\(layerCount)")
                    }
                    layers.append(l)
                }
                sets.append(.only(Set(layers)))
            default:
                throw fail("\(what) kind \(kind) is unknown (0 none, 1 all, 2 only)")
            }
        }
        return RotationSettings(keys: sets[0], values: sets[1], seed: seed)
    }

    /// One `tiers` entry of CONF (without page capacities before version 3).
    mutating func tiers(_ what: String, version: UInt32) throws(SnapshotError) -> TierFormats {
        var keys = [Tier: StorageFormat](), values = [Tier: StorageFormat](), capacities = [Tier: Int]()
        for t in Tier.stored {
            keys[t] = try format("\(what).keys[\(t)]")
            values[t] = try format("\(what).values[\(t)]")
            if version >= 3 {
                let p = try u32("\(what).pageCapacities[\(t)]")
                if p != 0 { capacities[t] = Int(p) }
            }
        }
        return TierFormats(keys: keys, values: values, pageCapacities: capacities)
    }
}
