import Foundation
import IRCWire
import Testing
@testable import ParleyCore

@Suite("Accounts, nick reservation and multiple connections")
struct AccountFlowTests {
    static func plainPayload(_ account: String, _ password: String) -> String {
        Data("\0\(account)\0\(password)".utf8).base64EncodedString()
    }

    @Test func saslPlainLogsInBeforeRegistration() {
        var harness = CoreHarness(accounts: [("alice", "correct horse")])
        let id = harness.connect()
        harness.send(id, "CAP LS 302", "NICK alice", "USER alice 0 * :Alice", "CAP REQ :sasl")
        #expect(harness.send(id, "AUTHENTICATE PLAIN") == ["AUTHENTICATE +"])
        let result = harness.send(id, "AUTHENTICATE \(Self.plainPayload("alice", "correct horse"))")
        #expect(result.commands == ["900", "903"])
        #expect(result[0] == ":parley.local 900 alice alice!~alice@127.0.0.1 alice :You are now logged in as alice")
        #expect(harness.send(id, "CAP END").first?.contains(" 001 alice ") == true)
        #expect(harness.server.account(of: id) == "alice")
    }

    @Test func wrongSaslPasswordFailsAndIsThrottled() {
        var harness = CoreHarness(configure: { $0.loginFailuresAllowed = 2 }, accounts: [("alice", "correct horse")])
        let id = harness.connect()
        harness.send(id, "CAP LS 302", "CAP REQ :sasl")
        for _ in 0..<2 {
            harness.send(id, "AUTHENTICATE PLAIN")
            #expect(harness.send(id, "AUTHENTICATE \(Self.plainPayload("alice", "wrong"))").commands == ["904"])
        }
        harness.send(id, "AUTHENTICATE PLAIN")
        let throttled = harness.send(id, "AUTHENTICATE \(Self.plainPayload("alice", "correct horse"))")
        #expect(throttled.commands == ["904"])
        #expect(throttled.first?.contains("Too many failed login attempts") == true)
        harness.now = harness.now.adding(milliseconds: 61_000)
        harness.send(id, "AUTHENTICATE PLAIN")
        #expect(harness.send(id, "AUTHENTICATE \(Self.plainPayload("alice", "correct horse"))").commands == ["900", "903"])
    }

    @Test func registeredNickIsReservedForItsAccount() {
        var harness = CoreHarness(accounts: [("alice", "correct horse")])
        let impostor = harness.connect()
        harness.send(impostor, "NICK alice")
        let refused = harness.send(impostor, "USER x 0 * :x")
        #expect(refused.commands == ["433"])
        #expect(!harness.server.isRegistered(impostor))
        let guest = harness.register("mallory")
        #expect(harness.send(guest, "NICK alice").commands == ["433"])
    }

    @Test func passAccountPasswordLogsIn() {
        var harness = CoreHarness(accounts: [("alice", "correct horse")])
        let id = harness.connect()
        harness.send(id, "PASS :alice:correct horse", "NICK whatever")
        let burst = harness.send(id, "USER a 0 * :A")
        #expect(burst.commands.first == "900")
        #expect(burst.contains { $0.hasPrefix(":parley.local 001 alice ") }, "the nick becomes the account name")
        let wrong = harness.connect()
        harness.send(wrong, "PASS alice:nope", "NICK alice")
        #expect(harness.send(wrong, "USER a 0 * :A").commands == ["464", "ERROR"])
        #expect(harness.closed.contains(wrong))
    }

    @Test func registerCreatesAnAccountAndLogsIn() {
        var harness = CoreHarness()
        let id = harness.register("newbie", caps: ["draft/account-registration", "labeled-response"])
        let reply = harness.send(id, "@label=r1 REGISTER * longenoughpassword")
        #expect(reply.commands == ["BATCH", "900", "REGISTER", "BATCH"] || reply.commands == ["900", "REGISTER"])
        #expect(reply.contains { $0.contains("REGISTER SUCCESS newbie :Account created") })
        #expect(harness.server.account(of: id) == "newbie")
        #expect(harness.server.accountRecord(named: "NEWBIE") != nil)
        let again = harness.register("other")
        #expect(harness.send(again, "REGISTER newbie * anotherpassword") == [":parley.local FAIL REGISTER ACCOUNT_EXISTS newbie :An account with that name already exists"])
        #expect(harness.send(again, "REGISTER someone * anotherpassword").first?.contains("FAIL REGISTER ACCOUNT_NAME_MUST_BE_NICK someone") == true)
        let weak = harness.register("weakling")
        #expect(harness.send(weak, "REGISTER * short").first == ":parley.local FAIL REGISTER WEAK_PASSWORD weakling :Passwords must be at least 8 bytes long")
    }

