import Testing
@testable import KVQuantization
@Test func placeholder() {}
