import Foundation
import IRCWire
import Testing
@testable import ParleyCore

/// Password guessing, with the slow hash held back by the harness so that checks are really in
/// flight while more commands arrive, and an injected clock for the windows.
@Suite("Password guessing and account creation bounds")
struct PasswordGuessingTests {
    static func plain(_ account: String, _ password: String) -> String {
        Data("\0\(account)\0\(password)".utf8).base64EncodedString()
    }

    static func count(_ lines: [String], containing text: String) -> Int {
        lines.filter { $0.contains(text) }.count
    }

    @Test func attemptsCountWhenTheCheckStartsNotWhenItEnds() {
        var harness = CoreHarness(accounts: [("alice", "correct-horse")])
        harness.defersPasswordChecks = true
        // 20 connections from one address, each pipelining two guesses.
        let guessers = (0..<20).map { harness.register("g\($0)", host: "198.51.100.7") }
        var replies: [String] = []
        for guesser in guessers {
            replies += harness.send(guesser, "PRIVMSG NickServ :IDENTIFY alice wrong-a", "PRIVMSG NickServ :IDENTIFY alice wrong-b")
        }
        #expect(harness.deferredChecks.count == 5, "only as many checks start as the window allows")
        while harness.completeDeferredChecks() > 0 {}
        replies += guessers.flatMap { harness.inbox($0) }
        #expect(Self.count(replies, containing: "Invalid account name or password.") == 5)
        #expect(Self.count(replies, containing: "Too many failed login attempts") == 35)

        // The owner, from another network, still gets in.
        let owner = harness.register("owner", host: "203.0.113.9")
        harness.send(owner, "PRIVMSG NickServ :IDENTIFY alice correct-horse")
        #expect(harness.completeDeferredChecks() == 1)
        #expect(harness.inbox(owner).contains { $0.contains("You are now identified as alice.") })
    }

    @Test func laterCommandsWaitForTheCheckAndAnswerInOrder() {
        let credential = PasswordCredential.derive(password: "operpass", iterations: 1024)
        var harness = CoreHarness { $0.operators = [OperatorCredential(name: "admin", credential: credential)] }
        harness.defersPasswordChecks = true
        let user = harness.register("user")
        #expect(harness.send(user, "OPER admin wrong", "PING barrier", "OPER admin operpass", "PING after").isEmpty)
        #expect(harness.deferredChecks.count == 1, "one check in flight per connection")
        harness.completeDeferredChecks()
        #expect(harness.inbox(user).commands == ["464", "PONG"], "the second OPER started its own check; the last PING waits for it")
        harness.completeDeferredChecks()
        #expect(harness.inbox(user).commands == ["381", "MODE", "PONG"])
    }

    @Test func authenticateAbortAndCapEndDoNotResetTheCount() {
        var harness = CoreHarness(accounts: [("alice", "correct-horse")])
        harness.defersPasswordChecks = true
        let id = harness.connect(host: "198.51.100.7")
        harness.send(id, "CAP LS 302", "CAP REQ :sasl", "NICK mallory", "USER m 0 * :M")
        for round in 0..<10 {
            harness.send(id, "AUTHENTICATE PLAIN", "AUTHENTICATE \(Self.plain("alice", "guess\(round)"))", "AUTHENTICATE *")
        }
        var started = 0
        while true {
            let completed = harness.completeDeferredChecks()
            if completed == 0 { break }
            started += completed
        }
        #expect(started == 5)
        let replies = harness.inbox(id)
        #expect(Self.count(replies, containing: "invalid account name or password") == 5)
        #expect(Self.count(replies, containing: "Too many failed login attempts") == 5)
        // CAP END (which ends the SASL exchange) does not reset it either.
        harness.send(id, "AUTHENTICATE PLAIN", "CAP END")
        let other = harness.connect(host: "198.51.100.7")
        harness.send(other, "CAP LS 302", "CAP REQ :sasl", "AUTHENTICATE PLAIN")
        #expect(harness.send(other, "AUTHENTICATE \(Self.plain("alice", "guess"))").first?.contains("Too many failed login attempts") == true)
    }

    @Test func failuresFromOneNetworkDoNotRefuseAnotherAndTheWindowEnds() {
        var harness = CoreHarness(accounts: [("alice", "correct-horse"), ("bob", "battery-staple")])
        let attacker = harness.register("mallory", host: "2001:db8:1:2::7")
        for round in 0..<5 { harness.send(attacker, "PRIVMSG NickServ :IDENTIFY alice wrong\(round)") }
        // The same /64 is the same network; another /64 is not.
        let neighbour = harness.register("neighbour", host: "2001:db8:1:2:ffff::1")
        #expect(harness.send(neighbour, "PRIVMSG NickServ :IDENTIFY alice correct-horse").first?.contains("Too many failed login attempts") == true)
        let owner = harness.register("owner", host: "2001:db8:1:3::1")
        #expect(harness.send(owner, "PRIVMSG NickServ :IDENTIFY alice correct-horse").contains { $0.contains("identified as alice") })
        // Other accounts from the attacker's network are still allowed, up to the network's bound.
        #expect(harness.send(neighbour, "PRIVMSG NickServ :IDENTIFY bob battery-staple").contains { $0.contains("identified as bob") })
        harness.now = harness.now.adding(milliseconds: 60_001)
        let later = harness.register("later", host: "2001:db8:1:2::8")
        #expect(harness.send(later, "PRIVMSG NickServ :IDENTIFY alice correct-horse").contains { $0.contains("identified as alice") })
    }

