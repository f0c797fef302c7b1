import Testing
@testable import KVStore
@Test func placeholder() {}
