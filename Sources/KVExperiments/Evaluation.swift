import Dispatch
import Foundation
import KVQuantization
import KVSelection
import KVCompression
import KVStore
import Synchronization

/// The protocol's fixed parts: windows, pages and formats (the sinks and recent window belong to
/// each configuration's policy: `EvaluationConfiguration.regions`).
public struct EvaluationSettings: Sendable, Hashable {
    /// Observation window W: the last W prompt queries score the prompt (default 32).
    public var observationWindow: Int
    /// Evaluation queries E: the prompt is the first T − E tokens (default 32, as in evaluation.md).
    public var evaluationQueryCount: Int
    /// Store page capacity (default 32).
    public var pageCapacity: Int
    /// Tier formats (default `.standard`: per-channel keys, grouped values).
    public var tierFormats: TierFormats
    /// Threads for independent configurations and reference rows (`nil`: all cores).
    public var threadCount: Int?

    public init(observationWindow: Int = 32, evaluationQueryCount: Int = 32,
                pageCapacity: Int = 32, tierFormats: TierFormats = .standard, threadCount: Int? = nil) {
        self.observationWindow = observationWindow
        self.evaluationQueryCount = evaluationQueryCount
        self.pageCapacity = pageCapacity
        self.tierFormats = tierFormats
        self.threadCount = threadCount
    }
}

/// The attention-level protocol of `evaluation.md` on one KV dump.
///
/// With T tokens and E evaluation queries, the prompt is positions `0 ..< P`, `P = T − E`:
/// 1. the prompt of every loaded layer is appended to a `KVStore` at FP16;
/// 2. it is compressed: budgeted policies through `KVCompressor.compressPrefill`, scored only by
///    the observation-window queries `P − W ..< P` (causal, over keys `0 ..< P`), within
///    `budget · (P · FP16 token bytes)` per stream (sinks and window included); `uniform-*` moves
///    every prompt token to its tier; `full` does nothing;
/// 3. the prompt cache's exact bytes and tiers are read from the store;
/// 4. tokens `P ..< T` are appended at FP16 and the evaluation queries at `P ..< T` attend in one
///    call, each over the compressed prompt and the new tokens up to its own position;
/// 5. each output is compared with the reference: FP64 attention over the dump's uncompressed
///    values (scale 1/√headDim, softmax), computed once per layer.
///
/// The new tokens are stored at FP16, so they are "exact" up to FP16 rounding, as in a runtime
/// whose cache is FP16; so is the `full` policy (its error is FP16 rounding of the keys and values,
/// plus FP32 arithmetic).
public struct Evaluation: Sendable {
    public let dump: KVDump
    public let settings: EvaluationSettings
    /// P.
    public let promptTokenCount: Int
    let references: [LayerReference]

    /// The reference attention of one layer's evaluation queries.
    struct LayerReference: Sendable {
        /// `[head][query][headDim]`.
        var outputs: [Double]
        /// `[head][query][P]`: weights on prompt tokens.
        var promptWeights: [Double]
    }