    @Test func oneNetworkGuessingManyAccountsIsBounded() {
        let names = (0..<30).map { ("user\($0)", "password\($0)") }
        var harness = CoreHarness(configure: { $0.loginFailuresPerNetworkAllowed = 10 }, accounts: names)
        let sprayer = harness.register("sprayer", host: "198.51.100.7")
        var refused = 0
        for (name, _) in names {
            let reply = harness.send(sprayer, "PRIVMSG NickServ :IDENTIFY \(name) guess")
            if reply.first?.contains("Too many failed login attempts") == true { refused += 1 }
        }
        #expect(refused == 20)
    }

    @Test func passwordWorkIsBoundedServerWideAndABusyRefusalIsNoGuess() {
        var harness = CoreHarness(configure: { $0.maxPasswordChecksInFlight = 2 }, accounts: [("alice", "correct-horse")])
        harness.defersPasswordChecks = true
        let first = harness.register("first", host: "198.51.100.1")
        let second = harness.register("second", host: "198.51.100.2")
        let third = harness.register("third", caps: ["draft/account-registration"], host: "198.51.100.3")
        harness.send(first, "PRIVMSG NickServ :IDENTIFY alice wrong")
        harness.send(second, "PRIVMSG NickServ :IDENTIFY alice wrong")
        #expect(harness.send(third, "PRIVMSG NickServ :IDENTIFY alice correct-horse")
            == [":NickServ!NickServ@services.parley NOTICE third :The server is busy checking other passwords; try again in a few seconds."])
        #expect(harness.send(third, "REGISTER * longenoughpassword")
            == [":parley.local FAIL REGISTER TEMPORARILY_UNAVAILABLE third :The server is busy checking other passwords; try again in a few seconds"])
        let sasl = harness.connect(host: "198.51.100.4")
        harness.send(sasl, "CAP LS 302", "CAP REQ :sasl", "AUTHENTICATE PLAIN")
        #expect(harness.send(sasl, "AUTHENTICATE \(Self.plain("alice", "correct-horse"))")
            == [":parley.local 904 * :The server is busy checking other passwords; try again in a few seconds"])
        harness.completeDeferredChecks()
        harness.send(third, "PRIVMSG NickServ :IDENTIFY alice correct-horse")
        harness.completeDeferredChecks()
        #expect(harness.inbox(third).contains { $0.contains("identified as alice") })
    }

    @Test func oneConnectionCreatesOneAccountAndEachNetworkAFewPerWindow() {
        var harness = CoreHarness(configure: { $0.accountRegistrationsPerNetworkAllowed = 2 })
        let burst = harness.connect(host: "198.51.100.7")
        harness.send(burst, "CAP LS 302", "CAP REQ :draft/account-registration")
        for index in 0..<5 { harness.send(burst, "NICK made\(index)", "REGISTER * longenoughpassword") }
        #expect(harness.server.accountCount == 1)
        let second = harness.register("second", host: "198.51.100.7")
        #expect(harness.send(second, "REGISTER * longenoughpassword").contains { $0.contains("REGISTER SUCCESS second") })
        let third = harness.register("third", host: "198.51.100.7")
        #expect(harness.send(third, "REGISTER * longenoughpassword")
            == [":parley.local FAIL REGISTER TEMPORARILY_UNAVAILABLE third :Too many accounts were registered from your network recently; try again in 60 minutes"])
        let elsewhere = harness.register("elsewhere", host: "203.0.113.1")
        #expect(harness.send(elsewhere, "REGISTER * longenoughpassword").contains { $0.contains("REGISTER SUCCESS elsewhere") })
        harness.now = harness.now.adding(milliseconds: 3_600_001)
        #expect(harness.send(third, "REGISTER * longenoughpassword").contains { $0.contains("REGISTER SUCCESS third") })
    }

    @Test func unknownAccountsAreAnsweredLikeWrongPasswords() {
        var harness = CoreHarness(configure: { $0.passwordIterations = 2048 }, accounts: [("alice", "correct-horse")])
        harness.defersPasswordChecks = true
        let wrong = harness.connect()
        harness.send(wrong, "PASS alice:nope", "NICK someone")
        harness.send(wrong, "USER a 0 * :A")
        let unknown = harness.connect()
        harness.send(unknown, "PASS nobody:nope", "NICK someone2")
        harness.send(unknown, "USER a 0 * :A")
        #expect(harness.deferredChecks.count == 2, "an unknown account is checked (against a decoy) too")
        harness.completeDeferredChecks()
        #expect(harness.inbox(wrong).first == ":parley.local 464 someone :Password incorrect")
        #expect(harness.inbox(unknown).first == ":parley.local 464 someone2 :Password incorrect")
    }

    @Test func sourceNetworks() {
        #expect(SourceNetwork.key(forHost: "198.51.100.7") == "198.51.100.7")
        #expect(SourceNetwork.key(forHost: "2001:db8:1:2:3:4:5:6") == SourceNetwork.key(forHost: "2001:0db8:0001:0002::9"))
        #expect(SourceNetwork.key(forHost: "2001:db8:1:2::1") != SourceNetwork.key(forHost: "2001:db8:1:3::1"))
        #expect(SourceNetwork.key(forHost: "0::1") == "0:0:0:0::/64")
        #expect(SourceNetwork.key(forHost: "::ffff:1.2.3.4") == "0:0:0:0::/64")
        #expect(SourceNetwork.key(forHost: "fe80::1%eth0") == "fe80:0:0:0::/64")
    }
}
