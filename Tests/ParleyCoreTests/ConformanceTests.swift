import Foundation
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

    @Test func voiceIsKeptBesideTheOperatorRank() {
        var harness = CoreHarness()
        let foo = harness.register("foo", caps: ["multi-prefix"])
        let plain = harness.register("plain")
        harness.send(foo, "JOIN #chan")
        harness.send(plain, "JOIN #chan")
        harness.send(foo, "MODE #chan +v foo")
        #expect(harness.send(foo, "NAMES #chan").first == ":parley.local 353 foo = #chan :@+foo plain", "multi-prefix shows every prefix, highest first")
        #expect(harness.send(foo, "WHO #chan").first?.contains(" foo H@+ ") == true)
        #expect(harness.send(plain, "NAMES #chan").first == ":parley.local 353 plain = #chan :@foo plain", "without multi-prefix, the highest only")
        // Taking the operator rank away leaves the voice.
        harness.send(foo, "MODE #chan +m", "MODE #chan -o foo")
        #expect(harness.send(plain, "NAMES #chan").first == ":parley.local 353 plain = #chan :+foo plain")
        #expect(harness.send(foo, "PRIVMSG #chan :still voiced").isEmpty, "voice lets foo speak in the moderated channel")
        #expect(harness.send(plain, "PRIVMSG #chan :hello").commands == ["404"])
    }

    @Test func guestsReadTheRecentHistoryOfATransientChannelTheyAreIn() {
        var harness = CoreHarness(configure: { $0.transientChannelHistoryLength = 8 })
        let bar = harness.register("bar")
        let outsider = harness.register("outsider")
        harness.send(bar, "JOIN #chan")
        var sent: [Timestamp] = []
        for number in 0..<10 {
            harness.advance(milliseconds: 1000)
            sent.append(harness.now)
            harness.send(bar, "TOPIC #chan :topic \(number)", "PRIVMSG #chan :message \(number)")
        }
        func texts(_ replies: [String]) -> [String] {
            replies.compactMap { line in line.range(of: " PRIVMSG #chan :").map { String(line[$0.upperBound...]) } }
        }
        func history(_ request: String) -> [String] {
            texts(harness.send(bar, "CHATHISTORY \(request)")).map { $0.replacingOccurrences(of: "message ", with: "") }
        }
        let at = { (number: Int) in "timestamp=\(sent[number].iso8601)" }
        // Only the last 8 are kept, and no topic changes (no event-playback).
        #expect(history("LATEST #chan * 20") == ["2", "3", "4", "5", "6", "7", "8", "9"])
        #expect(history("LATEST #chan * 2") == ["8", "9"])
        #expect(history("BEFORE #chan \(at(6)) 2") == ["4", "5"])
        #expect(history("AFTER #chan \(at(6)) 2") == ["7", "8"])
        #expect(history("AROUND #chan \(at(6)) 3") == ["5", "6", "7"])
        #expect(history("BETWEEN #chan \(at(3)) \(at(7)) 10") == ["4", "5", "6"])
        // Someone not in the channel reads nothing, as for any channel they are not in.
        #expect(harness.send(outsider, "CHATHISTORY LATEST #chan * 10").first?.hasPrefix(":parley.local FAIL CHATHISTORY INVALID_TARGET") == true)
        // The history ends with the channel.
        harness.send(bar, "PART #chan", "JOIN #chan")
        #expect(history("LATEST #chan * 20").isEmpty)
        #expect(harness.storedMessages.isEmpty, "nothing of a transient channel is stored")
    }

    @Test func aTransientChannelsHistoryIsBoundedInBytesToo() throws {
        var harness = CoreHarness(configure: { $0.transientChannelHistoryBytes = 4000 })
        let bar = harness.register("bar", caps: ["message-tags"])
        harness.send(bar, "JOIN #chan")
        let pad = String(repeating: "x", count: 400)
        for number in 0..<50 { harness.send(bar, "@+pad=\(pad) PRIVMSG #chan :\(number) \(pad)") }
        let history = try #require(harness.server.channels["#chan"]?.recentHistory)
        #expect(history.bytes <= 4000)
        #expect(history.messages.count < 10 && history.messages.last?.text.hasPrefix("49 ") == true, "the newest are kept")
    }

    @Test func aBotMarksItselfWithUserModeBAndOthersSeeIt() {
        var harness = CoreHarness()
        let bot = harness.register("robot", caps: ["echo-message", "message-tags"])
        let user = harness.register("user", caps: ["message-tags"])
        let plain = harness.register("plain")
        #expect(harness.send(bot, "MODE robot +B") == [":robot!~robot@127.0.0.1 MODE robot +B"])
        #expect(harness.send(bot, "MODE robot") == [":parley.local 221 robot :+Bi"])
        #expect(harness.send(user, "WHOIS robot").contains(":parley.local 335 user robot :is a bot"))
        harness.send(bot, "JOIN #chan")
        harness.send(user, "JOIN #chan")
        #expect(harness.send(user, "WHO #chan").contains { $0.contains(" robot HB") })
        // The bot tag goes to clients that take message tags, the echo included.
        let echo = harness.send(bot, "PRIVMSG user :beep", "PRIVMSG plain :boop")
        #expect(echo.allSatisfy { $0.hasPrefix("@") && $0.contains(";bot") || $0.contains(";bot;") })
        #expect(harness.inbox(user).contains { $0.hasPrefix("@") && $0.contains(";bot") && $0.hasSuffix(" PRIVMSG user :beep") })
        #expect(harness.inbox(plain) == [":robot!~robot@127.0.0.1 PRIVMSG plain :boop"])
        harness.send(bot, "MODE robot -B")
        #expect(!harness.send(user, "WHOIS robot").contains { $0.contains(" 335 ") })
    }

    @Test func whoxAnswersTheAskedFieldsInTheFixedOrderWithTheToken() {
        var harness = CoreHarness()
        let cool = harness.register("coolNick")
        let asker = harness.register("otherNick")
        harness.send(cool, "JOIN #chan")
        harness.send(asker, "JOIN #chan")
        #expect(harness.send(asker, "WHO coolNick %roladfnshiuct,123") == [
            ":parley.local 354 otherNick 123 * ~coolNick 127.0.0.1 127.0.0.1 parley.local coolNick H 0 0 0 n/a :coolNick Example",
            ":parley.local 315 otherNick coolNick :End of /WHO list",
        ])
        #expect(harness.send(asker, "WHO #chan %tn,321").prefix(2) == [
            ":parley.local 354 otherNick 321 :coolNick", ":parley.local 354 otherNick 321 :otherNick",
        ])
        // The `o` of the fields is not the operators-only flag, which comes before the `%`.
        #expect(harness.send(asker, "WHO coolNick %na").first == ":parley.local 354 otherNick coolNick :0")
        #expect(harness.send(asker, "WHO coolNick o%na") == [":parley.local 315 otherNick coolNick :End of /WHO list"])
    }

    @Test func helpDescribesEveryCommand() {
        var harness = CoreHarness()
        let nick = harness.register("nick")
        #expect(Set(ChatServer.commandHelp.keys) == Set(ChatServer.commandTable.keys), "every command has help, and only commands")
        let index = harness.send(nick, "HELP")
        #expect(index.first == ":parley.local 704 nick * :Parley help: HELP <command> for one of:")
        #expect(index.last == ":parley.local 706 nick * :End of /HELP")
        #expect(index.dropFirst().dropLast().allSatisfy { $0.hasPrefix(":parley.local 705 nick * :") })
        #expect(harness.send(nick, "HELPOP privmsg") == [
            ":parley.local 704 nick PRIVMSG :PRIVMSG <nick|#channel>[,...] :<text>",
            ":parley.local 705 nick PRIVMSG :Sends a message; to someone offline with an account, it waits for them.",
            ":parley.local 706 nick PRIVMSG :End of /HELP",
        ])
        #expect(harness.send(nick, "HELP NOSUCHTHING") == [":parley.local 524 nick NOSUCHTHING :No help for NOSUCHTHING; HELP lists the commands"])
    }

    @Test func wallopsFromAnOperatorReachUsersWithModeW() {
        var harness = CoreHarness(configure: { $0.operators = [OperatorCredential(name: "operuser", credential: .derive(password: "operpassword", iterations: 1024))] })
        let oper = harness.register("oper")
        let listening = harness.register("listening")
        let quiet = harness.register("quiet")
        #expect(harness.send(oper, "WALLOPS :too early").commands == ["481"], "only operators send WALLOPS")
        #expect(harness.send(listening, "MODE listening +w") == [":listening!~listening@127.0.0.1 MODE listening +w"])
        harness.send(oper, "OPER operuser operpassword")
        _ = harness.completeDeferredChecks()
        _ = harness.inbox(oper)
        #expect(harness.send(oper, "WALLOPS :hi everyone") == [":oper!~oper@127.0.0.1 WALLOPS :hi everyone"])
        #expect(harness.inbox(listening) == [":oper!~oper@127.0.0.1 WALLOPS :hi everyone"])
        #expect(harness.inbox(quiet).isEmpty)
    }

    @Test func oneKickMayRemoveSeveralPeople() {
        var harness = CoreHarness()
        let op = harness.register("op")
        let people = ["bar", "baz", "qux"].map { harness.register($0) }
        harness.send(op, "JOIN #chan")
        for person in people { harness.send(person, "JOIN #chan") }
        let kicks = harness.send(op, "KICK #chan bar,nobody,baz :bye")
        #expect(kicks == [
            ":op!~op@127.0.0.1 KICK #chan bar :bye",
            ":parley.local 441 op nobody #chan :They aren't on that channel",
            ":op!~op@127.0.0.1 KICK #chan baz :bye",
        ], "a refused kick is answered and the others go on")
        #expect(harness.send(op, "NAMES #chan").first == ":parley.local 353 op = #chan :@op qux")
        #expect(harness.send(op, "KICK #chan,#other qux :bye").commands == ["461"], "channels and nicks pair up, or one channel")
        #expect(harness.send(op, "KICK #chan a,b,c,d,e :bye").commands == ["407"])
    }

    @Test func statusMessagesReachOnlyMembersOfThatStatus() {
        var harness = CoreHarness()
        let op = harness.register("chanop")
        let voiced = harness.register("voiced")
        let plain = harness.register("plain")
        harness.send(op, "JOIN #chan")
        harness.send(voiced, "JOIN #chan")
        harness.send(plain, "JOIN #chan")
        harness.send(op, "MODE #chan +v voiced")
        for id in [op, voiced, plain] { _ = harness.inbox(id) }
        #expect(harness.send(plain, "PRIVMSG @#chan :for operators").isEmpty)
        #expect(harness.inbox(op) == [":plain!~plain@127.0.0.1 PRIVMSG @#chan :for operators"])
        #expect(harness.inbox(voiced).isEmpty)
        harness.send(op, "NOTICE +#chan :for voiced and up")
        #expect(harness.inbox(voiced) == [":chanop!~chanop@127.0.0.1 NOTICE +#chan :for voiced and up"])
        #expect(harness.inbox(plain).isEmpty)
        #expect(harness.storedMessages.isEmpty)
    }

    @Test func accountBansMatchAccountsAndMutesSilenceWithoutKeepingOut() {
        var harness = CoreHarness(accounts: [("bob", "sesame")])
        let op = harness.register("chanop")
        harness.send(op, "JOIN #chan", "MODE #chan +b a:BOB", "MODE #chan +b m:bar!*@*")
        #expect(harness.send(op, "MODE #chan +b").prefix(2).map { $0.split(separator: " ").prefix(5).joined(separator: " ") } == [
            ":parley.local 367 chanop #chan a:bob", ":parley.local 367 chanop #chan m:bar!*@*",
        ])
        harness.send(op, "MODE #chan +b a:carol")
        let carol = harness.register("carol")
        #expect(harness.send(carol, "JOIN #chan").first?.hasPrefix(":carol!~carol@127.0.0.1 JOIN") == true, "a guest named carol is no account carol")
        let bob = harness.register("bob", password: "sesame")
        #expect(harness.send(bob, "JOIN #chan").commands == ["474"])
        let bar = harness.register("bar")
        #expect(harness.send(bar, "JOIN #chan").first?.hasPrefix(":bar!~bar@127.0.0.1 JOIN") == true, "a mute does not keep out")
        #expect(harness.send(bar, "PRIVMSG #chan :hi").commands == ["404"])
        harness.send(op, "MODE #chan -b m:bar!*@*")
        #expect(harness.send(bar, "PRIVMSG #chan :hi again").isEmpty)
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

    // MARK: draft/read-marker

    @Test func aGuestKeepsReadMarkersForItsConnection() {
        var harness = CoreHarness()
        let alice = harness.register("alice", caps: ["draft/read-marker"])
        let bob = harness.register("bob")
        let join = harness.send(alice, "JOIN #test")
        #expect(join.commands == ["JOIN", "MARKREAD", "353", "366"], "the marker comes before the end of NAMES")
        #expect(join.contains(":parley.local MARKREAD #test *"))
        let newer = "timestamp=2019-06-01T12:00:00.000Z"
        #expect(harness.send(alice, "MARKREAD #test \(newer)") == [":parley.local MARKREAD #test \(newer)"])
        #expect(harness.send(alice, "MARKREAD #test timestamp=2019-01-01T00:00:00.000Z") == [":parley.local MARKREAD #test \(newer)"],
                "a marker never goes back")
        #expect(harness.send(alice, "MARKREAD #test") == [":parley.local MARKREAD #test \(newer)"])
        #expect(harness.send(alice, "MARKREAD bob \(newer)") == [":parley.local MARKREAD bob \(newer)"], "a direct conversation with a guest")
        #expect(harness.send(alice, "MARKREAD bob") == [":parley.local MARKREAD bob \(newer)"])
        #expect(harness.storedMarkerCount == 0, "a guest's markers are never stored")
        harness.close(alice)
        #expect(harness.server.readMarkers.isEmpty, "and are forgotten with its connection")
        _ = bob
    }

    @Test func markReadAnswersMistakesWithStandardReplies() {
        var harness = CoreHarness()
        let alice = harness.register("alice", caps: ["draft/read-marker"])
        harness.send(alice, "JOIN #test")
        #expect(harness.send(alice, "MARKREAD").first?.hasPrefix(":parley.local FAIL MARKREAD NEED_MORE_PARAMS :") == true)
        for value in ["*", "timestamp=not-a-timestamp"] {
            let reply = harness.send(alice, "MARKREAD #test \(value)")
            #expect(reply.first?.hasPrefix(":parley.local FAIL MARKREAD INVALID_PARAMS #test \(value) :") == true, "\(value): \(reply)")
        }
        #expect(harness.send(alice, "MARKREAD #nosuchtarget") == [":parley.local MARKREAD #nosuchtarget *"],
                "asking about a conversation one is not in: no marker")
    }

    // MARK: Order of replies (clients and irctest use PING as a barrier)

    static let people = [("alice", "password-a"), ("bob", "password-b")]

    @Test func aReplyToALaterCommandWaitsForTheEchoStillBeingCommitted() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["echo-message"])
        let bob = harness.register("bob", password: "password-b")
        harness.defersSlowWork = true
        #expect(harness.send(alice, "PRIVMSG bob :hello", "PING barrier").isEmpty,
                "the PONG waits behind the echo, which waits for the commit")
        harness.completeDeferredWork()
        #expect(harness.inbox(alice).commands == ["PRIVMSG", "PONG"])
        #expect(harness.inbox(bob).commands == ["PRIVMSG"])
        #expect(harness.send(alice, "PING after").commands == ["PONG"], "nothing in flight: answered at once")
    }

    @Test func aReplyToALaterCommandWaitsForAHistoryRead() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        let bob = harness.register("bob", password: "password-b")
        _ = bob
        harness.defersSlowWork = true
        #expect(harness.send(alice, "CHATHISTORY LATEST bob * 10", "PING barrier").isEmpty)
        harness.completeDeferredWork()
        let lines = harness.inbox(alice)
        // The harness's store answers only receipt queries: the read's answer is a FAIL, which
        // must still come before the PONG.
        #expect(lines.commands == ["FAIL", "PONG"], "\(lines)")
    }

    // MARK: Small replies

    @Test func aUserWhoJoinsWhileAwayIsAnnouncedAsAwayToAwayNotifyClients() {
        var harness = CoreHarness()
        let watcher = harness.register("foo", caps: ["away-notify"])
        let plain = harness.register("baz")
        harness.send(watcher, "JOIN #chan")
        harness.send(plain, "JOIN #chan")
        let bar = harness.register("bar")
        harness.send(bar, "AWAY :already away")
        _ = harness.inbox(watcher)
        _ = harness.inbox(plain)
        #expect(!harness.send(bar, "JOIN #chan").commands.contains("AWAY"), "not told about itself")
        #expect(harness.inbox(watcher) == [":bar!~bar@127.0.0.1 JOIN #chan", ":bar!~bar@127.0.0.1 AWAY :already away"])
        #expect(harness.inbox(plain) == [":bar!~bar@127.0.0.1 JOIN #chan"])
    }

    @Test func infoEndsWith374() {
        var harness = CoreHarness()
        let nick = harness.register("nick")
        #expect(harness.send(nick, "INFO").commands == ["371", "374"])
    }

    @Test func saslAfterRegistrationConfirmsTheLoginBeforeTheNickChanges() {
        var harness = CoreHarness(accounts: Self.people)
        let id = harness.register("guest", caps: ["sasl"])
        #expect(harness.send(id, "AUTHENTICATE PLAIN") == ["AUTHENTICATE +"])
        let payload = Data("alice\0alice\0password-a".utf8).base64EncodedString()
        let replies = harness.send(id, "AUTHENTICATE \(payload)")
        #expect(Array(replies.commands.prefix(3)) == ["900", "903", "NICK"], "\(replies)")
        #expect(replies.first == ":parley.local 900 guest alice!~guest@127.0.0.1 alice :You are now logged in as alice")
    }

    @Test func registrationBeforeConnectCanBeTurnedOff() {
        var harness = CoreHarness { $0.accountRegistrationBeforeConnect = false }
        let id = harness.connect()
        let caps = harness.send(id, "CAP LS 302").joined(separator: "\n")
        #expect(caps.contains("draft/account-registration") && !caps.contains("draft/account-registration=before-connect"))
        harness.send(id, "NICK bar")
        let refused = harness.send(id, "REGISTER * * secretpassphrase")
        #expect(refused.first?.hasPrefix(":parley.local FAIL REGISTER COMPLETE_CONNECTION_REQUIRED bar :") == true, "\(refused)")
        harness.send(id, "USER bar 0 * :Bar", "CAP END")
        #expect(harness.send(id, "REGISTER * * secretpassphrase").contains { $0.contains("REGISTER SUCCESS bar") })
    }

    @Test func aUsernameWithNothingUsableStillRegisters() {
        var harness = CoreHarness()
        let id = harness.connect()
        harness.send(id, "NICK foo")
        let welcome = harness.send(id, "USER 😊😊😊😊😊😊😊😊😊😊 * * :realname")
        #expect(welcome.first == ":parley.local 001 foo :Welcome to the Parley IRC Network, foo!~user@127.0.0.1")
    }

    @Test func anInviteCarriesTheInvitersAccountForAccountTagClients() {
        var harness = CoreHarness(accounts: Self.people)
        let founder = harness.register("founder")
        let foo = harness.register("foo", caps: ["account-tag"])
        let alice = harness.register("alice", password: "password-a")
        harness.send(founder, "JOIN #chan")
        harness.send(alice, "JOIN #chan")
        harness.send(founder, "MODE #chan +o alice")
        harness.send(alice, "INVITE foo #chan")
        #expect(harness.inbox(foo) == ["@account=alice :alice!~alice@127.0.0.1 INVITE foo #chan"])
    }

    @Test func aRenamedTransientChannelsOldNameIsFreeAgain() {
        var harness = CoreHarness()
        let bar = harness.register("bar")
        let baz = harness.register("baz")
        harness.send(bar, "JOIN #bar")
        harness.send(baz, "JOIN #bar")
        harness.send(bar, "RENAME #bar #qux :no reason")
        _ = harness.inbox(baz)
        let join = harness.send(baz, "JOIN #bar")
        #expect(join.first == ":baz!~baz@127.0.0.1 JOIN #bar", "a new channel, with baz as its operator: \(join)")
        #expect(harness.send(baz, "MODE #bar +k beer").commands == ["MODE"])
    }

    @Test func aSecretChannelIsTypedAndHiddenFromOutsiders() {
        var harness = CoreHarness()
        let first = harness.register("first")
        let second = harness.register("second")
        harness.send(first, "JOIN #gen")
        #expect(harness.send(first, "MODE #gen +s") == [":first!~first@127.0.0.1 MODE #gen +s"])
        #expect(harness.send(first, "NAMES #gen").first == ":parley.local 353 first @ #gen :@first")
        #expect(harness.send(first, "LIST").commands == ["321", "322", "323"])
        #expect(harness.send(second, "LIST").commands == ["321", "323"], "outsiders do not see it")
        #expect(harness.send(second, "NAMES #gen").commands == ["366"])
        harness.send(second, "JOIN #gen")
        #expect(harness.send(second, "LIST").commands == ["321", "322", "323"])
        let modes = harness.send(second, "MODE #gen")
        #expect(modes.first?.hasPrefix(":parley.local 324 second #gen :+nst") == true, "\(modes)")
    }

    @Test func registeringANickSomeoneElseHoldsIsAccountExists() {
        var harness = CoreHarness()
        harness.register("root")
        let bar = harness.connect()
        #expect(harness.send(bar, "NICK root").commands == ["433"])
        let refused = harness.send(bar, "REGISTER * * secretpassphrase")
        #expect(refused.first?.hasPrefix(":parley.local FAIL REGISTER ACCOUNT_EXISTS root :") == true, "\(refused)")
    }
}
