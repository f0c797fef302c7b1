import CKVKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#elseif canImport(ucrt)
import ucrt
#endif

/// Which implementation of the hot kernels runs: the x86-64 C kernels of `CKVKernels` (AVX-512 or
/// AVX2) or the Swift code every CPU runs.
///
/// Chosen once per process, as `current`: the first path in `allCases` (fastest first: avx512,
/// avx2, portable) whose `requiredFeatures` this CPU has, unless the environment variable
/// `KVCRUSH_KERNELS` names one (`avx512`, `avx2` or `portable`: raw values, exactly). The choice
/// decides every kernel call: the append path's value check and FP16 conversion, exp and softmax,
/// key scores and value accumulation. With `portable` nothing runs outside Swift, on any CPU; this
/// is how the fallbacks run end to end (`KVCRUSH_KERNELS=portable swift test`).
///
/// Which optional kernels of a path run (VNNI scores, integer values, the AVX2 kernels for shapes
/// the AVX-512 ones do not take) follows from the path and the CPU's features: see `KernelSet`.
///
/// To add a path, add a case in its place in the order of preference, its `requiredFeatures`, and
/// the kernels it runs in `KernelSet` and `PageKernels+Dispatch.swift`.
public enum KernelPath: String, Sendable, CaseIterable, CustomStringConvertible {
    /// The AVX-512 C kernels (x86-64 with AVX-512 F/BW/VL/DQ, F16C and FMA), with the VNNI and
    /// VBMI ones where the CPU has those too, and the AVX2 kernels for the shapes the AVX-512 ones
    /// do not take.
    case avx512
    /// The AVX2 C kernels (x86-64 with AVX2, F16C and FMA): every x86-64 CPU since about 2013–2015.
    case avx2
    /// Swift only: SIMD code and the scalar reference twins, on any CPU.
    case portable

    /// The name of the environment variable that forces a path: `KVCRUSH_KERNELS`.
    public static let environmentVariable = "KVCRUSH_KERNELS"

    /// The CPU features without which the path cannot run.
    public var requiredFeatures: CPUFeatures {
        switch self {
        case .avx512: .avx512
        case .avx2: .avx2
        case .portable: []
        }
    }

    /// The paths a CPU with `features` can run, fastest first (`portable` always, last).
    public static func available(on features: CPUFeatures) -> [KernelPath] {
        allCases.filter { features.isSuperset(of: $0.requiredFeatures) }
    }

    /// The path of a process with this `environment` on a CPU with `features`: the value of
    /// `KVCRUSH_KERNELS` when it is set (and not empty), else the fastest available path.
    ///
    /// - Throws: `KernelPathError.unknownPath` when the value names no path,
    ///   `.unavailablePath` when it names one this CPU cannot run. Both messages name the value
    ///   and the choices.
    public static func resolve(environment: [String: String], features: CPUFeatures) throws(KernelPathError) -> KernelPath {
        let choices = available(on: features)
        guard let value = environment[environmentVariable], !value.isEmpty else { return choices[0] }
        guard let path = KernelPath(rawValue: value) else { throw .unknownPath(value, available: choices) }
        guard choices.contains(path) else {
            throw .unavailablePath(path, missing: path.requiredFeatures.subtracting(features), available: choices)
        }
        return path
    }

    /// `resolve` for this process: its `KVCRUSH_KERNELS` and this CPU. The command line calls it at
    /// startup to report a bad value before any kernel runs.
    public static func resolveForThisProcess() throws(KernelPathError) -> KernelPath {
        var environment = [String: String]()
        if let v = getenv(environmentVariable) { environment[environmentVariable] = String(cString: v) }
        return try resolve(environment: environment, features: .detected)
    }

    /// The path of this process, chosen on first use (see the type). A bad `KVCRUSH_KERNELS` traps
    /// then, with the message of `KernelPathError`.
    public static let current: KernelPath = {
        do { return try resolveForThisProcess() } catch { fatalError("\(error)") }
    }()

    public var description: String { rawValue }
}

/// A `KVCRUSH_KERNELS` value the process cannot run.
public enum KernelPathError: Error, Equatable, CustomStringConvertible {
    /// The value names no `KernelPath`; `available` lists this CPU's choices.
    case unknownPath(String, available: [KernelPath])
    /// The value names a path this CPU cannot run (it lacks `missing`).
    case unavailablePath(KernelPath, missing: CPUFeatures, available: [KernelPath])

