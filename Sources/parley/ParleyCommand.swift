import ArgumentParser
import Foundation
import IRCWire
import ParleyClient

@main
struct ParleyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parley",
        abstract: "Chat on a Parley server: direct messages, groups, offline delivery and receipts.",
        discussion: """
            The password comes from the PARLEY_PASSWORD environment variable, from --password-file \
            (a file only you can read), or is asked for without echo. Type /help once connected.
            """)

    @Option(name: .long, help: "The server: HOST, HOST:PORT, or [IPV6]:PORT.")
    var server = "localhost:6667"

    @Option(name: .long, help: "Your account name (also your nick).")
    var user: String?

    @Flag(name: .long, help: "Connect with TLS (default port 6697).")
    var tls = false

    @Flag(name: .long, help: "With --tls: accept a certificate that cannot be verified (self-signed test servers).")
    var tlsNoVerify = false

    @Option(name: .long, help: "Read the password from this file; it must be readable by you only (chmod 600).")
    var passwordFile: String?

    @Flag(name: .long, help: "Create the account if it does not exist yet.")
    var create = false

    @Flag(name: .long, help: "No screen: read commands from standard input, write events as JSON lines.")
    var batch = false

    func validate() throws {
        guard ServerAddress(parsing: server, defaultPort: tls ? 6697 : 6667) != nil else {
            throw ValidationError("--server \(server) is not HOST, HOST:PORT or [IPV6]:PORT")
        }
        if let user, (try? Nickname(user)) == nil {
            throw ValidationError("--user \(user) is not a valid name: letters, digits and -_[]{}|^` only, starting with a letter, up to 30 characters")
        }
    }

    func run() async throws {
        guard var address = ServerAddress(parsing: server, defaultPort: tls ? 6697 : 6667, tls: tls) else { throw ExitCode(2) }
        address.tlsVerify = !tlsNoVerify
        guard let account = user ?? ProcessInfo.processInfo.environment["USER"].flatMap({ (try? Nickname($0)) != nil ? $0 : nil }) else {
            throw ValidationError("Say who you are with --user NAME")
        }
        if !batch && !Terminal.isInteractive {
            throw ValidationError("standard input is not a terminal; use --batch to script parley")
        }
        let password = try obtainPassword(account: account)
        let login = LoginSettings(account: account, password: password, createAccount: create)
        if batch {
            let status = await BatchSession(address: address, login: login).run()
            throw ExitCode(status)
        }
        guard Terminal.isInteractive else {
            throw ValidationError("standard input is not a terminal; use --batch to script parley")
        }
        var current = login
        while true {
            let outcome = await InteractiveSession(address: address, login: current).run()
            switch outcome {
            case .quit:
                return
            case .connectFailed(let message):
                FileHandle.standardError.write(Data("parley: \(TerminalText.visible(message))\n".utf8))
                throw ExitCode(2)
            case .loginFailed(let reason):
                FileHandle.standardError.write(Data("parley: login failed: \(TerminalText.visible(reason))\n".utf8))
                guard !current.createAccount else { throw ExitCode(1) }
                FileHandle.standardError.write(Data("Is \(account) a new account? Create it with this password? [y/N] ".utf8))
                guard readLine()?.lowercased().hasPrefix("y") == true else {
                    FileHandle.standardError.write(Data("Check the name and password and try again.\n".utf8))
                    throw ExitCode(1)
                }
                current.createAccount = true
            }
        }
    }

    func obtainPassword(account: String) throws -> String {
        if let fromEnvironment = ProcessInfo.processInfo.environment["PARLEY_PASSWORD"], !fromEnvironment.isEmpty {
            return fromEnvironment
        }
        if let passwordFile {
            var info = stat()
            guard stat(passwordFile, &info) == 0 else {
                throw ValidationError("cannot read --password-file \(passwordFile)")
            }
            guard info.st_mode & 0o077 == 0 else {
                throw ValidationError("\(passwordFile) can be read by others; run chmod 600 \(passwordFile)")
            }
            guard let text = try? String(contentsOfFile: passwordFile, encoding: .utf8) else {
                throw ValidationError("cannot read --password-file \(passwordFile)")
            }
            return text.trimmingCharacters(in: .newlines)
        }
        guard isatty(STDIN_FILENO) == 1, !batch else {
            throw ValidationError("no password: set PARLEY_PASSWORD or use --password-file")
        }
        guard let typed = Terminal.readSecret(prompt: "Password for \(account): "), !typed.isEmpty else {
            throw ValidationError("no password given")
        }
        return typed
    }
}

/// Carries out what the user asked on the client.
func perform(_ actions: [UserAction], on client: ChatClient, report: (ClientEvent) -> Void) -> String? {
    for action in actions {
        switch action {
        case .send(let text, let target):
            client.send(text, to: target)
        case .command(let verb, let parameters):
            client.sendLine { $0.command(verb, parameters) }
        case .whois(let nick):
            client.sendLine { $0.whois(nick) }
        case .history(let target, let limit):
            client.sendLine { $0.history(of: target, limit: limit) }
        case .info(let text):
            report(.info(text))
        case .receipts:
            report(.info("/receipts TEXT lists who read a message on the screen; in --batch every receipt is a state event"))
        case .quit(let reason):
            return reason
        }
    }
    return nil
}

func describe(connectError error: any Error, address: ServerAddress) -> String {
    let text = "\(error)"
    if text.contains("refused") || text.contains("Connection refused") {
        return "cannot connect to \(address): connection refused. Is parley-server running there? (start one with: swift run parley-server)"
    }
    if text.contains("UnknownHost") || text.contains("resolve") || text.contains("NXDOMAIN") || text.contains("No address") || text.contains("lookup") {
        return "cannot find the host \(address.host). Check --server."
    }
    if text.contains("timed out") || text.contains("Timeout") {
        return "cannot connect to \(address): no answer. Check --server and your network."
    }
    return "cannot connect to \(address): \(text)"
}
