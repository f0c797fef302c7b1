import Testing
import KVQuantization
import TestSupport
@testable import KVSelection

@Suite struct ConcurrencyTests {
    /// Plans are pure functions of their inputs: planning streams concurrently gives the same
    /// assignments (or the same errors) as planning them one after another. At least half must
    /// plan, so the comparison is of real assignments.
    @Test func plansDoNotDependOnThreadCount() async {
        var g = SeededGenerator(seed: 4040)
        let problems = (0..<64).map { _ in RandomProblem.draw(&g) }
        func plan(_ p: RandomProblem) -> Result<StreamAssignment, SelectionError> {
            Result { () throws(SelectionError) in try TieredPlanner(configuration: p.configuration).plan(p.input, budget: p.budget) }
        }
        let sequential = problems.map(plan)
        let concurrent = await withTaskGroup(of: (Int, Result<StreamAssignment, SelectionError>).self) { group in
            for (i, p) in problems.enumerated() { group.addTask { (i, plan(p)) } }
            var out = [Result<StreamAssignment, SelectionError>?](repeating: nil, count: problems.count)
            for await (i, a) in group { out[i] = a }
            return out.map { $0! }
        }
        let planned = sequential.filter { if case .success = $0 { true } else { false } }.count
        #expect(planned >= problems.count / 2, "only \(planned) of \(problems.count) problems planned (seed \(g.seed))")
        #expect(sequential == concurrent, "seed \(g.seed)")
    }
}
