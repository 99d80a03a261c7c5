import IRCWire
@testable import ParleyClient
import Testing

@Suite("What the user types")
struct InterpreterTests {
    @Test func theOriginalAppsModesKeepWorking() {
        var interpreter = CommandInterpreter()
        #expect(interpreter.interpret("hello?").first.map { if case .info = $0 { true } else { false } } == true, "plain text with no conversation gets a hint")
        _ = interpreter.interpret("/direct")
        #expect(interpreter.mode == .direct)
        #expect(interpreter.interpret("bob~hi there") == [.send(text: "hi there", to: "bob")])
        #expect(interpreter.interpret("no tilde").count == 1)
        _ = interpreter.interpret("/exit")
        #expect(interpreter.mode == .general)

        _ = interpreter.interpret("/group")
        #expect(interpreter.prompt == "create a new group? (y/n) ")
        #expect(interpreter.interpret("y").isEmpty)
        #expect(interpreter.prompt == "group name: ")
        #expect(interpreter.interpret("friends").isEmpty)
        #expect(interpreter.prompt == "members (user~user~...): ")
        let created = interpreter.interpret("bob~carol")
        #expect(Array(created.prefix(3)) == [.command("JOIN", ["#friends"]), .command("INVITE", ["bob", "#friends"]), .command("INVITE", ["carol", "#friends"])])
        #expect(interpreter.interpret("friends~see you all") == [.send(text: "see you all", to: "#friends")])
        _ = interpreter.interpret("/group")
        _ = interpreter.interpret("n")
        #expect(interpreter.mode == .group)
        #expect(interpreter.interpret("/leave") == [.quit("Leaving")])
    }

    @Test func ircStyleCommands() {
        var interpreter = CommandInterpreter()
        #expect(interpreter.interpret("/msg bob two words") == [.send(text: "two words", to: "bob")])
        _ = interpreter.interpret("/query carol")
        #expect(interpreter.interpret("just text") == [.send(text: "just text", to: "carol")])
        #expect(interpreter.interpret("/join team") == [.command("JOIN", ["#team"])])
        #expect(interpreter.interpret("typed into the group") == [.send(text: "typed into the group", to: "#team")])
        #expect(interpreter.interpret("/group create crew bob carol") == [.command("JOIN", ["#crew"]), .command("INVITE", ["bob", "#crew"]), .command("INVITE", ["carol", "#crew"])])
        #expect(interpreter.interpret("/group add crew dave") == [.command("INVITE", ["dave", "#crew"])])
        #expect(interpreter.interpret("/group remove crew dave") == [.command("KICK", ["#crew", "dave", "Removed from the group"])])
        #expect(interpreter.interpret("/group rename crew band") == [.command("RENAME", ["#crew", "#band", "Renamed"])])
        #expect(interpreter.interpret("/group members band") == [.command("PRIVMSG", ["ChanServ", "INFO #band"])])
        #expect(interpreter.interpret("/seen bob") == [.whois("bob")])
        #expect(interpreter.interpret("/history 5") == [.history("#band", limit: 5)], "the renamed group is still the conversation")
        #expect(interpreter.interpret("/who") == [.command("NAMES", ["#band"])])
        #expect(interpreter.interpret("/group delete band") == [.command("PRIVMSG", ["ChanServ", "DROP #band"])])
        #expect(interpreter.interpret("/receipts off") == [.command("RECEIPTS", ["READ", "OFF"])])
        #expect(interpreter.interpret("/quit see you") == [.quit("see you")])
        let unknown = interpreter.interpret("/frobnicate")
        guard case .info(let text)? = unknown.first else { Issue.record("unknown commands get help"); return }
        #expect(text.contains("Unknown command /frobnicate") && text.contains("/msg user text"))
    }

    @Test func tabCompletesCommandsNicksAndGroups() {
        var interpreter = CommandInterpreter()
        interpreter.knownNicks = ["bob", "barbara"]
        interpreter.knownGroups = ["#team"]
        #expect(interpreter.complete("/his") == "/history ")
        #expect(interpreter.complete("/msg bo") == "/msg bob ")
        #expect(interpreter.complete("/msg b") == nil, "bob and barbara share only the b")
        #expect(interpreter.complete("/join #te") == "/join #team ")
        _ = interpreter.interpret("/direct")
        #expect(interpreter.complete("bo") == "bob~", "in direct mode a completed nick is followed by ~")
    }
}

@Suite("The client's view of the protocol")
struct ClientSessionTests {
    func registered() -> ClientSession {
        var session = ClientSession(login: LoginSettings(account: "alice", password: "secret-pw"), clientIDPrefix: "t")
        _ = session.openingLines()
        _ = session.receive(try! IRCMessage(parsing: ":srv CAP * LS :sasl echo-message labeled-response message-tags server-time batch parley.chat/receipts draft/read-marker"))
        _ = session.receive(try! IRCMessage(parsing: ":srv CAP * ACK :sasl echo-message labeled-response message-tags server-time batch parley.chat/receipts draft/read-marker"))
        _ = session.receive(try! IRCMessage(parsing: ":srv 001 alice :Welcome"))
        return session
    }