    /// Checks the settings against the dump and computes the reference attention.
    ///
    /// - Throws: `EvaluationError.invalidSetting` or `.notEnoughQueries`.
    /// - Complexity: O(layers · heads · E · T · headDim).
    public init(dump: KVDump, settings: EvaluationSettings = EvaluationSettings()) throws(EvaluationError) {
        let s = dump.shape
        guard settings.evaluationQueryCount > 0 else { throw .invalidSetting("evaluation queries", "must be positive") }
        guard settings.observationWindow > 0 else { throw .invalidSetting("--window", "must be positive") }
        let p = s.tokenCount - settings.evaluationQueryCount
        guard p - settings.observationWindow >= s.queryStart else {
            throw .notEnoughQueries(neededFrom: p - settings.observationWindow, queryStart: s.queryStart)
        }
        let probe = KVStoreConfiguration(layerCount: 1, queryHeadCount: s.headCount, kvHeadCount: s.kvHeadCount, headDim: s.headDim,
                                         pageCapacity: settings.pageCapacity, tierFormats: settings.tierFormats)
        do { try probe.validate() } catch { throw .invalidSetting("store", error.description) }
        self.dump = dump
        self.settings = settings
        promptTokenCount = p
        let e = settings.evaluationQueryCount, d = s.headDim, h = s.headCount, layerCount = dump.layers.count
        let scale = 1 / Double(d).squareRoot()
        let units = layerCount * h
        let outputs = Mutex([[Double]](repeating: [], count: units)), weights = Mutex([[Double]](repeating: [], count: units))
        let layers = dump.layers
        Self.parallel(units, threads: settings.threadCount) { u in
            let layer = layers[u / h], head = u % h, kv = s.kvHead(forQueryHead: head)
            var out = [Double](repeating: 0, count: e * d), w = [Double](repeating: 0, count: e * p)
            var scores = [Double](repeating: 0, count: s.tokenCount)
            let q0 = layer.queryOffset(head: head, position: p), k0 = layer.kvOffset(kvHead: kv, token: 0)
            for i in 0..<e {
                let visible = layer.visibleRange(queryPosition: p + i)
                var m = -Double.infinity
                for j in visible {
                    var dot = 0.0
                    for c in 0..<d { dot += Double(layer.queries[q0 + i * d + c]) * Double(layer.keys[k0 + j * d + c]) }
                    scores[j] = dot * scale
                    m = max(m, scores[j])
                }
                var total = 0.0
                for j in visible { scores[j] = Foundation.exp(scores[j] - m); total += scores[j] }
                for j in visible {
                    let wj = scores[j] / total
                    if j < p { w[i * p + j] = wj }
                    for c in 0..<d { out[i * d + c] += wj * Double(layer.values[k0 + j * d + c]) }
                }
            }
            outputs.withLock { $0[u] = out }
            weights.withLock { $0[u] = w }
        }
        let o = outputs.withLock { $0 }, w = weights.withLock { $0 }
        references = (0..<layerCount).map { l in
            LayerReference(outputs: (0..<h).flatMap { o[l * h + $0] }, promptWeights: (0..<h).flatMap { w[l * h + $0] })
        }
    }

    /// Runs `body(0 ..< count)` on up to `threads` threads (all cores when `nil`).
    static func parallel(_ count: Int, threads: Int?, _ body: @Sendable (Int) -> Void) {
        let t = max(1, min(threads ?? ProcessInfo.processInfo.activeProcessorCount, count))
        if t == 1 { for i in 0..<count { body(i) }; return }
        // Thread k takes items k, k + t, k + 2t, …
        DispatchQueue.concurrentPerform(iterations: t) { k in
            var i = k
            while i < count { body(i); i += t }
        }
    }

    /// `[kvHead][token][headDim]` rows of `data` for `tokens`.
    func rows(_ data: [Float], _ tokens: Range<Int>) -> [Float] {
        let s = dump.shape, d = s.headDim
        var out = [Float]()
        out.reserveCapacity(s.kvHeadCount * tokens.count * d)
        for h in 0..<s.kvHeadCount {
            out.append(contentsOf: data[((h * s.tokenCount + tokens.lowerBound) * d) ..< ((h * s.tokenCount + tokens.upperBound) * d)])
        }
        return out
    }

    /// The store configuration a run uses: one store layer per loaded dump layer.
    public var storeConfiguration: KVStoreConfiguration {
        let s = dump.shape
        let windows = dump.layers.map(\.slidingWindow)
        return KVStoreConfiguration(layerCount: dump.layers.count, queryHeadCount: s.headCount, kvHeadCount: s.kvHeadCount,
                                    headDim: s.headDim, pageCapacity: settings.pageCapacity, tierFormats: settings.tierFormats,
                                    layerSlidingWindows: windows.contains { $0 != nil } ? windows : nil)
    }

