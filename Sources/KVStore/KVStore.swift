import KVQuantization

/// A paged, mixed-precision KV cache for many sequences, read back through one dequantising
/// attention path.
///
/// Each sequence has one *stream* per (layer, KV head). A stream keeps its tokens in four stored
/// tiers (`Tier.fp16`, `.int8`, `.int4`, `.int2`, formats from `configuration.tierFormats(layer:)`),
/// each in pages of that tier's page capacity `P` (`configuration.pageCapacity(_:layer:)`) drawn from
/// one `PagePool`. Tokens enter at FP16 (`append`), move only down (`apply`), and are read through
/// `attend` or the row reader (`rows`/`forEachToken`), whatever tier they sit in.
///
/// Memory (exact, see `PageLayout`): a stream's bytes are Σ over its pages of
///
///     P × (keyRowBytes + valueRowBytes + 2) + keyPageParameterBytes + positionOverhead(P)
///
/// with row bytes from `StorageFormat.rowByteCount`, a 2-byte position offset per slot, and per
/// page a 4-byte base position and padding to a multiple of 16 bytes (`PagePositions`: 16 bytes at
/// P = 16, 32, 64 and 128). E.g. FP16, d = 64, P = 32: 258.5 bytes per slot (`TierFormats.pageByteCount`).
/// Every page holds its tokens in ascending position order within 65,535 positions of its first, and
/// each tier's tokens are packed greedily in position order, so a row-wise tier of n tokens holds
/// ⌈n/P⌉ pages when its positions span less than 65,536 (one page more per further 65,536
/// positions at most: a page whose next token lies further than that from its first is closed
/// early); a tier with per-channel keys keeps sealed pages (quantised once all their tokens are
/// known) plus one staging page (FP16 keys) for the rest. So each stored tier of a stream wastes at
/// most one page of slack per 65,536 positions its tokens span (`slackByteBound(layer:spanning:)`).
/// Forked sequences share pages until one of them changes a page (copy-on-write); the store's total
/// (`byteCount`) counts each page once.
///
/// Errors: a caller bug (unknown sequence, bad layer or head index, wrong buffer size, a plan that
/// names an unknown token or moves one up) traps with a message; values that cannot be stored and
/// an exhausted byte limit throw `KVStoreError`, and then the store is unchanged.
///
/// Thread safety: all methods may be called from any thread. Mutations serialise on one lock;
/// `attend` and the row reader copy the page references they need under the lock and compute
/// outside it, so reads of different sequences, and reads concurrent with appends to other
/// sequences, run in parallel.
public final class KVStore: Sendable {
    public let configuration: KVStoreConfiguration
    /// The pool every page comes from (its `bytesInUse` is `byteCount`).
    public let pool: PagePool
    /// `[layer][tier]`.
    let codecs: [[[TierCodecs]]]
    let state: StateLock<StoreState>

    struct StoreState: Sendable {
        var sequences: [SequenceID: SequenceState] = [:]
        var nextID: UInt64 = 0
    }

    struct SequenceState: Sendable {
        var layers: [LayerState]
    }

    struct LayerState: Sendable {
        var streams: [StreamState]
        /// Position of the next appended token.
        var nextPosition: Int32 = 0
    }

    /// Creates an empty store.
    ///
    /// - Throws: `KVStoreConfigurationError` naming the first invalid field.
    public init(_ configuration: KVStoreConfiguration) throws(KVStoreConfigurationError) {
        try configuration.validate()
        self.configuration = configuration
        pool = PagePool(reservationLimit: configuration.byteLimit)
        codecs = Self.codecs(configuration)
        state = StateLock(StoreState())
    }

    /// The codecs of every (layer, KV head, tier); layers with equal formats share one set.
    static func codecs(_ c: KVStoreConfiguration) -> [[[TierCodecs]]] {
        var made = [TierFormats: [[TierCodecs]]]()
        return (0..<c.layerCount).map { l in
            let f = c.tierFormats(layer: l)
            if let done = made[f] { return done }
            let heads = (0..<c.kvHeadCount).map { h in Tier.stored.map { TierCodecs(tier: $0, layer: l, kvHead: h, configuration: c) } }
            made[f] = heads
            return heads
        }
    }

    // MARK: Sequences