    @Test func nickServRegisterAndIdentify() {
        var harness = CoreHarness()
        let first = harness.register("zed")
        let registered = harness.send(first, "PRIVMSG NickServ :REGISTER hunter2hunter2")
        #expect(registered.contains { $0.hasPrefix(":NickServ!NickServ@services.parley NOTICE zed :Account zed registered") })
        harness.send(first, "QUIT")
        let second = harness.register("guest1")
        let identified = harness.send(second, "PRIVMSG NickServ :IDENTIFY zed hunter2hunter2")
        #expect(identified.contains(":guest1!~guest1@127.0.0.1 NICK zed"), "identifying takes the account's nick")
        #expect(identified.contains { $0.contains("You are now identified as zed") })
        #expect(harness.server.nick(of: second) == "zed")
    }

    @Test func everyConnectionOfAnAccountGetsItsMessagesAndSeesItsOwn() {
        var harness = CoreHarness(accounts: [("alice", "correct horse"), ("bob", "battery staple")])
        let laptop = harness.register("alice", password: "correct horse", caps: ["echo-message"])
        let phone = harness.register("alice", password: "correct horse")
        let bob = harness.register("bob", password: "battery staple")
        #expect(harness.server.nick(of: phone) == "alice")
        harness.send(bob, "PRIVMSG alice :to both devices")
        #expect(harness.inbox(laptop) == [":bob!~bob@127.0.0.1 PRIVMSG alice :to both devices"])
        #expect(harness.inbox(phone) == [":bob!~bob@127.0.0.1 PRIVMSG alice :to both devices"])
        let echo = harness.send(laptop, "PRIVMSG bob :from the laptop")
        #expect(echo == [":alice!~alice@127.0.0.1 PRIVMSG bob :from the laptop"])
        #expect(harness.inbox(phone) == [":alice!~alice@127.0.0.1 PRIVMSG bob :from the laptop"], "the other device sees what was sent")
        #expect(harness.inbox(bob).count == 1)
        // Closing one device keeps the account online; closing both records last seen.
        harness.close(laptop)
        #expect(harness.lastSeenRecorded["alice"] == nil)
        harness.close(phone)
        #expect(harness.lastSeenRecorded["alice"] == harness.now)
    }

    @Test func monitorReportsOnlineAndOffline() {
        var harness = CoreHarness()
        let watcher = harness.register("watcher")
        #expect(harness.send(watcher, "MONITOR + friend") == [":parley.local 731 watcher :friend"])
        let friend = harness.register("friend")
        #expect(harness.inbox(watcher) == [":parley.local 730 watcher :friend!~friend@127.0.0.1"])
        harness.send(friend, "QUIT")
        #expect(harness.inbox(watcher) == [":parley.local 731 watcher :friend"])
        #expect(harness.send(watcher, "MONITOR L") == [":parley.local 732 watcher :friend", ":parley.local 733 watcher :End of MONITOR list"])
    }

    @Test func whoisShowsAccountAndWhowasRemembers() {
        var harness = CoreHarness(accounts: [("alice", "correct horse")])
        let alice = harness.register("alice", password: "correct horse")
        let bob = harness.register("bob")
        let whois = harness.send(bob, "WHOIS alice")
        #expect(whois.commands == ["311", "312", "330", "317", "318"])
        #expect(whois.contains(":parley.local 330 bob alice alice :is logged in as"))
        harness.send(alice, "QUIT")
        #expect(harness.send(bob, "WHOWAS alice").commands == ["314", "312", "330", "369"])
        #expect(harness.send(bob, "ISON alice bob") == [":parley.local 303 bob :bob"])
    }

    @Test func operatorsCanKill() {
        let credential = PasswordCredential.derive(password: "operpass", iterations: 1024)
        var harness = CoreHarness { $0.operators = [OperatorCredential(name: "root", credential: credential)] }
        let oper = harness.register("oper")
        let victim = harness.register("victim")
        #expect(harness.send(oper, "KILL victim :spam").commands == ["481"])
        #expect(harness.send(oper, "OPER root wrong").commands == ["464"])
        #expect(harness.send(oper, "OPER root operpass").commands == ["381", "MODE"])
        harness.send(oper, "KILL victim :spam")
        #expect(harness.closed.contains(victim))
        #expect(harness.inbox(victim).last == "ERROR :Closing link: 127.0.0.1 (Killed (oper (spam)))")
    }

    @Test func whowasRemembersTheNickBeforeAChange() {
        var harness = CoreHarness()
        let user = harness.register("before")
        let watcher = harness.register("watcher")
        harness.send(watcher, "MONITOR + before")
        harness.send(user, "NICK after")
        let whowas = harness.send(watcher, "WHOWAS before")
        #expect(whowas.first == ":parley.local 314 watcher before ~before 127.0.0.1 * :before Example")
        #expect(harness.inbox(watcher) == [":parley.local 731 watcher :before"], "the old nick went offline")
        #expect(harness.send(watcher, "WHOWAS after").commands == ["406", "369"])
    }
}

