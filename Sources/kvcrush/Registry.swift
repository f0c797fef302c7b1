import Foundation
import KVCrush
import KVExperiments
import KVModel

/// One subcommand of `kvcrush`: each lives in its own file (`<Name>Command.swift`).
struct Subcommand: Sendable {
    let name: String
    let summary: String
    let help: String
    let run: @Sendable (inout CommandLineArguments) throws -> Void
}

/// Every subcommand. (Globals here are static lets, initialised on first use, so tests that
/// import this module without running its top-level code can use them.)
enum Registry {
    static let subcommands: [Subcommand] = [EvalCommand.subcommand, FormatsCommand.subcommand, BenchCommand.subcommand, RunCommand.subcommand,
                                           CalibrateCommand.subcommand, GenerateCommand.subcommand, DumpCommand.subcommand]

    /// The run with no arguments: the main job on the bundled fixture.
    static let defaultArguments = ["eval"]

    static let topHelp = """
    kvcrush — mixed-precision KV-cache storage: experiments and benchmarks

    usage: kvcrush [SUBCOMMAND] [OPTIONS]      (no subcommand: \(defaultArguments.joined(separator: " ")) on the bundled fixture)

    subcommands:
    \(subcommands.map { "  " + $0.name.padding(toLength: 10, withPad: " ", startingAt: 0) + $0.summary }.joined(separator: "\n"))

    'kvcrush SUBCOMMAND --help' describes each.
    """
}

/// Runs `kvcrush` with `arguments` (without the program name) and returns the exit status:
/// 0 success, 1 a failure while running, 2 a bad command line (reported as one line with a hint).
func runCommandLine(_ arguments: [String]) -> Int32 {
    do { _ = try KernelPath.resolveForThisProcess() } catch { FileHandle.standardError.write(Data("kvcrush: \(error)\n".utf8)); return 2 }
    var argv = arguments
    if argv.isEmpty { argv = Registry.defaultArguments }
    if argv == ["--help"] || argv == ["-h"] || argv == ["help"] { print(Registry.topHelp); return 0 }
    guard let sub = Registry.subcommands.first(where: { $0.name == argv[0] }) else {
        FileHandle.standardError.write(Data("kvcrush: unknown subcommand '\(argv[0])' (see 'kvcrush --help')\n".utf8))
        return 2
    }
    do {
        var args = try CommandLineArguments(Array(argv.dropFirst()), command: sub.name)
        if args.flag("help") { print(sub.help); return 0 }
        try sub.run(&args)
        return 0
    } catch let e as UsageError {
        FileHandle.standardError.write(Data("\(e)\n".utf8))
        return 2
    } catch {
        FileHandle.standardError.write(Data("kvcrush \(sub.name): \(error)\n".utf8))
        return 1
    }
}

