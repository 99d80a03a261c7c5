import Foundation
import IRCWire
import Logging
import NIOConcurrencyHelpers
import ParleyCore
@testable import ParleyServer
import Testing

/// The attacks of issue 13 on logins, registration and nicks, over real loopback sockets. Lines
/// are pipelined in one write, as an attacker would send them; a PING after them is the barrier
/// that proves the server has answered everything before it.
@Suite("Password guessing, SASL bounds, log redaction and nick ownership over real sockets")
struct AuthAbuseTests {
    static func plain(_ account: String, _ password: String) -> String {
        Data("\0\(account)\0\(password)".utf8).base64EncodedString()
    }

    static func pipeline(_ client: TestClient, _ lines: [String]) {
        client.sendRaw(Array(lines.map { $0 + "\r\n" }.joined().utf8))
    }

    static func isPong(_ token: String) -> @Sendable (IRCMessage) -> Bool {
        { $0.command == "PONG" && $0.parameters.last == token }
    }

    static func texts(_ lines: [IRCMessage]) -> [String] { lines.map { $0.parameters.last ?? "" } }

    @Test func pipelinedGuessesAreCountedWhenStartedAndLockNobodyOutElsewhere() async throws {
        let server = try await TestServer()
        try await AccountTests.createAccount("alice", password: "correct-horse-battery", port: server.ipv4Port)

        let guesser = try await TestClient.registered("mallory", port: server.ipv4Port)
        Self.pipeline(guesser, (0..<40).map { "PRIVMSG NickServ :IDENTIFY alice wrong\($0)" } + ["PING done"])
        let answers = Self.texts(try await guesser.lines(through: Self.isPong("done"), "PONG after 40 guesses", timeout: .seconds(20)))
        #expect(answers.filter { $0 == "Invalid account name or password." }.count == 5, "only five guesses were checked")
        #expect(answers.filter { $0.hasPrefix("Too many failed login attempts") }.count == 35, "every guess is answered before the PONG")

        // The owner, on another network (::1), logs in with the right password.
        let owner = try await TestClient.registered("owner", port: server.ipv6Port, host: "::1")
        owner.send("PRIVMSG NickServ :IDENTIFY alice correct-horse-battery")
        try await owner.expect { $0.command == "NOTICE" && $0.parameters.last == "You are now identified as alice." }
        await guesser.close(); await owner.close()
        try await server.shutdownAndRemove()
    }

    @Test func operGuessingIsAnsweredInOrderAndLocksNobodyOutElsewhere() async throws {
        let credential = PasswordCredential.derive(password: "oper-secret-pw", iterations: 1024)
        let server = try await TestServer { $0.operators = [.init(name: "admin", passwordHash: credential.encoded)] }
        let guesser = try await TestClient.registered("mallory", port: server.ipv4Port)
        Self.pipeline(guesser, (0..<6).map { "OPER admin wrong\($0)" } + ["OPER nosuchoper wrong", "PING done"])
        let answers = try await guesser.lines(through: Self.isPong("done"), "PONG after the OPER guesses")
        #expect(answers.map(\.command) == Array(repeating: "464", count: 7) + ["PONG"], "every OPER is answered before the PONG")
        #expect(Self.texts(answers).filter { $0 == "Password incorrect" }.count == 6, "five guesses, and the unknown name answered alike")
        #expect(Self.texts(answers).dropFirst(5).first?.hasPrefix("Too many failed login attempts") == true)

        let admin = try await TestClient.registered("admin", port: server.ipv6Port, host: "::1")
        Self.pipeline(admin, ["OPER admin oper-secret-pw", "PING done"])
        let granted = try await admin.lines(through: Self.isPong("done"), "PONG after OPER")
        #expect(granted.map(\.command) == ["381", "MODE", "PONG"], "\(granted.map(\.wireString)) \(admin.drain())")
        await guesser.close(); await admin.close()
        try await server.shutdownAndRemove()
    }