    @Test func loginUsesSaslPlainThenEndsCapabilityNegotiation() throws {
        var session = ClientSession(login: LoginSettings(account: "alice", password: "secret-pw"))
        #expect(session.openingLines().map(\.wireString) == ["CAP LS 302", "NICK alice", "USER alice 0 * alice"])
        let request = session.receive(try IRCMessage(parsing: ":srv CAP * LS :sasl=PLAIN echo-message unknown-cap"))
        #expect(request.lines.map(\.wireString) == ["CAP REQ :echo-message sasl"])
        #expect(session.receive(try IRCMessage(parsing: ":srv CAP * ACK :echo-message sasl")).lines.map(\.wireString) == ["AUTHENTICATE PLAIN"])
        let payload = session.receive(try IRCMessage(parsing: "AUTHENTICATE +")).lines.first?.parameters.first
        #expect(payload == "AGFsaWNlAHNlY3JldC1wdw==")
        #expect(session.receive(try IRCMessage(parsing: ":srv 903 alice :ok")).lines.map(\.wireString) == ["CAP END"])
        let failed = session.receive(try IRCMessage(parsing: ":srv 904 alice :SASL authentication failed"))
        #expect(failed.events.first?.type == .loginFailed)
    }

    @Test func aMessageGoesFromPendingToRead() throws {
        var session = registered()
        let (lines, events) = session.send("hi bob", to: "bob")
        #expect(lines.map(\.wireString) == ["@label=m1;+parley.chat/cid=t-m1 PRIVMSG bob :hi bob"])
        #expect(events.first?.state == .pending)
        let echo = session.receive(try IRCMessage(parsing: "@label=m1;msgid=x1;time=2026-11-25T10:00:00.000Z :alice!a@h PRIVMSG bob :hi bob"))
        #expect(echo.events.first?.state == .sent)
        #expect(echo.events.first?.msgid == "x1")
        let delivered = session.receive(try IRCMessage(parsing: ":srv RECEIPT bob x1 delivered bob 2026-11-25T10:00:00.010Z"))
        #expect(delivered.events.first?.state == .delivered)
        let read = session.receive(try IRCMessage(parsing: ":srv RECEIPT bob x1 read bob 2026-11-25T10:00:05.000Z"))
        #expect(read.events.first?.state == .read)
        #expect(read.events.first?.reader == "bob")
        #expect(session.outgoing["m1"]?.state == .read)
        #expect(session.unconfirmedLines().isEmpty, "nothing to resend once confirmed")
    }

    @Test func aReceiptThatOvertakesTheEchoIsKeptUntilTheEcho() throws {
        var session = registered()
        _ = session.send("quick reader", to: "bob")
        #expect(session.receive(try IRCMessage(parsing: ":srv RECEIPT bob x9 read bob 2026-11-25T10:00:01.000Z")).events.isEmpty)
        let echo = session.receive(try IRCMessage(parsing: "@label=m1;msgid=x9;time=2026-11-25T10:00:00.000Z :alice!a@h PRIVMSG bob :quick reader"))
        #expect(echo.events.map(\.state) == [.sent, .read])
        #expect(session.outgoing["m1"]?.readBy == ["bob"])
    }

    @Test func refusalsAndOfflineNotesAreTiedToTheMessage() throws {
        var session = registered()
        _ = session.send("anyone?", to: "ghost")
        let refused = session.receive(try IRCMessage(parsing: "@label=m1 :srv 401 alice ghost :No such nick/channel"))
        #expect(refused.events.first?.state == .failed)
        #expect(refused.events.first?.reason == "No such nick/channel")
        _ = session.send("later", to: "bob")
        _ = session.receive(try IRCMessage(parsing: "@label=m2 :srv BATCH +b1 labeled-response"))
        _ = session.receive(try IRCMessage(parsing: "@batch=b1;msgid=x2 :alice!a@h PRIVMSG bob :later"))
        let note = session.receive(try IRCMessage(parsing: "@batch=b1 :srv NOTE PRIVMSG RECIPIENT_OFFLINE bob 2026-11-25T09:00:00.000Z :bob is offline"))
        #expect(note.events.first?.type == .recipientOffline)
        #expect(note.events.first?.id == "m2")
        #expect(note.events.first?.lastSeen == "2026-11-25T09:00:00.000Z")
        #expect(session.outgoing["m2"]?.state == .sent)
    }

    @Test func replayedMessagesAreMarkedMissed() throws {
        var session = registered()
        _ = session.receive(try IRCMessage(parsing: ":srv BATCH +r1 chathistory bob"))
        let missed = session.receive(try IRCMessage(parsing: "@batch=r1;time=2026-11-25T08:00:00.000Z;msgid=z :bob!b@h PRIVMSG alice :while you were away"))
        #expect(missed.events.first?.missed == true)
        #expect(missed.events.first?.conversation == "bob")
        let live = session.receive(try IRCMessage(parsing: ":bob!b@h PRIVMSG alice :now"))
        #expect(live.events.first?.missed == nil)
    }
}
