import Foundation
import NIOConcurrencyHelpers
import ParleyClient
import Testing

/// A `ChatClient` with every event it reported, for waiting on what a user would see.
final class ObservedClient: Sendable {
    let client: ChatClient
    private let seen = NIOLockedValueBox<[ClientEvent]>([])
    private let task: Task<Void, Never>
    private let runner: Task<Void, any Error>
    private let runEnded = NIOLockedValueBox(false)

    init(_ name: String, password: String, port: Int, host: String = "127.0.0.1", create: Bool = false, firstReconnectDelay: Double = 0.5) {
        let client = ChatClient(address: ServerAddress(host: host, port: port), login: LoginSettings(account: name, password: password, createAccount: create),
                                firstReconnectDelay: firstReconnectDelay)
        self.client = client
        let seen = self.seen
        task = Task {
            for await event in client.events { seen.withLockedValue { $0.append(event) } }
        }
        let runEnded = self.runEnded
        runner = Task {
            defer { runEnded.withLockedValue { $0 = true } }
            try await client.run()
        }
    }

    /// Waits for `ChatClient.run()` to return.
    func waitForRunToEnd(timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while !runEnded.withLockedValue({ $0 }) {
            guard ContinuousClock.now < deadline else {
                throw TestClient.Timeout(waitingFor: "the client to stop", received: events.map(\.jsonLine))
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    var events: [ClientEvent] { seen.withLockedValue { $0 } }

    @discardableResult
    func waitFor(_ description: String, timeout: Duration = .seconds(5), _ predicate: @escaping @Sendable (ClientEvent) -> Bool) async throws -> ClientEvent {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let found = seen.withLockedValue({ $0.first(where: predicate) }) { return found }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw TestClient.Timeout(waitingFor: description, received: events.map(\.jsonLine))
    }

    func stop() async {
        await client.stop()
        _ = try? await runner.value
        _ = await task.value
    }
}

@Suite("The parley client library against a real server")
struct ClientLibraryTests {
    @Test func threeClientsFollowTheirMessagesFromPendingToRead() async throws {
        let server = try await TestServer()
        // Accounts are created by the client itself (REGISTER), as a new user would.
        let alice = ObservedClient("alice", password: "alice-password", port: server.ipv4Port, create: true)
        let bob = ObservedClient("bob", password: "bob-password", port: server.ipv6Port, host: "::1", create: true)
        let carol = ObservedClient("carol", password: "carol-password", port: server.ipv4Port, create: true)
        for client in [alice, bob, carol] {
            try await client.waitFor("account created") { $0.type == .accountCreated }
            try await client.waitFor("connected") { $0.type == .connected }
        }

        // Direct: alice -> bob, followed to read.
        alice.client.send("hello bob", to: "bob")
        try await alice.waitFor("pending") { $0.type == .state && $0.state == .pending && $0.text == "hello bob" }
        let sent = try await alice.waitFor("sent") { $0.type == .state && $0.state == .sent && $0.text == "hello bob" }
        try await alice.waitFor("delivered") { $0.type == .state && $0.state == .delivered && $0.msgid == sent.msgid && $0.reader == "bob" }
        let atBob = try await bob.waitFor("bob receives it") { $0.type == .message && $0.text == "hello bob" }
        #expect(atBob.from == "alice")
        #expect(atBob.conversation == "alice")
        #expect(atBob.msgid == sent.msgid)
        let time = try #require(atBob.time)
        bob.client.sendLine { $0.markRead("alice", time: time) }
        try await alice.waitFor("read") { $0.type == .state && $0.state == .read && $0.msgid == sent.msgid && $0.reader == "bob" }

        // And the other directions.
        bob.client.send("hi carol", to: "carol")
        carol.client.send("hi alice", to: "alice")
        try await carol.waitFor("from bob") { $0.type == .message && $0.from == "bob" && $0.text == "hi carol" }
        try await alice.waitFor("from carol") { $0.type == .message && $0.from == "carol" && $0.text == "hi alice" }

        // A group: alice creates it with bob and carol; each sees the others' messages with the group's name.
        alice.client.sendLine { $0.command("JOIN", ["#trio"]) }
        try await alice.waitFor("joined") { $0.type == .joined && $0.conversation == "#trio" }
        alice.client.sendLine { $0.command("INVITE", ["bob", "#trio"]) }
        alice.client.sendLine { $0.command("INVITE", ["carol", "#trio"]) }
        try await bob.waitFor("bob joined") { $0.type == .joined && $0.conversation == "#trio" }
        try await carol.waitFor("carol joined") { $0.type == .joined && $0.conversation == "#trio" }
        carol.client.send("hello trio", to: "#trio")
        for member in [alice, bob] {
            let message = try await member.waitFor("group message") { $0.type == .message && $0.text == "hello trio" }
            #expect(message.from == "carol")
            #expect(message.conversation == "#trio")
        }
        try await carol.waitFor("delivered to the group") { $0.type == .state && $0.state == .delivered && $0.conversation == "#trio" }
        for client in [alice, bob, carol] { await client.stop() }
        try await server.shutdownAndRemove()
    }

    @Test func offlineNoticeMissedMessagesAndReconnectWithoutDuplicates() async throws {
        let server = try await TestServer()
        let dave = ObservedClient("dave", password: "dave-password", port: server.ipv4Port, create: true)
        try await dave.waitFor("connected") { $0.type == .connected }
        await dave.stop()
        let alice = ObservedClient("alice", password: "alice-password", port: server.ipv4Port, create: true)
        try await alice.waitFor("connected") { $0.type == .connected }

        alice.client.send("first while you are away", to: "dave")
        alice.client.send("second while you are away", to: "dave")
        let offline = try await alice.waitFor("offline notice") { $0.type == .recipientOffline }
        #expect(offline.conversation == "dave")
        let lastSeen = try #require(offline.lastSeen)
        #expect(lastSeen.hasPrefix("20"), "an ISO time: \(lastSeen)")
        try await alice.waitFor("both stored") { $0.type == .state && $0.state == .sent && $0.text == "second while you are away" }

        let daveAgain = ObservedClient("dave", password: "dave-password", port: server.ipv6Port, host: "::1")
        try await daveAgain.waitFor("second missed") { $0.type == .message && $0.text == "second while you are away" }
        let missed = daveAgain.events.filter { $0.type == .message }
        #expect(missed.map { $0.text ?? "" } == ["first while you are away", "second while you are away"])
        #expect(missed.allSatisfy { $0.missed == true })
        try await alice.waitFor("delivered at replay") { $0.type == .state && $0.state == .delivered && $0.text == "first while you are away" }

        // The connection drops right after a send: the client reconnects and sends it again;
        // dave gets it once.
        alice.client.send("exactly once", to: "dave")
        alice.client.dropConnection()
        try await alice.waitFor("reconnecting") { $0.type == .reconnecting }
        try await alice.waitFor("confirmed after reconnect", timeout: .seconds(10)) { $0.type == .state && $0.state == .sent && $0.text == "exactly once" }
        try await daveAgain.waitFor("dave got it") { $0.type == .message && $0.text == "exactly once" }
        // A resent copy would go out before anything sent after the reconnect.
        alice.client.send("after the resend", to: "dave")
        try await daveAgain.waitFor("the next message") { $0.type == .message && $0.text == "after the resend" }
        #expect(daveAgain.events.filter { $0.type == .message && $0.text == "exactly once" }.count == 1)
        // A message sent while disconnected goes out after the reconnect.
        alice.client.dropConnection()
        alice.client.send("sent while disconnected", to: "dave")
        try await daveAgain.waitFor("late message", timeout: .seconds(10)) { $0.type == .message && $0.text == "sent while disconnected" }

        for client in [alice, daveAgain] { await client.stop() }
        try await server.shutdownAndRemove()
    }

    @Test func pagingBackLosesNoMessageOfTheSameMillisecond() async throws {
        let server = try await TestServer()
        let bob = ObservedClient("bob", password: "bob-password", port: server.ipv4Port, create: true)
        bob.client.perform { session in
            session.reportsHistoryEnd = true
            return ([], [], ())
        }
        try await bob.waitFor("connected") { $0.type == .connected }
        // One write of many messages: the server stores several within each millisecond.
        let alice = try await TestClient.registered("alice", port: server.ipv4Port)
        alice.sendRaw(Array((1...60).map { "PRIVMSG bob :burst \($0)\r\n" }.joined().utf8))
        try await bob.waitFor("the last one") { $0.type == .message && $0.text == "burst 60" }
        let live = bob.events.filter { $0.type == .message && $0.history != true }
        #expect(live.map(\.text) == (1...60).map { "burst \($0)" })
        // The oldest shown message shares its millisecond with the one before it, as a page
        // boundary often does in a busy conversation.
        let anchorIndex = try #require((1..<live.count).first { live[$0].time == live[$0 - 1].time && $0 >= 10 },
                                       "no two messages of the burst share a millisecond")
        let anchor = live[anchorIndex]
        bob.client.sendLine { $0.history(of: "alice", before: HistoryAnchor(time: anchor.time!, msgid: anchor.msgid), limit: 10) }
        try await bob.waitFor("the page") { $0.type == .message && $0.history == true && $0.text == live[anchorIndex - 1].text }
        try await bob.waitFor("the page's end") { $0.type == .historyEnd }
        let page = bob.events.filter { $0.type == .message && $0.history == true }
        #expect(page.map(\.text) == live[(anchorIndex - 10)..<anchorIndex].map(\.text), "the ten before it, none skipped")
        await alice.close()
        await bob.stop()
        try await server.shutdownAndRemove()
    }

    @Test func stoppingWhileWaitingToReconnectEndsAtOnce() async throws {
        let server = try await TestServer()
        // An hour between attempts: only stop() can end the wait in this test's time.
        let frank = ObservedClient("frank", password: "frank-password", port: server.ipv4Port, create: true, firstReconnectDelay: 3600)
        try await frank.waitFor("connected") { $0.type == .connected }
        try await server.shutdownAndRemove()
        try await frank.waitFor("reconnecting") { $0.type == .reconnecting }
        await frank.client.stop()
        try await frank.waitForRunToEnd(timeout: .seconds(10))
    }

    @Test func aWrongPasswordIsReportedAndNotRetried() async throws {
        let server = try await TestServer()
        let owner = ObservedClient("erin", password: "erin-password", port: server.ipv4Port, create: true)
        try await owner.waitFor("connected") { $0.type == .connected }
        await owner.stop()
        let wrong = ObservedClient("erin", password: "not-her-password", port: server.ipv4Port)
        let failure = try await wrong.waitFor("login failed") { $0.type == .loginFailed }
        #expect(failure.reason?.contains("SASL authentication failed") == true)
        // A refused login ends the client's run; it never tries again.
        try await wrong.waitForRunToEnd(timeout: .seconds(5))
        #expect(!wrong.events.contains { $0.type == .reconnecting })
        await wrong.stop()
        try await server.shutdownAndRemove()
    }
}
