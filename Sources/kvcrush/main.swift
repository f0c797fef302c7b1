import Foundation
import KVCrush

/// One subcommand of `kvcrush`: each lives in its own file (`<Name>Command.swift`).
struct Subcommand: Sendable {
    let name: String
    let summary: String
    let help: String
    let run: @Sendable (inout CommandLineArguments) throws -> Void
}

let subcommands: [Subcommand] = [FormatsCommand.subcommand, BenchCommand.subcommand]

/// The run with no arguments: the main job on the bundled fixture.
let defaultArguments = ["formats"]

let topHelp = """
    kvcrush — mixed-precision KV-cache storage: experiments and benchmarks

    usage: kvcrush [SUBCOMMAND] [OPTIONS]      (no subcommand: \(defaultArguments.joined(separator: " ")) on the bundled fixture)

    subcommands:
    \(subcommands.map { "  " + $0.name.padding(toLength: 10, withPad: " ", startingAt: 0) + $0.summary }.joined(separator: "\n"))

    'kvcrush SUBCOMMAND --help' describes each.
    """

@MainActor func main() -> Int32 {
    var argv = Array(CommandLine.arguments.dropFirst())
    if argv.isEmpty { argv = defaultArguments }
    if argv == ["--help"] || argv == ["-h"] || argv == ["help"] { print(topHelp); return 0 }
    guard let sub = subcommands.first(where: { $0.name == argv[0] }) else {
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

exit(main())
