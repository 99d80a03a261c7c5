import IRCWire
@testable import ParleyCore
import Testing

/// Replies that IRC clients and the irctest conformance suite rely on (issue 15).
@Suite("Protocol conformance, without sockets")
struct ConformanceTests {
    @Test func whowasWithACountOfZeroOrLessListsEveryEntry() {
        var harness = CoreHarness()
        let asker = harness.register("asker")
        for _ in 0..<2 {
            let gone = harness.register("ghost")
            harness.send(gone, "QUIT :bye")
        }
        for count in ["0", "-1"] {
            let replies = harness.send(asker, "WHOWAS ghost \(count)")
            #expect(replies.commands.filter { $0 == "314" }.count == 2, "WHOWAS ghost \(count): \(replies)")
        }
        #expect(harness.send(asker, "WHOWAS ghost 1").commands.filter { $0 == "314" }.count == 1)
    }

    @Test func whoByMaskListsInvisibleUsersOnlyToThoseWhoShareAChannel() {
        var harness = CoreHarness()
        let evan = harness.register("evan")
        let shiv = harness.register("shiv")
        #expect(harness.send(shiv, "WHO eva*").commands == ["315"], "evan is invisible (+i) and shares no channel")
        harness.send(evan, "JOIN #test")
        harness.send(shiv, "JOIN #test")
        let replies = harness.send(shiv, "WHO eva*")
        #expect(replies.commands == ["352", "315"])
        #expect(replies.first?.contains(" evan H ") == true)
    }

    @Test func anEmptyRealnameIsAMissingParameter() {
        var harness = CoreHarness()
        let id = harness.connect()
        harness.send(id, "NICK foo")
        let replies = harness.send(id, "USER username * * :")
        #expect(replies == [":parley.local 461 foo USER :Not enough parameters"])
    }

    @Test func aNoticeToAMissingChannelGetsNoReply() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        #expect(harness.send(alice, "NOTICE #nowhere :hello").isEmpty)
        #expect(harness.send(alice, "PRIVMSG #nowhere :hello").commands == ["403"])
    }

    @Test func givingOpsToSomeoneWhoDoesNotExistIsNoSuchNick() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        let bob = harness.register("bob")
        harness.send(alice, "JOIN #chan")
        #expect(harness.send(alice, "MODE #chan +o nobody").commands == ["401"])
        #expect(harness.send(alice, "MODE #chan +o bob").commands == ["441"], "bob exists but is not in #chan")
        _ = bob
    }

    @Test func anOperatorMayKickAnotherOperatorOfATransientChannel() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        let bob = harness.register("bob")
        harness.send(alice, "JOIN #chan")
        harness.send(bob, "JOIN #chan")
        harness.send(alice, "MODE #chan +o bob")
        let kick = harness.send(bob, "KICK #chan alice :bye")
        #expect(kick == [":bob!~bob@127.0.0.1 KICK #chan alice :bye"])
    }
}