    /// Adds an empty sequence. O(layers · kvHeads); allocates no pages.
    public func addSequence() -> SequenceID {
        let c = configuration
        return state.withLock { s in
            let id = SequenceID(rawValue: s.nextID)
            s.nextID += 1
            s.sequences[id] = SequenceState(layers: Array(
                repeating: LayerState(streams: Array(repeating: StreamState(), count: c.kvHeadCount)),
                count: c.layerCount))
            return id
        }
    }

    /// Removes a sequence; pages no other sequence shares return to the pool. Traps on an unknown ID.
    public func removeSequence(_ id: SequenceID) {
        // Drop the pages outside the lock's closure body is not needed: the pool has its own lock.
        let removed = state.withLock { s in s.sequences.removeValue(forKey: id) }
        precondition(removed != nil, "KVStore.removeSequence: unknown sequence \(id)")
    }

    /// Forks a sequence: the new one shares every page with `id` until either changes a page
    /// (copy-on-write), as a shared prompt prefix is in serving. Allocates nothing.
    public func fork(_ id: SequenceID) -> SequenceID {
        state.withLock { s in
            guard let source = s.sequences[id] else { preconditionFailure("KVStore.fork: unknown sequence \(id)") }
            let new = SequenceID(rawValue: s.nextID)
            s.nextID += 1
            s.sequences[new] = source
            return new
        }
    }

    /// The sequences in the store, in creation order.
    public var sequences: [SequenceID] { state.withLock { $0.sequences.keys.sorted() } }

    // MARK: Plans

    /// Moves tokens down tiers as `plan` says and compacts pages, returning freed pages to the pool.
    ///
    /// Tokens moved to `.int8/.int4/.int2` are decoded from their current tier and re-encoded in
    /// the new one; tokens moved to `.dropped` are gone. Moving a token to the tier it is in is a
    /// no-op.
    ///
    /// - Throws: `KVStoreError.byteLimitExceeded` if the result would not fit (possible when the
    ///   pages are shared with a fork, which keeps the originals); the store is then unchanged.
    /// - Precondition: every named position is held by its stream, at most once, and no move goes
    ///   up a tier (caller bugs: trap with a message).
    /// - Complexity: O(tokens of the touched streams · headDim).
    public func apply(_ plan: RetentionPlan, to id: SequenceID) throws(KVStoreError) {
        let c = configuration, codecs = codecs, pool = pool
        for sp in plan.streams {
            precondition(0 <= sp.layer && sp.layer < c.layerCount, "KVStore.apply: layer \(sp.layer) outside 0..<\(c.layerCount)")
            precondition(0 <= sp.kvHead && sp.kvHead < c.kvHeadCount, "KVStore.apply: kvHead \(sp.kvHead) outside 0..<\(c.kvHeadCount)")
        }
        let failure: KVStoreError? = state.withLock { s in
            guard var sequence = s.sequences[id] else { preconditionFailure("KVStore.apply: unknown sequence \(id)") }
            s.sequences[id] = nil
            defer { s.sequences[id] = sequence }
            var prepared = [(Int, Int, PreparedMoves)]()
            var allocated = 0, freed = 0
            var seen = Set<[Int]>()
            for sp in plan.streams {
                precondition(seen.insert([sp.layer, sp.kvHead]).inserted,
                             "KVStore.apply: the plan names layer \(sp.layer) KV head \(sp.kvHead) twice")
                let p = sequence.layers[sp.layer].streams[sp.kvHead].prepare(
                    sp.moves, codecs: codecs[sp.layer][sp.kvHead], context: "sequence \(id) layer \(sp.layer) KV head \(sp.kvHead)")
                allocated += p.allocatedBytes
                freed += p.freedBytes
                prepared.append((sp.layer, sp.kvHead, p))
            }
            if let limit = c.byteLimit, allocated > freed, pool.bytesInUse + allocated - freed > limit {
                return .byteLimitExceeded(requestedBytes: allocated - freed, availableBytes: max(0, limit - pool.bytesInUse))
            }
            for (layer, head, p) in prepared {
                sequence.layers[layer].streams[head].execute(p, codecs: codecs[layer][head], rotations: LayerRotations(layer: layer, configuration: c), pool: pool)
            }
            return nil
        }
        if let failure { throw failure }
    }

    // MARK: Accounting

    /// Bytes of every page in use, each counted once (shared pages included once).
    public var byteCount: Int { pool.bytesInUse }

    /// Bytes of the pages a sequence references (a page shared with a fork counts in both).
    public func byteCount(of id: SequenceID) -> Int {
        withSequence(id, "byteCount") { $0.layers.reduce(0) { $0 + $1.streams.reduce(0) { $0 + $1.byteCount } } }
    }

