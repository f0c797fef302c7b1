import Testing
@testable import KVSelection
@Test func placeholder() {}
