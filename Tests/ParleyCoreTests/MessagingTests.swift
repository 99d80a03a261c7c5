import IRCWire
import Testing
@testable import ParleyCore

@Suite("Direct messages")
struct MessagingTests {
    @Test func everyPairOfThreeUsersCanTalkBothWays() {
        var harness = CoreHarness()
        let names = ["alice", "bob", "carol"]
        let ids = names.map { harness.register($0) }
        for (senderIndex, sender) in ids.enumerated() {
            for (receiverIndex, receiver) in ids.enumerated() where receiver != sender {
                let text = "hello \(names[receiverIndex]) from \(names[senderIndex])"
                #expect(harness.send(sender, "PRIVMSG \(names[receiverIndex]) :\(text)").isEmpty)
                #expect(harness.inbox(receiver) == [":\(names[senderIndex])!~\(names[senderIndex])@127.0.0.1 PRIVMSG \(names[receiverIndex]) :\(text)"])
                for other in ids where other != receiver { #expect(harness.inbox(other).isEmpty, "only the recipient sees it") }
            }
        }
    }

    @Test func echoCarriesMsgidTimeAndLabel() throws {
        var harness = CoreHarness()
        let alice = harness.register("alice", caps: ["echo-message", "message-tags", "server-time", "labeled-response", "batch"])
        let bob = harness.register("bob", caps: ["message-tags", "server-time"])
        let echo = harness.send(alice, "@label=L1;+draft/reply=abc PRIVMSG bob :hi there")
        #expect(echo.count == 1)
        let echoed = try IRCMessage(parsing: echo[0])
        #expect(echoed.tagValue("label") == "L1")
        let messageID = try #require(echoed.tagValue("msgid"))
        #expect(echoed.tagValue("time") == harness.now.iso8601)
        #expect(echoed.source == "alice!~alice@127.0.0.1")
        #expect(echoed.parameters == ["bob", "hi there"])
        let delivered = try IRCMessage(parsing: #require(harness.inbox(bob).first))
        #expect(delivered.tagValue("msgid") == messageID, "sender and receiver see the same id")
        #expect(delivered.tagValue("label") == nil)
        #expect(delivered.tagValue("+draft/reply") == "abc", "client tags reach message-tags clients")
    }

    @Test func tagsAreOnlySentToClientsThatAskedForThem() throws {
        var harness = CoreHarness(accounts: [("alice", "password1")])
        let alice = harness.register("alice", password: "password1", caps: ["message-tags"])
        let plain = harness.register("plain")
        let timed = harness.register("timed", caps: ["server-time"])
        let tagged = harness.register("tagged", caps: ["message-tags"])
        harness.send(alice, "@+typing=active PRIVMSG plain,timed,tagged :hello")
        #expect(harness.inbox(plain) == [":alice!~alice@127.0.0.1 PRIVMSG plain :hello"])
        let timedLine = try IRCMessage(parsing: #require(harness.inbox(timed).first))
        #expect(timedLine.tags.map(\.key) == ["time"])
        let taggedLine = try IRCMessage(parsing: #require(harness.inbox(tagged).first))
        #expect(Set(taggedLine.tags.map(\.key)) == ["msgid", "+typing"], "no time or account without their capabilities")
    }

    @Test func tagmsgOnlyReachesMessageTagsClients() {
        var harness = CoreHarness()
        let alice = harness.register("alice", caps: ["message-tags"])
        let modern = harness.register("modern", caps: ["message-tags"])
        let legacy = harness.register("legacy")
        harness.send(alice, "@+typing=active TAGMSG modern")
        harness.send(alice, "@+typing=active TAGMSG legacy")
        #expect(harness.inbox(modern).first?.contains("TAGMSG modern") == true)
        #expect(harness.inbox(legacy).isEmpty)
    }

    @Test func multipleTargetsEachGetTheirOwnOutcome() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        let bob = harness.register("bob")
        let replies = harness.send(alice, "PRIVMSG bob,ghost :hi both")
        #expect(replies == [":parley.local 401 alice ghost :No such nick/channel"])
        #expect(harness.inbox(bob).count == 1)
        #expect(harness.send(alice, "PRIVMSG a,b,c,d,e :too many").commands == ["407"])
    }

    @Test func messagesTooLongToRelayFailWithAReason() {
        var harness = CoreHarness()
        let alice = harness.register("alice", caps: ["standard-replies"])
        let bob = harness.register("bob")
        let text = String(repeating: "x", count: 490)
        let reply = harness.send(alice, "PRIVMSG bob :\(text)")
        #expect(reply.first?.hasPrefix(":parley.local FAIL PRIVMSG MESSAGE_TOO_LONG bob :Message too long by") == true)
        #expect(harness.inbox(bob).isEmpty)
    }

    /// A 512-byte line is valid input, but relayed with the sender's prefix it would not fit:
    /// clients without standard replies get the numeric every client knows (irctest buffering).
    @Test func messagesTooLongToRelayAre417ForClientsWithoutStandardReplies() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        let bob = harness.register("bob")
        harness.send(alice, "JOIN #chan")
        harness.send(bob, "JOIN #chan")
        _ = harness.inbox(bob)
        let text = String(repeating: "x", count: 490)
        for target in ["bob", "#chan"] {
            let reply = harness.send(alice, "PRIVMSG \(target) :\(text)")
            #expect(reply.count == 1 && reply.first?.hasPrefix(":parley.local 417 alice :Message too long by") == true, "\(target): \(reply)")
        }
        #expect(harness.inbox(bob).isEmpty)
    }

    @Test func awayRecipientTriggersRplAway() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        let bob = harness.register("bob")
        #expect(harness.send(bob, "AWAY :at lunch").commands == ["306"])
        #expect(harness.send(alice, "PRIVMSG bob :ping") == [":parley.local 301 alice bob :at lunch"])
        #expect(harness.send(bob, "AWAY").commands == ["305"])
        #expect(harness.send(alice, "PRIVMSG bob :ping").isEmpty)
    }

    @Test func invalidLinesGetClearErrors() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        var outbox = Outbox()
        harness.server.receiveInvalidLine(.tooLong, command: nil, label: nil, from: alice, now: harness.now, into: &outbox)
        harness.server.receiveInvalidLine(.invalidUTF8, command: "PRIVMSG", label: nil, from: alice, now: harness.now, into: &outbox)
        harness.apply(outbox)
        #expect(harness.inbox(alice) == [
            ":parley.local 417 alice :Input line was too long",
            "FAIL PRIVMSG INVALID_UTF8 :Message rejected because it was not valid UTF-8",
        ].map { $0.hasPrefix("FAIL") ? ":parley.local " + $0 : $0 })
    }
}
