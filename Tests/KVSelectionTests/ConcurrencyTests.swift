import Testing
import KVQuantization
import TestSupport
@testable import KVSelection

@Suite struct ConcurrencyTests {
    /// Plans are pure functions of their inputs: planning streams concurrently gives the same
    /// assignments as planning them one after another.
    @Test func plansDoNotDependOnThreadCount() async {
        var g = SeededGenerator(seed: 4040)
        let problems = (0..<64).map { _ in RandomProblem.draw(&g) }
        func plan(_ p: RandomProblem) -> StreamAssignment? {
            try? TieredPlanner(configuration: p.configuration).plan(p.input, budget: p.budget)
        }
        let sequential = problems.map(plan)
        let concurrent = await withTaskGroup(of: (Int, StreamAssignment?).self) { group in
            for (i, p) in problems.enumerated() { group.addTask { (i, plan(p)) } }
            var out = [StreamAssignment?](repeating: nil, count: problems.count)
            for await (i, a) in group { out[i] = a }
            return out
        }
        #expect(sequential == concurrent, "seed \(g.seed)")
    }
}
