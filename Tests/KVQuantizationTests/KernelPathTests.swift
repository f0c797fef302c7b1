import Foundation
import Testing
@testable import KVQuantization

/// The choice of the kernel path: `KVCRUSH_KERNELS` and the CPU's features.
@Suite struct KernelPathTests {
    static let everything: CPUFeatures = [.avx512, .avx512VNNI, .avx512VBMI, .avx2]

    @Test func defaultIsTheFastestAvailablePath() throws {
        #expect(try KernelPath.resolve(environment: [:], features: Self.everything) == .avx512)
        #expect(try KernelPath.resolve(environment: [:], features: [.avx2]) == .avx2)
        #expect(try KernelPath.resolve(environment: [:], features: [.avx512VNNI]) == .portable)
        #expect(try KernelPath.resolve(environment: [:], features: []) == .portable)
        // Set but empty counts as unset; other variables are ignored.
        #expect(try KernelPath.resolve(environment: ["KVCRUSH_KERNELS": "", "KVCRUSH_MODEL": "x"], features: Self.everything) == .avx512)
        #expect(KernelPath.available(on: Self.everything) == [.avx512, .avx2, .portable])
        #expect(KernelPath.available(on: [.avx2]) == [.avx2, .portable])
        #expect(KernelPath.available(on: []) == [.portable])
    }

    @Test func validValuesForceThePath() throws {
        for path in KernelPath.allCases {
            #expect(try KernelPath.resolve(environment: ["KVCRUSH_KERNELS": path.rawValue], features: Self.everything) == path)
        }
        #expect(try KernelPath.resolve(environment: ["KVCRUSH_KERNELS": "portable"], features: []) == .portable)
    }

    @Test func unknownValueNamesTheValueAndTheChoices() {
        for value in ["bogus", "AVX512", "avx-512", " portable"] {
            #expect(throws: KernelPathError.unknownPath(value, available: [.avx512, .avx2, .portable])) {
                try KernelPath.resolve(environment: ["KVCRUSH_KERNELS": value], features: Self.everything)
            }
        }
        let message = "\(KernelPathError.unknownPath("bogus", available: [.portable]))"
        #expect(message == "KVCRUSH_KERNELS=bogus: unknown kernel path; the choices are avx512, avx2, portable (this CPU runs portable)")
    }

    @Test func unavailablePathNamesWhatIsMissing() {
        #expect(throws: KernelPathError.unavailablePath(.avx512, missing: .avx512, available: [.avx2, .portable])) {
            try KernelPath.resolve(environment: ["KVCRUSH_KERNELS": "avx512"], features: [.avx2, .avx512VNNI])
        }
        #expect(throws: KernelPathError.unavailablePath(.avx2, missing: .avx2, available: [.portable])) {
            try KernelPath.resolve(environment: ["KVCRUSH_KERNELS": "avx2"], features: [.avx512VNNI])
        }
        let message = "\(KernelPathError.unavailablePath(.avx512, missing: .avx512, available: [.portable]))"
        #expect(message == "KVCRUSH_KERNELS=avx512: this CPU lacks AVX-512 F/BW/VL/DQ with F16C and FMA; the choices here are portable")
    }

    /// The optional kernels follow from the path and the features.
    @Test func kernelSetIsDerivedFromThePath() {
        let all = KernelSet(path: .avx512, features: Self.everything)
        #expect(all.avx512 && all.vnniScores && all.integerValues)
        #expect("\(all)" == "avx512 (VNNI scores, integer values)")
        let vnniOnly = KernelSet(path: .avx512, features: [.avx512, .avx512VNNI])
        #expect(vnniOnly.vnniScores && !vnniOnly.integerValues)
        let plain = KernelSet(path: .avx512, features: .avx512)
        #expect(plain.avx512 && !plain.vnniScores && !plain.integerValues && "\(plain)" == "avx512")
        // The avx512 path runs the AVX2 kernels for the shapes the AVX-512 ones do not take; the
        // avx2 path runs no AVX-512 kernel.
        #expect(all.avx2 && !plain.avx2)
        let avx2 = KernelSet(path: .avx2, features: Self.everything)
        #expect(avx2.avx2 && !avx2.avx512 && !avx2.vnniScores && !avx2.integerValues && "\(avx2)" == "avx2")
        // VNNI without the AVX-512 base set does not count.
        #expect(!KernelSet(path: .avx512, features: [.avx512VNNI, .avx512VBMI]).vnniScores)
        let portable = KernelSet(path: .portable, features: Self.everything)
        #expect(portable == .portable && "\(portable)" == "portable")
    }

    /// This process: the path is what its environment and CPU resolve to, chosen once.
    @Test func currentFollowsThisProcess() throws {
        let environment = ProcessInfo.processInfo.environment
        #expect(KernelPath.current == (try KernelPath.resolve(environment: environment, features: .detected)))
        #expect(KernelSet.current == KernelSet(path: .current, features: .detected))
        if environment["KVCRUSH_KERNELS"] == "portable" { #expect(KernelSet.current == .portable) }
    }

    // AVX-512 F/BW/VL/DQ + F16C + FMA present: forcing avx512 works, and it is the default.
    @Test(.enabled(if: CPUFeatures.detected.contains(.avx512)))
    func avx512ResolvesOnThisCPU() throws {
        #expect(try KernelPath.resolve(environment: ["KVCRUSH_KERNELS": "avx512"], features: .detected) == .avx512)
        #expect(try KernelPath.resolve(environment: [:], features: .detected) == .avx512)
    }

    // AVX-512 (F/BW/VL/DQ + F16C + FMA) absent: forcing avx512 is the unavailable-path error.
    @Test(.disabled(if: CPUFeatures.detected.contains(.avx512)))
    func avx512IsRefusedOnThisCPU() {
        #expect(throws: KernelPathError.self) {
            try KernelPath.resolve(environment: ["KVCRUSH_KERNELS": "avx512"], features: .detected)
        }
        #expect(KernelPath.current != .avx512)
    }

    // AVX2 + F16C + FMA present: forcing avx2 works; it is the default unless AVX-512 is there.
    @Test(.enabled(if: CPUFeatures.detected.contains(.avx2)))
    func avx2ResolvesOnThisCPU() throws {
        #expect(try KernelPath.resolve(environment: ["KVCRUSH_KERNELS": "avx2"], features: .detected) == .avx2)
        let expected: KernelPath = CPUFeatures.detected.contains(.avx512) ? .avx512 : .avx2
        #expect(try KernelPath.resolve(environment: [:], features: .detected) == expected)
    }
}