    /// Checks a configuration against the prompt: its sinks and recent window must fit in it.
    ///
    /// - Throws: `EvaluationError.invalidSetting`.
    public func validate(_ configuration: EvaluationConfiguration) throws(EvaluationError) {
        let r = configuration.regions, protected = r.sinkTokenCount + r.recentTokenCount
        guard protected <= promptTokenCount else {
            throw .invalidSetting("--sinks/--recent", "sinks + recent window (\(protected)) exceed the prompt (\(promptTokenCount) tokens)")
        }
    }

    /// Runs one configuration: its overall result, then one per layer.
    ///
    /// - Throws: `EvaluationError.compression` (e.g. a budget below sinks + window), `.store`.
    public func run(_ configuration: EvaluationConfiguration) throws(EvaluationError) -> [EvaluationResult] {
        let s = dump.shape, d = s.headDim, p = promptTokenCount, e = settings.evaluationQueryCount
        let w = settings.observationWindow, layerCount = dump.layers.count
        try validate(configuration)
        // A preset brings its own store (page capacity, INT4 formats, rotation).
        let storeConfiguration = configuration.preset.map { $0.configure(self.storeConfiguration) } ?? self.storeConfiguration
        let store: KVStore
        do { store = try KVStore(storeConfiguration) } catch { throw .invalidSetting("store", error.description) }
        let id = store.addSequence()
        // A windowed layer then releases what no later query can see, as a model's prefill does: what
        // it still holds uncompressed is its FP16 reference (bytes and tier shares), as in `run`.
        var referenceTokens = [Int](repeating: p, count: layerCount)
        do {
            for (l, layer) in dump.layers.enumerated() {
                try store.append(id, layer: l, keys: rows(layer.keys, 0..<p), values: rows(layer.values, 0..<p))
                if layer.slidingWindow != nil {
                    store.releaseOutsideWindow(id, layer: l)
                    referenceTokens[l] = store.tokenCounts(of: id, layer: l, kvHead: 0).values.reduce(0, +)
                }
            }
        } catch { throw .store(error.description) }

        func failed(_ message: String) -> EvaluationError {
            .compression(configuration: configuration.label, budget: configuration.budget, message: message)
        }
        let window = (p - w)..<p
        let observation = ObservationWindow(
            positions: window.map { Int32($0) },
            queries: dump.layers.map { layer in (0..<s.headCount).flatMap { h in window.flatMap { layer.query(head: h, position: $0) } } })
        do { _ = try configuration.cachePolicy.apply(to: id, in: store, observation: observation) } catch { throw failed(error.description) }

        // The compressed prompt cache: bytes, tiers, which tokens are still stored.
        // FP16 in whole pages of the FP16 tier's own capacity (a preset may give it smaller pages).
        let costs = TierCosts(formats: storeConfiguration.tierFormats, headDim: d, pageCapacity: storeConfiguration.pageCapacity)
        let fp16PerStream = referenceTokens.map { costs.pagedByteCount(.fp16, tokenCount: $0) }
        var layerBytes = [Int](repeating: 0, count: layerCount)
        var layerTiers = [[Tier: Int]](repeating: [:], count: layerCount)
        var stored = [[[Bool]]]()  // [layer][kvHead][prompt token]
        for l in 0..<layerCount {
            var perHead = [[Bool]]()
            var counts: [Tier: Int] = [.fp16: 0, .int8: 0, .int4: 0, .int2: 0, .dropped: 0]
            for h in 0..<s.kvHeadCount {
                layerBytes[l] += store.byteCount(of: id, layer: l, kvHead: h)
                let t = store.tokenTiers(of: id, layer: l, kvHead: h)
                var mask = [Bool](repeating: false, count: p)
                for (pos, tier) in zip(t.positions, t.tiers) { mask[Int(pos)] = true; counts[tier, default: 0] += 1 }
                counts[.dropped, default: 0] += max(0, referenceTokens[l] - t.positions.count)
                perHead.append(mask)
            }
            layerTiers[l] = counts
            stored.append(perHead)
        }

        // Evaluation queries over the compressed prompt plus the exact new tokens.
        var errors = [[Double]](repeating: [], count: layerCount), masses = errors
        let queryPositions = (p..<s.tokenCount).map { Int32($0) }
        for (l, layer) in dump.layers.enumerated() {
            do { try store.append(id, layer: l, keys: rows(layer.keys, p..<s.tokenCount), values: rows(layer.values, p..<s.tokenCount)) } catch {
                throw .store(error.description)
            }
            let q = (0..<s.headCount).flatMap { h in (p..<s.tokenCount).flatMap { layer.query(head: h, position: $0) } }
            let out = store.attend(id, layer: l, queries: q, queryCount: e, queryPositions: queryPositions, threadCount: 1).output
            let ref = references[l]
            for h in 0..<s.headCount {
                let mask = stored[l][s.kvHead(forQueryHead: h)]
                for i in 0..<e {
                    let o = (h * e + i) * d
                    var num = 0.0, den = 0.0
                    for c in 0..<d {
                        let diff = Double(out[o + c]) - ref.outputs[o + c]
                        num += diff * diff
                        den += ref.outputs[o + c] * ref.outputs[o + c]
                    }
                    errors[l].append(den == 0 ? num.squareRoot() : (num / den).squareRoot())
                    var lost = 0.0
                    let wo = (h * e + i) * p
                    for j in 0..<p where !mask[j] { lost += ref.promptWeights[wo + j] }
                    masses[l].append(1 - lost)
                }
            }
        }

        func result(layer: Int?, errors: [Double], masses: [Double], bytes: Int, fp16: Int, tiers: [Tier: Int]) -> EvaluationResult {
            let m = EvaluationResult.summarise(errors: errors, masses: masses)
            let k = configuration.kvCrush
            return EvaluationResult(policy: configuration.name, budget: configuration.budget, crushShare: k?.share,
                                    representativeTier: k?.representativeTier, anchor: k.map { KVCrushSettings.name(of: $0.anchor) },
                                    layer: layer, relErrMean: m.mean, relErrP95: m.p95, relErrMax: m.max, massKept: m.mass,
                                    byteCount: bytes, fp16ByteCount: fp16, tokenCounts: tiers)
        }
        var all: [Tier: Int] = [:]
        for t in layerTiers { all.merge(t, uniquingKeysWith: +) }
        var out = [result(layer: nil, errors: errors.flatMap { $0 }, masses: masses.flatMap { $0 }, bytes: layerBytes.reduce(0, +),
                          fp16: fp16PerStream.reduce(0, +) * s.kvHeadCount, tiers: all)]
        for (l, layer) in dump.layers.enumerated() {
            out.append(result(layer: layer.index, errors: errors[l], masses: masses[l], bytes: layerBytes[l],
                              fp16: fp16PerStream[l] * s.kvHeadCount, tiers: layerTiers[l]))
        }
        return out
    }