    /// Bytes of one stream's pages, per stored tier.
    public func byteCounts(of id: SequenceID, layer: Int, kvHead: Int) -> [Tier: Int] {
        withStream(id, layer, kvHead, "byteCounts") { st in
            Dictionary(uniqueKeysWithValues: Tier.stored.map { ($0, st.tiers[$0.rawValue].byteCount) })
        }
    }

    /// Tokens of one stream per stored tier.
    public func tokenCounts(of id: SequenceID, layer: Int, kvHead: Int) -> [Tier: Int] {
        withStream(id, layer, kvHead, "tokenCounts") { st in
            Dictionary(uniqueKeysWithValues: Tier.stored.map { ($0, st.tiers[$0.rawValue].tokenCount) })
        }
    }

    /// Pages of one stream per stored tier (staging pages included).
    public func pageCounts(of id: SequenceID, layer: Int, kvHead: Int) -> [Tier: Int] {
        withStream(id, layer, kvHead, "pageCounts") { st in
            Dictionary(uniqueKeysWithValues: Tier.stored.map { ($0, st.tiers[$0.rawValue].pageCount) })
        }
    }

    /// The position the next token appended to `layer` of `id` gets (= tokens ever appended).
    public func nextPosition(of id: SequenceID, layer: Int) -> Int {
        withSequence(id, "nextPosition") { s in
            precondition(0 <= layer && layer < configuration.layerCount, "KVStore.nextPosition: layer \(layer) out of range")
            return Int(s.layers[layer].nextPosition)
        }
    }

    /// One stream's stored positions (ascending) and tiers, without decoding anything.
    public func tokenTiers(of id: SequenceID, layer: Int, kvHead: Int) -> (positions: [Int32], tiers: [Tier]) {
        withStream(id, layer, kvHead, "tokenTiers") { $0.positionsAndTiers() }
    }

    /// The most a stream's pages can exceed the per-token byte count a planner budgets
    /// (`TierCosts`) in any layer whose positions span less than 65,536: the largest
    /// `slackByteBound(layer:)`.
    public var slackByteBoundPerStream: Int {
        (0..<configuration.layerCount).map { slackByteBound(layer: $0) }.max()!
    }

    /// The most a stream of `layer` can exceed the per-token byte count a planner budgets
    /// (`TierCosts`, each tier's page capacity): one partly filled page per stored tier, where a
    /// tier with per-channel keys counts its staging page (FP16 keys), the larger of its two
    /// layouts; and, for tokens spanning `positionSpan` positions (last − first + 1), one page more
    /// per tier for every 65,536 positions beyond the first (pages closed early by the span rule).
    public func slackByteBound(layer: Int, spanning positionSpan: Int = 1) -> Int {
        precondition(0 <= layer && layer < configuration.layerCount, "KVStore.slackByteBound: layer \(layer) outside 0..<\(configuration.layerCount)")
        let pagesPerTier = 1 + max(0, positionSpan - 1) / (PagePositions.maxSpan + 1)
        return codecs[layer][0].reduce(0) { $0 + pagesPerTier * max($1.layout.byteCount, $1.stagingLayout?.byteCount ?? 0) }
    }

    /// Bytes of one stream's pages.
    public func byteCount(of id: SequenceID, layer: Int, kvHead: Int) -> Int {
        withStream(id, layer, kvHead, "byteCount") { $0.byteCount }
    }

    func withSequence<R>(_ id: SequenceID, _ caller: String, _ body: (SequenceState) -> R) -> R {
        let s = state.withLock { $0.sequences[id] }
        guard let s else { preconditionFailure("KVStore.\(caller): unknown sequence \(id)") }
        return body(s)
    }

    func withStream<R>(_ id: SequenceID, _ layer: Int, _ kvHead: Int, _ caller: String, _ body: (StreamState) -> R) -> R {
        let c = configuration
        precondition(0 <= layer && layer < c.layerCount, "KVStore.\(caller): layer \(layer) outside 0..<\(c.layerCount)")
        precondition(0 <= kvHead && kvHead < c.kvHeadCount, "KVStore.\(caller): kvHead \(kvHead) outside 0..<\(c.kvHeadCount)")
        return withSequence(id, caller) { body($0.layers[layer].streams[kvHead]) }
    }
}
