/// A bad command line: reported as one line with a hint, exit status 2.
struct UsageError: Error, CustomStringConvertible {
    let message: String
    let command: String
    var description: String { "kvcrush\(command.isEmpty ? "" : " " + command): \(message) (see 'kvcrush\(command.isEmpty ? "" : " " + command) --help')" }
}

/// `--name value`, `--name=value` and bare `--flag` options of one subcommand.
///
/// Every option a command reads is declared by reading it; `finish()` then rejects anything left
/// over, so unknown flags are errors, never ignored.
struct CommandLineArguments {
    let command: String
    private var options: [String: String] = [:]
    private var flags: Set<String> = []
    private(set) var positional: [String] = []
    private var consumed: Set<String> = []

    /// Parses `arguments`; `valueless` names the options that take no value.
    init(_ arguments: [String], command: String, valueless: Set<String> = ["help", "quick", "json"]) throws(UsageError) {
        self.command = command
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a.hasPrefix("--") {
                var name = String(a.dropFirst(2)), value: String?
                if let eq = name.firstIndex(of: "=") {
                    value = String(name[name.index(after: eq)...])
                    name = String(name[..<eq])
                }
                guard !name.isEmpty else { throw UsageError(message: "empty option name", command: command) }
                guard options[name] == nil, !flags.contains(name) else {
                    throw UsageError(message: "--\(name) given twice", command: command)
                }
                if valueless.contains(name) {
                    guard value == nil else { throw UsageError(message: "--\(name) takes no value", command: command) }
                    flags.insert(name)
                } else {
                    if value == nil {
                        guard i + 1 < arguments.count else { throw UsageError(message: "--\(name) needs a value", command: command) }
                        i += 1
                        value = arguments[i]
                    }
                    options[name] = value
                }
            } else {
                positional.append(a)
            }
            i += 1
        }
    }

    /// Whether bare `--name` was given.
    mutating func flag(_ name: String) -> Bool {
        consumed.insert(name)
        return flags.contains(name)
    }

    /// The raw value of `--name`, if given.
    mutating func string(_ name: String) -> String? {
        consumed.insert(name)
        return options[name]
    }

    /// `--name` parsed by `parse` (which returns nil for a bad value), or `defaultValue`.
    mutating func value<T>(_ name: String, default defaultValue: T, expected: String, _ parse: (String) -> T?) throws(UsageError) -> T {
        guard let raw = string(name) else { return defaultValue }
        guard let v = parse(raw) else { throw UsageError(message: "bad value '\(raw)' for --\(name): expected \(expected)", command: command) }
        return v
    }

    /// A comma-separated list for `--name`.
    mutating func list<T>(_ name: String, default defaultValue: [T], expected: String, _ parse: (String) -> T?) throws(UsageError) -> [T] {
        guard let raw = string(name) else { return defaultValue }
        var out = [T]()
        for part in raw.split(separator: ",", omittingEmptySubsequences: false) {
            guard let v = parse(String(part)) else {
                throw UsageError(message: "bad item '\(part)' in --\(name): expected a comma list of \(expected)", command: command)
            }
            out.append(v)
        }
        return out
    }

    /// Rejects options nobody read and stray positional arguments.
    func finish() throws(UsageError) {
        if let unknown = (Set(options.keys).union(flags)).subtracting(consumed).sorted().first {
            throw UsageError(message: "unknown option --\(unknown)", command: command)
        }
        if let p = positional.first { throw UsageError(message: "unexpected argument '\(p)'", command: command) }
    }
}
