import IRCWire
import Testing
@testable import ParleyCore

/// The running totals the shell reports as metrics, counted by the domain itself.
@Suite("The domain's running totals")
struct ChatCountersTests {
    @Test func everyRefusedLoginAttemptCountsOnceAndOperIsNoLogin() {
        var harness = CoreHarness(configure: { $0.loginFailuresAllowed = 3 }, accounts: [("alice", "correct-horse")])
        let guesser = harness.register("guesser", host: "198.51.100.7")
        for attempt in 0..<5 { harness.send(guesser, "PRIVMSG NickServ :IDENTIFY alice wrong-\(attempt)") }
        #expect(harness.server.counters.loginFailures == 5, "three wrong passwords, then two refused by the throttle")
        #expect(harness.server.counters.logins == 0)

        let owner = harness.register("alice", password: "correct-horse", host: "203.0.113.9")
        #expect(harness.server.counters.logins == 1)
        harness.send(owner, "OPER admin not-an-operator")
        #expect(harness.server.counters.loginFailures == 5, "an OPER attempt is not a login")
        #expect(harness.server.counters.connectionRegistrations == 2)
    }

    @Test func messagesAreCountedAsReceivedDeliveredStoredAndReplayed() {
        var harness = CoreHarness(accounts: [("alice", "password-a"), ("bob", "password-b")])
        let alice = harness.register("alice", password: "password-a")
        harness.send(alice, "PRIVMSG bob :kept for later", "NOTICE nobody-here :lost")
        #expect(harness.server.counters.messagesReceived == 2)
        #expect(harness.server.counters.offlineStored == 1)
        #expect(harness.server.counters.deliveries == 0)
        let bob = harness.register("bob", password: "password-b")
        #expect(harness.server.counters.offlineReplayed == 1)
        harness.send(bob, "PRIVMSG alice :now live")
        #expect(harness.server.counters.deliveries == 1)
    }
}