    @Test func abortingSaslDoesNotResetTheCount() async throws {
        let server = try await TestServer()
        try await AccountTests.createAccount("alice", password: "correct-horse-battery", port: server.ipv4Port)
        let client = try await TestClient.connect(port: server.ipv4Port)
        client.send("CAP LS 302")
        client.send("CAP REQ :sasl")
        try await client.expect { $0.command == "CAP" && $0.parameters.contains("ACK") }
        let rounds = (0..<10).flatMap { ["AUTHENTICATE PLAIN", "AUTHENTICATE \(Self.plain("alice", "guess\($0)"))", "AUTHENTICATE *"] }
        Self.pipeline(client, ["NICK mallory", "USER m 0 * :M"] + rounds + ["PING done"])
        let answers = try await client.lines(through: Self.isPong("done"), "PONG after the SASL guesses", timeout: .seconds(20))
        let failures = answers.filter { $0.command == "904" }.map { $0.parameters.last ?? "" }
        #expect(failures.filter { $0.contains("invalid account name or password") }.count == 5)
        #expect(failures.filter { $0.hasPrefix("Too many failed login attempts") }.count == 5)
        await client.close()
        try await server.shutdownAndRemove()
    }

    @Test func oneConnectionCreatesOneAccountAndEachNetworkAFew() async throws {
        let server = try await TestServer { $0.accounts.registrationsPerNetworkAllowed = 2 }
        let burst = try await TestClient.connect(port: server.ipv4Port)
        burst.send("CAP LS 302")
        burst.send("CAP REQ :draft/account-registration")
        try await burst.expect { $0.command == "CAP" && $0.parameters.contains("ACK") }
        Self.pipeline(burst, (0..<17).flatMap { ["NICK made\($0)", "REGISTER * longenoughpassword"] } + ["PING done"])
        let answers = try await burst.lines(through: Self.isPong("done"), "PONG after the burst", timeout: .seconds(20))
        #expect(answers.filter { $0.command == "REGISTER" && $0.parameters.first == "SUCCESS" }.count == 1, "\(answers.map(\.wireString))")
        // made1 is no account: a guest may take it.
        let guest = try await TestClient.registered("made1", port: server.ipv4Port)

        let second = try await TestClient.registered("second", port: server.ipv4Port, caps: ["draft/account-registration"])
        second.send("REGISTER * longenoughpassword")
        try await second.expect { $0.command == "REGISTER" && $0.parameters.prefix(2) == ["SUCCESS", "second"] }
        let third = try await TestClient.registered("third", port: server.ipv4Port, caps: ["draft/account-registration"])
        third.send("REGISTER * longenoughpassword")
        let refused = try await third.expect(command: "FAIL")
        #expect(refused.parameters.prefix(3) == ["REGISTER", "TEMPORARILY_UNAVAILABLE", "third"])
        let elsewhere = try await TestClient.registered("elsewhere", port: server.ipv6Port, host: "::1", caps: ["draft/account-registration"])
        elsewhere.send("REGISTER * longenoughpassword")
        try await elsewhere.expect { $0.command == "REGISTER" && $0.parameters.prefix(2) == ["SUCCESS", "elsewhere"] }
        for client in [burst, guest, second, third, elsewhere] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func queuedPasswordWorkHasAServerWideBound() async throws {
        // A check that takes a while: an operator verifier with many iterations (never matched).
        // Long enough (a few seconds) to still run while a second client connects on a loaded
        // machine: with 1,000,000 iterations it had ended first when the machine was busy.
        let slow = PasswordCredential(salt: Array(repeating: 7, count: 16), iterations: 5_000_000,
                                      storedKey: Array(repeating: 1, count: 32), serverKey: Array(repeating: 2, count: 32))
        let server = try await TestServer {
            $0.accounts.maxPasswordChecksInFlight = 1
            $0.operators = [.init(name: "slow", passwordHash: slow.encoded)]
        }
        try await AccountTests.createAccount("alice", password: "correct-horse-battery", port: server.ipv4Port)
        let busy = try await TestClient.registered("busy", port: server.ipv4Port)
        busy.send("OPER slow guess")
        // Waits for the condition (the check has started), bounded so a regression fails, not hangs.
        let deadline = ContinuousClock.now + .seconds(5)
        while server.passwordChecksInFlight == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(2)) }
        try #require(server.passwordChecksInFlight > 0, "the first check never started")

