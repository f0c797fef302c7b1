import KVQuantization

/// The validated work of one stream's moves, computed before anything changes.
struct PreparedMoves {
    /// Locations of tokens leaving their tier, per source tier.
    var leaving: [Set<TokenLocation>]
    /// Tokens arriving per destination tier, in position order, with where they come from.
    var arrivals: [[(position: Int32, from: TokenLocation)]]
    /// Bytes of pages the execution allocates and frees.
    var allocatedBytes = 0
    var freedBytes = 0

    var isEmpty: Bool { leaving.allSatisfy(\.isEmpty) && arrivals.allSatisfy(\.isEmpty) }
}

extension StreamState {
    /// Validates `moves` against this stream and computes what executing them costs.
    ///
    /// Traps (caller bug) on a position the stream does not hold, a position named twice, or a
    /// move up a tier.
    mutating func prepare(_ moves: [StreamPlan.Move], codecs: [TierCodecs], context: String) -> PreparedMoves {
        let tierCount = Tier.stored.count
        var p = PreparedMoves(leaving: Array(repeating: [], count: tierCount), arrivals: Array(repeating: [], count: tierCount))
        guard !moves.isEmpty else { return p }
        let where_ = locations()
        var seen = Set<Int32>(minimumCapacity: moves.count)
        for m in moves {
            guard let loc = where_[m.position] else {
                preconditionFailure("KVStore.apply: \(context) holds no token at position \(m.position)")
            }
            precondition(seen.insert(m.position).inserted, "KVStore.apply: \(context) names position \(m.position) twice")
            precondition(m.tier.rawValue >= loc.tier,
                         "KVStore.apply: \(context) moves position \(m.position) up from \(Tier(rawValue: loc.tier)!) to \(m.tier); tokens only move down")
            guard m.tier.rawValue > loc.tier else { continue }
            p.leaving[loc.tier].insert(loc)
            if m.tier != .dropped { p.arrivals[m.tier.rawValue].append((m.position, loc)) }
        }
        for t in 0..<tierCount {
            p.arrivals[t].sort { $0.position < $1.position }
            let (a, f) = cost(tier: t, leaving: p.leaving[t], arriving: p.arrivals[t].count, codecs: codecs[t])
            p.allocatedBytes += a
            p.freedBytes += f
        }
        return p
    }

    /// Bytes allocated and freed by rebuilding tier `t`.
    private mutating func cost(tier t: Int, leaving: Set<TokenLocation>, arriving: Int, codecs: TierCodecs) -> (Int, Int) {
        guard !leaving.isEmpty || arriving > 0 else { return (0, 0) }
        let cap = codecs.layout.capacity
        var allocated = 0, freed = 0
        if !codecs.isPageWise {
            if leaving.isEmpty {
                // Append into the last page (copied first if shared), then fresh pages.
                var free = 0
                if let last = tiers[t].pages.indices.last, !tiers[t].pages[last].isFull {
                    free = cap - tiers[t].pages[last].count
                    if !isKnownUniquelyReferenced(&tiers[t].pages[last]) { allocated += codecs.layout.byteCount }
                }
                allocated += (max(0, arriving - free) + cap - 1) / cap * codecs.layout.byteCount
            } else {
                let n = tiers[t].tokenCount - leaving.count + arriving
                allocated += (n + cap - 1) / cap * codecs.layout.byteCount
                for i in tiers[t].pages.indices where isKnownUniquelyReferenced(&tiers[t].pages[i]) {
                    freed += codecs.layout.byteCount
                }
            }
            return (allocated, freed)
        }
        // Page-wise: sealed pages that lose a token are unpacked into the staging set with the
        // staging page's tokens and the arrivals; full pages are sealed again, the rest staged.
        let hit = Set(leaving.map(\.page).filter { $0 >= 0 })
        var pending = arriving
        for i in hit {
            pending += tiers[t].pages[i].count
            if isKnownUniquelyReferenced(&tiers[t].pages[i]) { freed += codecs.layout.byteCount }
        }
        pending -= leaving.count
        if tiers[t].staging != nil {
            pending += tiers[t].staging!.count
            if isKnownUniquelyReferenced(&tiers[t].staging!) { freed += codecs.stagingLayout!.byteCount }
        }
        allocated += pending / cap * codecs.layout.byteCount
        if pending % cap > 0 { allocated += codecs.stagingLayout!.byteCount }
        return (allocated, freed)
    }