    public var description: String {
        let name = KernelPath.environmentVariable
        switch self {
        case .unknownPath(let value, let available):
            return "\(name)=\(value): unknown kernel path; the choices are \(KernelPath.allCases.map(\.rawValue).joined(separator: ", "))"
                + " (this CPU runs \(available.map(\.rawValue).joined(separator: ", ")))"
        case .unavailablePath(let path, let missing, let available):
            return "\(name)=\(path): this CPU lacks \(missing); the choices here are \(available.map(\.rawValue).joined(separator: ", "))"
        }
    }
}

/// CPU features the C kernels are compiled for (one bit per target attribute set of `CKVKernels`),
/// as the CPU and operating system report them (`detected`; empty on other architectures than x86-64).
public struct CPUFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// AVX-512 F, BW, VL and DQ, with F16C and FMA: what every AVX-512 kernel needs.
    public static let avx512 = CPUFeatures(rawValue: KVK_CPU_AVX512)
    /// AVX512-VNNI (`vpdpbusd`).
    public static let avx512VNNI = CPUFeatures(rawValue: KVK_CPU_AVX512_VNNI)
    /// AVX512-VBMI (byte permutes).
    public static let avx512VBMI = CPUFeatures(rawValue: KVK_CPU_AVX512_VBMI)
    /// AVX2 with F16C and FMA: the AVX2 kernels.
    public static let avx2 = CPUFeatures(rawValue: KVK_CPU_AVX2)

    /// This CPU's features (`kvk_cpu_features`), probed once.
    public static let detected = CPUFeatures(rawValue: kvk_cpu_features())

    public var description: String {
        let names: [(CPUFeatures, String)] = [(.avx512, "AVX-512 F/BW/VL/DQ with F16C and FMA"), (.avx512VNNI, "AVX512-VNNI"),
                                              (.avx512VBMI, "AVX512-VBMI"), (.avx2, "AVX2 with F16C and FMA")]
        let present = names.filter { contains($0.0) }.map(\.1)
        return present.isEmpty ? "none" : present.joined(separator: ", ")
    }
}

/// The kernels that run: a path, and which of its optional kernels the CPU allows.
///
/// Derived, never chosen on its own: the VNNI scores of per-channel keys need the `avx512` path and
/// AVX512-VNNI; the integer-domain value accumulation needs `avx512`, AVX512-VNNI and VBMI; the
/// AVX2 kernels run on the `avx2` path, and on the `avx512` path (a CPU with AVX-512 has AVX2) for
/// the shapes the AVX-512 kernels do not take. With `portable` none of them runs. Every kernel
/// entry (`PageKernels`, the append path) asks `KernelSet.current`; the store's per-tier choice
/// (`KeyScoring`, `ValueAccumulation`) is made from it too.
public struct KernelSet: Sendable, Hashable, CustomStringConvertible {
    /// The path.
    public let path: KernelPath
    /// Whether the integer-domain VNNI scores of per-channel keys run (`scoresChannelwiseVNNI`).
    public let vnniScores: Bool
    /// Whether the integer-domain value accumulation runs (`accumulateInteger`).
    public let integerValues: Bool
    /// Whether the AVX2 C kernels run (where the AVX-512 ones do not).
    public let avx2: Bool

    /// The kernels of `path` on a CPU with `features`. (A path the CPU cannot run describes what it
    /// would run; only `current` decides what runs.)
    public init(path: KernelPath, features: CPUFeatures) {
        self.path = path
        let avx512 = path == .avx512 && features.contains(.avx512)
        vnniScores = avx512 && features.contains(.avx512VNNI)
        integerValues = avx512 && features.isSuperset(of: [.avx512VNNI, .avx512VBMI])
        avx2 = (path == .avx2 || path == .avx512) && features.contains(.avx2)
    }

    /// Whether the AVX-512 C kernels run.
    public var avx512: Bool { path == .avx512 }

    /// The kernels of this process: `KernelPath.current` on this CPU.
    public static let current = KernelSet(path: .current, features: .detected)

    /// Nothing accelerated.
    public static let portable = KernelSet(path: .portable, features: [])

    /// E.g. "avx512 (VNNI scores, integer values)", "portable".
    public var description: String {
        let extras = [vnniScores ? "VNNI scores" : nil, integerValues ? "integer values" : nil].compactMap { $0 }
        return extras.isEmpty ? path.rawValue : "\(path.rawValue) (\(extras.joined(separator: ", ")))"
    }
}
