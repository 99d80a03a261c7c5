import Foundation
import IRCWire
import Testing
@testable import ParleyCore

@Suite("Connection registration")
struct RegistrationTests {
    @Test func nickAndUserProduceTheWelcomeBurst() {
        var harness = CoreHarness()
        let alice = harness.connect()
        #expect(harness.send(alice, "NICK alice").isEmpty)
        let burst = harness.send(alice, "USER alice 0 * :Alice Example")
        let commands = burst.commands
        #expect(Array(commands.prefix(5)) == ["001", "002", "003", "004", "005"])
        #expect(commands.contains("251"))
        #expect(commands.contains("375") && commands.contains("376"))
        #expect(burst[0].hasPrefix(":parley.local 001 alice :Welcome to the Parley IRC Network, alice!~alice@127.0.0.1"))
        let isupport = burst.filter { $0.contains(" 005 ") }.joined(separator: " ")
        for token in ["CASEMAPPING=ascii", "CHANTYPES=#", "NICKLEN=30", "PREFIX=(qov)~@+", "CHANMODES=", "TARGMAX=PRIVMSG:4", "LINELEN=512", "MONITOR=100"] {
            #expect(isupport.contains(token), "ISUPPORT lacks \(token)")
        }
        #expect(harness.server.isRegistered(alice))
    }

    /// The burst is written from an encoded template; the same lines come from encoding each
    /// message (when the server's text holds one of the template's placeholders) and, read back
    /// into messages, in a labeled response.
    @Test func welcomeBurstIsTheSameFromTheTemplateFromMessagesAndInALabeledBatch() {
        func burst(motd: [String], labeled: Bool = false) -> [String] {
            var harness = CoreHarness { $0.motd = motd }
            harness.register("bob")
            let id = harness.connect()
            guard labeled else {
                harness.send(id, "NICK alice")
                return harness.send(id, "USER alice 0 * :Alice")
            }
            harness.send(id, "CAP LS 302", "CAP REQ :labeled-response batch", "NICK alice", "USER alice 0 * :Alice")
            return harness.send(id, "@label=w1 CAP END")
        }
        let withoutMotdText = { (lines: [String]) in lines.filter { !$0.contains(" 372 ") } }
        let templated = burst(motd: ["Hello"])
        #expect(templated.first?.hasPrefix(":parley.local 001 alice :Welcome to the Parley IRC Network, alice!~alice@127.0.0.1") == true)
        #expect(templated.contains(":parley.local 251 alice :There are 0 users and 2 invisible on 1 servers"))
        #expect(templated.contains(":parley.local 372 alice :- Hello"))
        #expect(templated.last == ":alice MODE alice +i")
        let placeholder = ReplyTemplate.placeholder(0)
        let encoded = burst(motd: ["Hello " + placeholder])
        #expect(encoded.contains(":parley.local 372 alice :- Hello " + placeholder))
        #expect(withoutMotdText(encoded) == withoutMotdText(templated))
        let labeled = burst(motd: ["Hello"], labeled: true)
        #expect(labeled.first?.hasPrefix("@label=w1 :parley.local BATCH +") == true)
        let inBatch = labeled.dropFirst().dropLast().map { $0.replacingOccurrences(of: #"^@batch=[^ ]+ "#, with: "", options: .regularExpression) }
        #expect(inBatch.filter { !$0.contains(" CAP ") } == templated)
    }

    @Test func lusersCountsUsersInvisibleAndUnknownConnectionsAsTheyChange() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        let bob = harness.register("bob")
        _ = harness.connect()  // not registered yet
        harness.send(bob, "MODE bob -i")
        var replies = harness.send(alice, "LUSERS")
        #expect(replies.contains { $0.contains(" 251 alice :There are 1 users and 1 invisible on 1 servers") })
        #expect(replies.contains { $0.contains(" 252 alice 0 :operator(s) online") })
        #expect(replies.contains { $0.contains(" 253 alice 1 :unknown connection(s)") })
        #expect(replies.contains { $0.contains(" 255 alice :I have 2 clients and 0 servers") })
        harness.close(bob)
        replies = harness.send(alice, "LUSERS")
        #expect(replies.contains { $0.contains(" 251 alice :There are 0 users and 1 invisible on 1 servers") })
        harness.send(alice, "MODE alice -i")
        replies = harness.send(alice, "LUSERS")
        #expect(replies.contains { $0.contains(" 251 alice :There are 1 users and 0 invisible on 1 servers") })
    }

    @Test func userBeforeNickAlsoRegisters() {
        var harness = CoreHarness()
        let id = harness.connect()
        harness.send(id, "USER bob 0 * :Bob")
        let burst = harness.send(id, "NICK bob")
        #expect(burst.first?.contains(" 001 bob ") == true)
    }

    @Test func capNegotiationHoldsRegistrationUntilEnd() {
        var harness = CoreHarness()
        let id = harness.connect()
        let listing = harness.send(id, "CAP LS 302")
        // Over 510 bytes the listing goes on more lines, all but the last marked `*`.
        #expect(!listing.isEmpty && listing.dropLast().allSatisfy { $0.contains(" CAP * LS * :") })
        let capabilities = listing.joined(separator: " ")
        for name in ["message-tags", "server-time", "echo-message", "labeled-response", "batch", "sasl=PLAIN,SCRAM-SHA-256",
                     "account-tag", "account-notify", "away-notify", "cap-notify", "multi-prefix", "userhost-in-names",
                     "extended-join", "setname", "extended-monitor", "draft/account-registration", "standard-replies",
                     "draft/metadata-3=max-subs=50,max-keys=50,max-value-bytes=300"] {
            #expect(capabilities.contains(name), "CAP LS lacks \(name)")
        }
        #expect(harness.send(id, "NICK carol", "USER carol 0 * :Carol").isEmpty, "no welcome during CAP negotiation")
        #expect(harness.send(id, "CAP REQ :echo-message server-time") == [":parley.local CAP carol ACK :echo-message server-time"])
        #expect(harness.send(id, "CAP REQ :echo-message bogus-cap") == [":parley.local CAP carol NAK :echo-message bogus-cap"])
        #expect(harness.send(id, "CAP LIST").first?.hasSuffix("LIST :server-time echo-message cap-notify") == true)
        #expect(harness.send(id, "CAP END").first?.contains(" 001 carol ") == true)
    }

    @Test func commandsBeforeRegistrationAreRefused() {
        var harness = CoreHarness()
        let id = harness.connect()
        #expect(harness.send(id, "PRIVMSG bob :hi") == [":parley.local 451 * :You have not registered"])
        #expect(harness.send(id, "WHOIS bob").commands == ["451"])
    }

    @Test func errorNumericsForBadInput() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        _ = harness.register("bob")
        #expect(harness.send(alice, "FROBNICATE") == [":parley.local 421 alice FROBNICATE :Unknown command"])
        #expect(harness.send(alice, "NICK").commands == ["431"])
        #expect(harness.send(alice, "NICK 9lives").commands == ["432"])
        #expect(harness.send(alice, "NICK bob").commands == ["433"])
        #expect(harness.send(alice, "NICK NickServ").commands == ["432"])
        #expect(harness.send(alice, "USER again 0 * :x").commands == ["462"])
        #expect(harness.send(alice, "WHOIS").commands == ["461"])
        #expect(harness.send(alice, "PRIVMSG").commands == ["411"])
        #expect(harness.send(alice, "PRIVMSG bob").commands == ["412"])
        #expect(harness.send(alice, "PRIVMSG nobody :hi") == [":parley.local 401 alice nobody :No such nick/channel"])
    }