    /// Carries out prepared moves. Cannot fail: values were validated when appended and decoded
    /// values are clamped to ±65504 before re-encoding (a grouped top code can decode up to scale/2
    /// above the FP16 range; a rotated vector's elements reach ‖x‖₁/√d, beyond 65504 only for
    /// vectors of extreme norm). Tokens moving between tiers of different rotations (out of FP16
    /// into a rotated tier) are rotated (`rotations`) before they are encoded.
    mutating func execute(_ p: PreparedMoves, codecs: [TierCodecs], rotations: LayerRotations, pool: PagePool) {
        guard !p.isEmpty else { return }
        let d = codecs[0].layout.headDim
        // 1. Decode every arriving token from where it is now.
        var arrivingKeys = [[Float]](), arrivingValues = [[Float]]()
        for t in 0..<Tier.stored.count {
            let n = p.arrivals[t].count
            var keys = [Float](repeating: 0, count: n * d), values = keys
            keys.withUnsafeMutableBufferPointer { kp in
                values.withUnsafeMutableBufferPointer { vp in
                    for (i, a) in p.arrivals[t].enumerated() {
                        let src = codecs[a.from.tier], page = tiers[a.from.tier].page(a.from.page)
                        src.decodeKey(page, a.from.slot, into: kp.baseAddress! + i * d)
                        src.decodeValue(page, a.from.slot, into: vp.baseAddress! + i * d)
                        rotations.convert(kp.baseAddress! + i * d, values: false, from: a.from.tier, to: t)
                        rotations.convert(vp.baseAddress! + i * d, values: true, from: a.from.tier, to: t)
                    }
                }
            }
            clampToHalfRange(&keys)
            clampToHalfRange(&values)
            arrivingKeys.append(keys)
            arrivingValues.append(values)
        }
        // 2. Rebuild every tier that changes.
        for t in 0..<Tier.stored.count where !p.leaving[t].isEmpty || !p.arrivals[t].isEmpty {
            let positions = p.arrivals[t].map(\.position)
            if codecs[t].isPageWise {
                rebuildPageWise(t, leaving: p.leaving[t], positions: positions, keys: arrivingKeys[t],
                                values: arrivingValues[t], codecs: codecs[t], pool: pool)
            } else {
                rebuildRowWise(t, leaving: p.leaving[t], positions: positions, keys: arrivingKeys[t],
                               values: arrivingValues[t], codecs: codecs[t], pool: pool)
            }
        }
    }

    private func clampToHalfRange(_ x: inout [Float]) {
        for i in x.indices { x[i] = min(max(x[i], -StorageFormat.maxMagnitude), StorageFormat.maxMagnitude) }
    }

    /// Row-wise tier: survivors keep their bytes; arrivals are encoded; pages are packed full.
    private mutating func rebuildRowWise(_ t: Int, leaving: Set<TokenLocation>, positions: [Int32], keys: [Float],
                                         values: [Float], codecs c: TierCodecs, pool: PagePool) {
        let layout = c.layout, d = layout.headDim, kr = layout.keyRowByteCount, vr = layout.valueRowByteCount
        var rows = RowBuffer(keyRowByteCount: kr, valueRowByteCount: vr)
        if !leaving.isEmpty {
            // Survivors out to scratch, old pages back to the pool before new ones are taken.
            for (i, page) in tiers[t].pages.enumerated() {
                for s in 0..<page.count where !leaving.contains(TokenLocation(tier: t, page: i, slot: s)) {
                    rows.append(position: page.position(s), key: page.keyRow(s), value: page.valueRow(s))
                }
            }
            tiers[t].pages.removeAll()
        }
        keys.withUnsafeBufferPointer { kp in
            values.withUnsafeBufferPointer { vp in
                for i in positions.indices {
                    rows.appendEncoded(position: positions[i], key: kp.baseAddress! + i * d, value: vp.baseAddress! + i * d,
                                       keyCodec: c.keyRows!, valueCodec: c.values)
                }
            }
        }
        var next = 0
        while next < rows.count {
            if tiers[t].pages.isEmpty || tiers[t].pages[tiers[t].pages.count - 1].isFull {
                tiers[t].pages.append(pool.allocate(layout, after: tiers[t].pages.last))
            }
            let last = tiers[t].pages.count - 1
            makeUnique(tier: t, page: last, pool: pool)
            let page = tiers[t].pages[last]
            let n = min(layout.capacity - page.count, rows.count - next)
            rows.write(from: next, count: n, into: page, at: page.count)
            page.count += n
            next += n
        }
    }

