import Testing
@testable import KVSelection
@Test func smoke() { #expect(SplitMix64(seed: 0).state == 0) }