    @Test func nickInUseIsRefusedAtRegistration() {
        var harness = CoreHarness()
        harness.register("dave")
        let second = harness.connect()
        #expect(harness.send(second, "NICK Dave").commands == ["433"], "nicks compare case-insensitively")
        harness.send(second, "USER d 0 * :D")
        #expect(harness.send(second, "NICK dave2").first?.contains(" 001 dave2 ") == true)
    }

    @Test func nickChangeIsAnnouncedToTheUser() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        #expect(harness.send(alice, "NICK alicia") == [":alice!~alice@127.0.0.1 NICK alicia"])
        #expect(harness.server.nick(of: alice) == "alicia")
        #expect(harness.send(alice, "WHOIS alice").first?.contains(" 401 ") == true)
    }

    @Test func pingIsAnsweredAndQuitCloses() {
        var harness = CoreHarness()
        let alice = harness.register("alice")
        #expect(harness.send(alice, "PING :token123") == [":parley.local PONG parley.local :token123"])
        let goodbye = harness.send(alice, "QUIT :bye")
        #expect(goodbye == ["ERROR :Closing link: 127.0.0.1 (Quit: bye)"])
        #expect(harness.closed.contains(alice))
        #expect(!harness.server.isRegistered(alice))
    }

    @Test func idleClientsArePingedAndTimedOut() {
        var harness = CoreHarness { $0.pingIntervalMilliseconds = 1000; $0.pingTimeoutMilliseconds = 500 }
        let alice = harness.register("alice")
        let bob = harness.register("bob")
        harness.advance(milliseconds: 1100)
        #expect(harness.inbox(alice) == ["PING parley.local"])
        #expect(harness.inbox(bob) == ["PING parley.local"])
        harness.send(bob, "PONG parley.local")
        harness.advance(milliseconds: 600)
        #expect(harness.closed.contains(alice))
        #expect(harness.inbox(alice).last?.hasPrefix("ERROR :Closing link: 127.0.0.1 (Ping timeout") == true)
        #expect(!harness.closed.contains(bob))
    }

    @Test func unregisteredConnectionsTimeOut() {
        var harness = CoreHarness { $0.registrationTimeoutMilliseconds = 2000 }
        let lurker = harness.connect()
        harness.send(lurker, "NICK lurker")
        harness.advance(milliseconds: 2500)
        #expect(harness.closed.contains(lurker))
        #expect(harness.inbox(lurker).last == "ERROR :Closing link: 127.0.0.1 (Registration timed out)")
    }

    @Test func labeledResponsesAreTaggedAcknowledgedOrBatched() {
        var harness = CoreHarness()
        let alice = harness.register("alice", caps: ["labeled-response", "batch"])
        #expect(harness.send(alice, "@label=one PING :x") == ["@label=one :parley.local PONG parley.local :x"])
        #expect(harness.send(alice, "@label=two PONG :x") == ["@label=two :parley.local ACK"])
        let whois = harness.send(alice, "@label=three WHOIS alice")
        #expect(whois.first?.hasPrefix("@label=three :parley.local BATCH +") == true)
        #expect(whois.first?.hasSuffix(" labeled-response") == true)
        let reference = whois.first.flatMap { try? IRCMessage(parsing: $0) }?.parameters.first?.dropFirst() ?? ""
        #expect(whois.dropFirst().dropLast().allSatisfy { $0.hasPrefix("@batch=\(reference) ") })
        #expect(whois.last == ":parley.local BATCH -\(reference)")
    }
}
