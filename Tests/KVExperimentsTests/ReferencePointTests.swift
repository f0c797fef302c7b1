import Testing
import KVExperiments

@Suite struct ReferencePointTests {
    /// The CSV `python/tools/llama_cpp_reference.py` writes parses into its rows; every column
    /// order works; comments and blank lines are skipped.
    @Test func parsesTheToolsCSV() throws {
        let text = """
            # llama-cpp-python 0.3.36, SmolLM2-135M-Instruct.Q4_1.gguf, heapq-2048.txt
            name,ratio,kld,perplexityDelta,perplexity
            llama.cpp f16,1.000000,0.000000,0.000000,7.264

            llama.cpp q4_0,0.281250,0.059,0.059,7.692
            """
        let p = try ReferencePoint.parseCSV(text)
        #expect(p == [ReferencePoint(name: "llama.cpp f16", ratio: 1, kld: 0, perplexityDelta: 0),
                      ReferencePoint(name: "llama.cpp q4_0", ratio: 0.28125, kld: 0.059, perplexityDelta: 0.059)])
        #expect(p[1].series == "llama.cpp")
        let swapped = try ReferencePoint.parseCSV("kld,perplexityDelta,name,ratio\n0.0045,-0.0068,llama.cpp q8_0,0.53125\n")
        #expect(swapped == [ReferencePoint(name: "llama.cpp q8_0", ratio: 0.53125, kld: 0.0045, perplexityDelta: -0.0068)])
    }

    /// Missing columns, short rows, non-finite or out-of-range values are typed errors.
    @Test(arguments: ["", "# only a comment\n", "name,ratio,kld\nx,0.5,0.1\n", "name,ratio,kld,perplexityDelta\nx,0.5,0.1\n",
                      "name,ratio,kld,perplexityDelta\nx,nan,0.1,0\n", "name,ratio,kld,perplexityDelta\nx,0,0.1,0\n",
                      "name,ratio,kld,perplexityDelta\nx,1.5,0.1,0\n", "name,ratio,kld,perplexityDelta\nx,0.5,-1,0\n",
                      "name,ratio,kld,perplexityDelta\nx,0.5,0.1,inf\n", "name,ratio,kld,perplexityDelta\nx,0.5,abc,0\n"])
    func refusesBadFiles(text: String) {
        #expect(throws: ReferencePointError.self, "\(text)") { try ReferencePoint.parseCSV(text) }
    }
}
