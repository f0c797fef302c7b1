import CKVCrush
import KVCrush

// Compression and decode sessions of kvcrush.h.

/// What a `kvcrush_session *` points to: a decode session and the store handle it keeps alive.
final class SessionHandle: @unchecked Sendable {
    let store: StoreHandle
    var session: KVCompressor.DecodeSession

    init(store: StoreHandle, session: KVCompressor.DecodeSession) {
        self.store = store
        self.session = session
    }

    static func from(_ pointer: OpaquePointer?) throws(CFailure) -> SessionHandle {
        guard let pointer else { throw .null("session") }
        return Unmanaged<SessionHandle>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
    }
}

/// The cache policy `name` means at `budget`, as `kvcrush run` reads it (KVCrush settings: share
/// 0.3, INT4 representatives, the alternate anchor), or a preset's (`preset:NAME`).
func cachePolicy(named name: String, budget: Double) throws(CFailure) -> CachePolicy {
    guard budget.isFinite && budget >= 0 else { throw .policy("budget must be finite and >= 0, got \(budget)") }
    if name.hasPrefix("preset:") {
        guard let preset = CompressionPreset.named(name) else {
            throw .policy("unknown preset '\(name)' (expected preset: and one of \(CompressionPreset.all.map(\.name).joined(separator: ", ")))")
        }
        var p = preset.policy()
        if budget > 0, case .compress(var s) = p.action {
            s.budget = .fraction(budget)
            p.action = .compress(s)
        }
        return p
    }
    let parsed: PolicyName
    do { parsed = try PolicyName(parsing: name) } catch { throw .policy(error.description) }
    return parsed.cachePolicy(budget: budget, kvCrush: parsed.usesKVCrush
                              ? KVCrushSettings(share: 0.3, representativeTier: .int4, anchor: .alternate) : nil)
}

@_cdecl("kvcrush_compress")
public func kvcrushCompress(_ store: OpaquePointer?, _ sequence: UInt64, _ policy: UnsafePointer<CChar>?, _ budget: Double,
                            _ observationQueries: UnsafePointer<UnsafePointer<Float>?>?, _ observationElementCount: Int,
                            _ observationCount: Int, _ session: UnsafeMutablePointer<OpaquePointer?>?) -> kvcrush_status {
    cCall("kvcrush_compress") { () throws(CFailure) in
        let h = try StoreHandle.from(store), c = h.store.configuration
        let policy = try cachePolicy(named: String(cString: try required(policy, "policy")), budget: budget)
        guard observationCount >= 0 && observationCount <= Int(Int32.max) else { throw .argument("observation_count \(observationCount) is out of range") }
        var queries = [[Float]]()
        if observationCount > 0 {
            let pointers = try required(observationQueries, "observation_queries (with a non-zero observation_count)")
            for l in 0..<c.layerCount {
                let q = try InputBuffer(pointers[l].map(UnsafeRawPointer.init), "observation_queries[\(l)]",
                                        elementCount: observationElementCount, heads: c.queryHeadCount, tokens: observationCount,
                                        headDim: c.headDim, dtype: KVCRUSH_F32, layout: KVCRUSH_LAYOUT_HEAD_MAJOR)
                try q.checkQueries("observation_queries[\(l)]", c)
                queries.append(q.headMajorArray())
            }
        }
        let made: KVCompressor.DecodeSession? = try h.writing { () throws(CFailure) in
            let id = try h.sequence(sequence)
            if case .keep = policy.action { return Optional<KVCompressor.DecodeSession>.none }
            // The policies' preconditions, checked: a fresh prefill of the same n >= 1 tokens in every
            // layer, all at FP16, and an observation window inside it when the policy scores.
            let n = h.store.nextPosition(of: id, layer: 0)
            guard n > 0 else { throw .state("sequence \(sequence) is empty: compress after the prompt is appended") }
            for l in 0..<c.layerCount {
                let nl = h.store.nextPosition(of: id, layer: l)
                guard nl == n else { throw .state("layer \(l) holds \(nl) tokens, layer 0 \(n): every layer must hold the prompt") }
                for kv in 0..<c.kvHeadCount where h.store.tokenCounts(of: id, layer: l, kvHead: kv)[.fp16] != n {
                    throw .state("layer \(l) KV head \(kv) is not a fresh FP16 prefill (was the sequence compressed already?)")
                }
            }
            guard observationCount <= n else { throw .argument("observation_count \(observationCount) exceeds the \(n) prompt tokens") }
            if let s = policy.compressionSettings, KVCompressor(store: h.store, settings: s).needsObservation, observationCount == 0 {
                throw .policy("'\(policy.name)' scores tokens by attention: give observation queries (the prompt's last, e.g. 32)")
            }
            let window = ObservationWindow(positions: ((n - observationCount)..<n).map { Int32($0) }, queries: queries)
            do throws(CompressionError) {
                return try policy.apply(to: id, in: h.store, observation: window, keepingBudgetDuringDecode: session != nil)
            } catch {
                switch error {
                case .store(.byteLimitExceeded): throw CFailure(status: KVCRUSH_ERROR_BYTE_LIMIT, message: error.description)
                case .store: throw .value(error.description)
                case .selection: throw .policy(error.description)
                }
            }
        }
        session?.pointee = made.map { OpaquePointer(Unmanaged.passRetained(SessionHandle(store: h, session: $0)).toOpaque()) }
    }
}