        let other = try await TestClient.registered("other", port: server.ipv6Port, host: "::1")
        Self.pipeline(other, ["OPER slow guess", "PRIVMSG NickServ :IDENTIFY alice correct-horse-battery", "PING done"])
        let answers = try await other.lines(through: Self.isPong("done"), "PONG")
        #expect(answers.map(\.wireString) == [
            ":parley.local FAIL OPER TEMPORARILY_UNAVAILABLE :The server is busy checking other passwords; try again in a few seconds",
            ":NickServ!NickServ@services.parley NOTICE other :The server is busy checking other passwords; try again in a few seconds.",
            ":parley.local PONG parley.local :done",
        ])
        try await busy.expect(numeric: "464", timeout: .seconds(60))  // a few seconds
        // Refused for being busy is no guess: once the queue is free, the right password works.
        other.send("PRIVMSG NickServ :IDENTIFY alice correct-horse-battery")
        try await other.expect { $0.command == "NOTICE" && $0.parameters.last == "You are now identified as alice." }
        await busy.close(); await other.close()
        try await server.shutdownAndRemove()
    }

    @Test func saslMessagesHaveABound() async throws {
        let server = try await TestServer()
        let client = try await TestClient.connect(port: server.ipv4Port)
        client.send("CAP LS 302")
        client.send("CAP REQ :sasl")
        try await client.expect { $0.command == "CAP" && $0.parameters.contains("ACK") }
        client.send("AUTHENTICATE PLAIN")
        try await client.expect { $0.command == "AUTHENTICATE" && $0.parameters == ["+"] }
        _ = client.drain()
        let chunk = String(repeating: "A", count: 400)
        Self.pipeline(client, Array(repeating: "AUTHENTICATE \(chunk)", count: 12) + ["PING done"])
        let answers = try await client.lines(through: Self.isPong("done"), "PONG after the chunks")
        // The 11th chunk passes 4096 bytes: 904, and the exchange is over (the 12th is no mechanism).
        #expect(answers.map(\.command) == ["904", "908", "904", "PONG"])
        await client.close()
        try await server.shutdownAndRemove()
    }

    /// The server-first SCRAM message for `username`: its salt and iteration count.
    static func scramChallenge(for username: String, port: Int) async throws -> (salt: Data, iterations: String) {
        let client = try await TestClient.connect(port: port)
        defer { Task { await client.close() } }
        client.send("CAP LS 302")
        client.send("CAP REQ :sasl")
        client.send("AUTHENTICATE SCRAM-SHA-256")
        try await client.expect { $0.command == "AUTHENTICATE" && $0.parameters == ["+"] }
        client.send("AUTHENTICATE " + Data("n,,n=\(username),r=clientnonce123456".utf8).base64EncodedString())
        let challenge = try await client.expect(command: "AUTHENTICATE")
        let serverFirst = String(decoding: try #require(Data(base64Encoded: challenge.parameters[0])), as: UTF8.self)
        var fields: [String: String] = [:]
        for part in serverFirst.split(separator: ",") { fields[String(part.prefix(1))] = String(part.dropFirst(2)) }
        let salt = try #require(fields["s"])
        return (try #require(Data(base64Encoded: salt)), try #require(fields["i"]))
    }

    @Test func loginAnswersDoNotRevealWhichAccountsExist() async throws {
        let server = try await TestServer()
        try await AccountTests.createAccount("real", password: "correct-horse-battery", port: server.ipv4Port)
        let real = try await Self.scramChallenge(for: "real", port: server.ipv4Port)
        let ghost = try await Self.scramChallenge(for: "ghost", port: server.ipv4Port)
        #expect(ghost.iterations == real.iterations)
        #expect(ghost.salt.count == real.salt.count)

        var answers: [[String]] = []
        for account in ["real", "ghost"] {
            let client = try await TestClient.connect(port: server.ipv4Port)
            Self.pipeline(client, ["PASS \(account):wrong-password", "NICK somebody", "USER s 0 * :S"])
            answers.append(try await client.expectClosed())
        }
        #expect(answers[0] == answers[1])
        #expect(answers[0].first == ":parley.local 464 somebody :Password incorrect")
        try await server.shutdownAndRemove()
    }

    @Test func passwordsNeverReachTheTraceLog() async throws {
        let log = NIOLockedValueBox<[String]>([])
        let credential = PasswordCredential.derive(password: "oper-secret-1", iterations: 1024)
        let server = try await TestServer(logger: Logger(label: "parley-test") { _ in CapturingLogHandler(lines: log) }) {
            $0.logLevel = "trace"
            $0.operators = [.init(name: "admin", passwordHash: credential.encoded)]
        }
        let client = try await TestClient.connect(port: server.ipv4Port)
        let payload = Self.plain("someone", "sasl-secret-2")
        Self.pipeline(client, [
            "PASS someone:pass-secret-3", "CAP LS 302", "CAP REQ :sasl draft/account-registration", "AUTHENTICATE PLAIN",
            "AUTHENTICATE \(payload)", "NICK newcomer", "USER n 0 * :N", "CAP END",
        ])
        // PASS for an unknown account ends the connection; the rest runs on a second one.
        _ = try await client.expectClosed()
        let second = try await TestClient.registered("newcomer", port: server.ipv4Port, caps: ["draft/account-registration"])
        Self.pipeline(second, [
            "OPER admin oper-secret-4", "REGISTER * register-secret-5", "PRIVMSG NickServ :IDENTIFY alice identify-secret-6",
            "NS IDENTIFY alice identify-secret-7", "NICKSERV REGISTER register-secret-8", "VERIFY newcomer verify-secret-9", "PING done",
        ])
        try await second.expect(timeout: .seconds(10), "PONG", Self.isPong("done"))
        let lines = log.withLockedValue { $0 }
        #expect(lines.contains("<- PASS <redacted>"))
        #expect(lines.contains("<- AUTHENTICATE <redacted>"))
        #expect(lines.contains("<- AUTHENTICATE PLAIN"))
        #expect(lines.contains("<- OPER admin <redacted>"))
        #expect(lines.contains("<- PRIVMSG NickServ :IDENTIFY <redacted>"))
        #expect(lines.contains("<- PING done"))
        let leaks = lines.filter { $0.contains("secret") || $0.contains(payload) }
        #expect(leaks.isEmpty, "leaked: \(leaks)")
        await second.close()
        try await server.shutdownAndRemove()
    }

    @Test func aNickIsHeldByOneIdentityAtATime() async throws {
        let server = try await TestServer()
        // The first connection holds carol while still registering (CAP negotiation open).
        let first = try await TestClient.connect(port: server.ipv4Port)
        Self.pipeline(first, ["CAP LS 302", "NICK carol", "PING held"])
        try await first.expect("PONG", Self.isPong("held"))
        // A guest takes carol meanwhile.
        let guest = try await TestClient.registered("carol", port: server.ipv6Port, host: "::1")
        // The first now registers the account carol, then finishes registering.
        first.send("CAP REQ :draft/account-registration")
        first.send("REGISTER * longenoughpassword")
        let refused = try await first.expect(command: "FAIL")
        #expect(refused.parameters.prefix(3) == ["REGISTER", "ACCOUNT_EXISTS", "carol"])
        first.send("USER c 0 * :C")
        first.send("CAP END")
        try await first.expect(numeric: "433")

        // Messages to carol reach the guest, and only the guest.
        let sender = try await TestClient.registered("sender", port: server.ipv4Port)
        sender.send("PRIVMSG carol :for the guest")
        try await guest.expect { $0.command == "PRIVMSG" && $0.parameters == ["carol", "for the guest"] }
        Self.pipeline(first, ["NICK other", "PING done"])
        let firstLines = try await first.lines(through: Self.isPong("done"), "PONG")
        #expect(!firstLines.contains { $0.command == "PRIVMSG" })
        for client in [first, guest, sender] { await client.close() }
        try await server.shutdownAndRemove()
    }
}

/// Keeps every logged message, so a test can read what the server logged.
struct CapturingLogHandler: LogHandler {
    let lines: NIOLockedValueBox<[String]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        lines.withLockedValue { $0.append(event.message.description) }
    }
}