    /// Runs every configuration (in parallel), reporting each one finished to `progress`
    /// (`finished`, `total`, the configuration), and collects the results in configuration order.
    ///
    /// - Throws: the first configuration's error, in configuration order.
    public func run(_ configurations: [EvaluationConfiguration], dumpName: String,
                    progress: (@Sendable (Int, Int, EvaluationConfiguration) -> Void)? = nil) throws(EvaluationError) -> EvaluationReport {
        let outcomes = Mutex([Result<[EvaluationResult], EvaluationError>?](repeating: nil, count: configurations.count))
        let finished = Atomic<Int>(0)
        let total = configurations.count
        Self.parallel(total, threads: settings.threadCount) { i in
            let r = Result { () throws(EvaluationError) in try run(configurations[i]) }
            outcomes.withLock { $0[i] = r }
            let n = finished.add(1, ordering: .relaxed).newValue
            progress?(n, total, configurations[i])
        }
        var results: [EvaluationResult] = []
        for r in outcomes.withLock({ $0 }) { results += try r!.get() }
        return EvaluationReport(dumpName: dumpName, model: dump.model, layers: dump.layerIndices, promptTokenCount: promptTokenCount,
                                observationWindow: settings.observationWindow, evaluationQueryCount: settings.evaluationQueryCount,
                                results: results)
    }
}

