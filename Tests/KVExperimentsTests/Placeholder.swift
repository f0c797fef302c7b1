import Testing
@testable import KVExperiments
@Test func placeholder() {}