    /// Page-wise tier: unpack the sealed pages that lose tokens and the staging page, then seal
    /// every full page's worth and stage the rest.
    private mutating func rebuildPageWise(_ t: Int, leaving: Set<TokenLocation>, positions: [Int32], keys: [Float],
                                          values: [Float], codecs c: TierCodecs, pool: PagePool) {
        let d = c.layout.headDim, vr = c.layout.valueRowByteCount, cap = c.layout.capacity
        var pendingPositions = [Int32](), pendingKeys = [Float](), pendingValues = [UInt8]()
        var scratch = [Float](repeating: 0, count: d)
        func unpack(_ page: Page, pageIndex: Int) {
            for s in 0..<page.count where !leaving.contains(TokenLocation(tier: t, page: pageIndex, slot: s)) {
                pendingPositions.append(page.position(s))
                scratch.withUnsafeMutableBufferPointer { c.decodeKey(page, s, into: $0.baseAddress!) }
                pendingKeys.append(contentsOf: scratch)
                pendingValues.append(contentsOf: UnsafeRawBufferPointer(start: page.valueRow(s), count: vr))
            }
        }
        let hit = Set(leaving.map(\.page))
        var kept = [Page]()
        for (i, page) in tiers[t].pages.enumerated() {
            if hit.contains(i) { unpack(page, pageIndex: i) } else { kept.append(page) }
        }
        if let st = tiers[t].staging { unpack(st, pageIndex: -1) }
        tiers[t].pages = kept
        tiers[t].staging = nil
        clampToHalfRange(&pendingKeys)
        pendingPositions += positions
        pendingKeys += keys
        var valueRow = [UInt8](repeating: 0, count: vr)
        values.withUnsafeBufferPointer { vp in
            for i in positions.indices {
                valueRow.withUnsafeMutableBytes { encodeOrTrap(c.values, vp.baseAddress! + i * d, $0.baseAddress!) }
                pendingValues += valueRow
            }
        }
        let n = pendingPositions.count
        var start = 0
        pendingKeys.withUnsafeBufferPointer { kp in
            pendingValues.withUnsafeBytes { vp in
                while n - start >= cap {
                    let page = pool.allocate(c.layout, after: tiers[t].pages.last)
                    do {
                        try c.keyChannels!.encodePage(kp.baseAddress! + start * d, tokenCount: cap,
                                                      codes: page.keyRow(0), params: page.keyParameters)
                    } catch { preconditionFailure("KVStore: a stored key became unstorable: \(error)") }
                    page.valueRow(0).copyMemory(from: vp.baseAddress! + start * vr, byteCount: cap * vr)
                    for k in 0..<cap { page.setPosition(pendingPositions[start + k], k) }
                    page.count = cap
                    tiers[t].pages.append(page)
                    start += cap
                }
                if start < n {
                    let page = pool.allocate(c.stagingLayout!)
                    for k in 0..<(n - start) {
                        encodeOrTrap(c.fp16, kp.baseAddress! + (start + k) * d, page.keyRow(k))
                        page.valueRow(k).copyMemory(from: vp.baseAddress! + (start + k) * vr, byteCount: vr)
                        page.setPosition(pendingPositions[start + k], k)
                    }
                    page.count = n - start
                    tiers[t].staging = page
                }
            }
        }
    }
}

/// Encodes a row known to be storable (validated on append, clamped since).
func encodeOrTrap(_ codec: RowCodec, _ x: UnsafePointer<Float>, _ row: UnsafeMutableRawPointer) {
    do { try codec.encode(x, into: row) } catch { preconditionFailure("KVStore: a stored value became unstorable: \(error)") }
}

/// Rows of one tier in flight during a rebuild: positions and raw key/value row bytes.
struct RowBuffer {
    let keyRowByteCount: Int
    let valueRowByteCount: Int
    var positions: [Int32] = []
    var keys: [UInt8] = []
    var values: [UInt8] = []
    var count: Int { positions.count }

    init(keyRowByteCount: Int, valueRowByteCount: Int) {
        self.keyRowByteCount = keyRowByteCount
        self.valueRowByteCount = valueRowByteCount
    }

    mutating func append(position: Int32, key: UnsafeRawPointer, value: UnsafeRawPointer) {
        positions.append(position)
        keys.append(contentsOf: UnsafeRawBufferPointer(start: key, count: keyRowByteCount))
        values.append(contentsOf: UnsafeRawBufferPointer(start: value, count: valueRowByteCount))
    }

    mutating func appendEncoded(position: Int32, key: UnsafePointer<Float>, value: UnsafePointer<Float>,
                                keyCodec: RowCodec, valueCodec: RowCodec) {
        positions.append(position)
        let k0 = keys.count, v0 = values.count
        keys.append(contentsOf: repeatElement(0, count: keyRowByteCount))
        values.append(contentsOf: repeatElement(0, count: valueRowByteCount))
        keys.withUnsafeMutableBytes { encodeOrTrap(keyCodec, key, $0.baseAddress! + k0) }
        values.withUnsafeMutableBytes { encodeOrTrap(valueCodec, value, $0.baseAddress! + v0) }
    }

    func write(from start: Int, count n: Int, into page: Page, at slot: Int) {
        keys.withUnsafeBytes { page.keyRow(slot).copyMemory(from: $0.baseAddress! + start * keyRowByteCount, byteCount: n * keyRowByteCount) }
        values.withUnsafeBytes { page.valueRow(slot).copyMemory(from: $0.baseAddress! + start * valueRowByteCount, byteCount: n * valueRowByteCount) }
        for k in 0..<n { page.setPosition(positions[start + k], slot + k) }
    }
}