@_cdecl("kvcrush_session_attend")
public func kvcrushSessionAttend(_ session: OpaquePointer?, _ layer: Int32, _ queries: UnsafeRawPointer?, _ queryElementCount: Int,
                                 _ queryCount: Int, _ dtype: kvcrush_dtype, _ layout: kvcrush_layout,
                                 _ output: UnsafeMutablePointer<Float>?, _ outputElementCount: Int) -> kvcrush_status {
    cCall("kvcrush_session_attend") { () throws(CFailure) in
        let s = try SessionHandle.from(session), h = s.store, c = h.store.configuration
        let call = try AttendCall(c, queries: queries, queryElementCount: queryElementCount, queryCount: queryCount, dtype: dtype,
                                  layout: layout, output: output, outputElementCount: outputElementCount)
        let (l, weights) = try h.reading { () throws(CFailure) in
            let id = try h.sequence(s.session.sequence.rawValue), l = try h.layer(layer)
            let length = h.store.nextPosition(of: id, layer: l)
            return (l, call.attend(h.store, id, layer: l, positions: Array(repeating: Int32(length) - 1, count: queryCount),
                                   weights: nil, returnWeights: true, threadCount: h.attendThreads)!)
        }
        // Finite queries can still overflow a score (|q.k| beyond Float's range): such weights are not
        // scores, and the session's accumulator refuses them by trapping. (The output may hold them:
        // kvcrush.h lets a failed attend leave partial results.)
        guard weights.allSatisfy({ $0.weights.allSatisfy(\.isFinite) }) else {
            throw .value("the attention weights are not finite (query.key overflows FP32): queries too large")
        }
        s.session.record(layer: l, weights: weights)
    }
}

@_cdecl("kvcrush_session_appended")
public func kvcrushSessionAppended(_ session: OpaquePointer?, _ layer: Int32, _ tokenCount: Int) -> kvcrush_status {
    cCall("kvcrush_session_appended") { () throws(CFailure) in
        let s = try SessionHandle.from(session), h = s.store
        guard tokenCount >= 0 && tokenCount <= Int(Int32.max) else { throw .argument("token_count must be in 0...\(Int32.max), got \(tokenCount)") }
        try h.writing { () throws(CFailure) in
            _ = try h.sequence(s.session.sequence.rawValue)
            let l = try h.layer(layer)
            var copy = s.session  // commit only on success: a failed re-plan leaves the session as it was
            do throws(CompressionError) { try copy.appended(layer: l, count: tokenCount) } catch {
                switch error {
                case .store(.byteLimitExceeded): throw CFailure(status: KVCRUSH_ERROR_BYTE_LIMIT, message: error.description)
                case .store: throw .value(error.description)
                case .selection: throw .policy(error.description)
                }
            }
            s.session = copy
        }
    }
}

@_cdecl("kvcrush_session_info")
public func kvcrushSessionInfo(_ session: OpaquePointer?, _ sequence: UnsafeMutablePointer<UInt64>?,
                               _ replanCount: UnsafeMutablePointer<Int64>?) -> kvcrush_status {
    cCall("kvcrush_session_info") { () throws(CFailure) in
        let s = try SessionHandle.from(session)
        sequence?.pointee = s.session.sequence.rawValue
        replanCount?.pointee = Int64(s.session.replanCount)
    }
}

@_cdecl("kvcrush_session_destroy")
public func kvcrushSessionDestroy(_ session: OpaquePointer?) {
    guard let session else { return }
    Unmanaged<SessionHandle>.fromOpaque(UnsafeRawPointer(session)).release()
}
