import Foundation
import IRCWire
@testable import ParleyCore
import Testing

/// What one user can make the server hold is bounded: in memory and on disk.
@Suite("Resource bounds per user")
struct ResourceBoundTests {
    static let people = DeliveryTests.people

    @Test func storedBytesPerDayAreCappedPerAccountMessagesToOneselfIncluded() {
        var harness = CoreHarness(configure: { $0.storedBytesPerAccountPerDay = 1000 }, accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["echo-message"])
        let text = String(repeating: "x", count: 300)
        for _ in 1...3 { harness.send(alice, "PRIVMSG alice :\(text)") }
        #expect(harness.storedMessages.count == 3)
        // The fourth would pass the 1,000 bytes of the day; large client tags count too.
        let refused = harness.send(alice, "@+big=\(String(repeating: "t", count: 200)) PRIVMSG bob :\(text)")
        #expect(refused.first?.hasPrefix(":parley.local FAIL PRIVMSG QUOTA_EXCEEDED bob :") == true, "\(refused)")
        #expect(harness.storedMessages.count == 3)
        // A day later the quota is there again.
        harness.advance(milliseconds: 86_400_000)
        harness.send(alice, "PRIVMSG bob :\(text)")
        #expect(harness.storedMessages.count == 4)
    }

    @Test func markReadOnlyForConversationsTheUserIsPartOf() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["draft/read-marker"])
        let stamp = "timestamp=2025-01-01T00:00:00.000Z"
        for target in ["nobody-at-all", "*", "#not-a-channel"] {
            let reply = harness.send(alice, "MARKREAD \(target) \(stamp)")
            #expect(reply.first?.hasPrefix(":parley.local FAIL MARKREAD INVALID_TARGET \(target) :") == true, "\(target): \(reply)")
        }
        #expect(harness.server.readMarkers["alice"] == nil, "nothing was kept for targets that are no conversation")
        // An account, and a transient channel alice is in, are conversations.
        #expect(harness.send(alice, "MARKREAD bob \(stamp)") == [":parley.local MARKREAD bob \(stamp)"])
        let guest = harness.register("visitor")
        harness.send(guest, "JOIN #lobby")
        harness.send(alice, "JOIN #lobby")
        #expect(harness.send(alice, "MARKREAD #lobby \(stamp)") == [":parley.local MARKREAD #lobby \(stamp)"])
        #expect(harness.server.readMarkers["alice"]?["#lobby"] != nil)
        #expect(harness.server.readMarkers["alice"]?["bob"] != nil)
    }

    @Test func transientChannelMarkersLastWhileTheirHolderIsOnlineAndAreBounded() {
        var harness = CoreHarness(accounts: Self.people)
        let stamp = "timestamp=2025-01-01T00:00:00.000Z"
        let guest = harness.register("visitor", caps: ["draft/read-marker"])
        harness.send(guest, "JOIN #lobby", "MARKREAD #lobby \(stamp)", "PART #lobby")
        // The channel ended with its last user; made again, it shows where the guest had read.
        #expect(harness.send(guest, "JOIN #lobby").contains(":parley.local MARKREAD #lobby \(stamp)"))
        // A holder keeps markers for at most maxTransientMarkersPerHolder channel names.
        for number in 0..<ChatServer.maxTransientMarkersPerHolder {
            harness.send(guest, "JOIN #c\(number)", "MARKREAD #c\(number) \(stamp)", "PART #c\(number)")
        }
        #expect(harness.server.readMarkers[harness.server.guestIdentity(of: guest)]?.count == ChatServer.maxTransientMarkersPerHolder)
        #expect(harness.server.readMarkers[harness.server.guestIdentity(of: guest)]?["#lobby"] == nil, "the oldest went first")
        // Leaving the network forgets them all.
        harness.send(guest, "QUIT")
        #expect(harness.server.readMarkers.isEmpty && harness.server.transientMarkerHolders.isEmpty && harness.server.transientMarkerKeys.isEmpty)
        // An account's too, at its last connection's end; and a group that takes a name does not
        // inherit a transient channel's markers.
        let alice = harness.register("alice", password: "password-a", caps: ["draft/read-marker"])
        let bob = harness.register("bob", password: "password-b", caps: ["draft/read-marker"])
        let visitor = harness.register("visitor2")
        harness.send(visitor, "JOIN #spot")
        harness.send(alice, "JOIN #spot", "MARKREAD #spot \(stamp)", "PART #spot")
        harness.send(bob, "JOIN #spot", "MARKREAD #spot \(stamp)", "PART #spot")
        harness.send(visitor, "PART #spot")
        harness.send(alice, "QUIT")
        #expect(harness.server.readMarkers["alice"] == nil)
        #expect(harness.send(bob, "JOIN #spot").contains(":parley.local MARKREAD #spot *"), "bob's new group starts unread")
    }

    @Test func pendingReceiptsForAnAuthorWithoutReceiptsAreCapped() {
        var harness = CoreHarness(configure: { $0.maxPendingReceiptsPerAuthor = 10 }, accounts: Self.people)
        // alice's client does not take receipts: every delivered receipt would wait for her.
        let alice = harness.register("alice", password: "password-a")
        _ = harness.register("bob", password: "password-b")
        for number in 1...50 { harness.send(alice, "PRIVMSG bob :\(number)") }
        let waiting = harness.server.pendingReceipts["alice"] ?? []
        #expect(waiting.count <= 11)
        #expect(waiting.last?.messageID == harness.storedMessages.last?.id, "the newest are kept")
    }

    @Test func recentSendsAreBoundedAndForgottenAfterLogout() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["echo-message", "message-tags"])
        _ = harness.register("bob", password: "password-b")
        let tag = String(repeating: "c", count: 3000)
        for number in 1...400 { harness.send(alice, "@+parley.chat/cid=id\(number);+pad=\(tag) PRIVMSG bob :\(number)") }
        let recent = harness.server.recentSends["alice"]
        #expect((recent?.order.count ?? 0) <= ChatServer.recentSendsPerAccount)
        #expect((recent?.bytes ?? 0) <= ChatServer.recentSendsBytesPerAccount)
        // The newest is still recognised: resending it delivers nothing new.
        let before = harness.storedMessages.count
        harness.send(alice, "@+parley.chat/cid=id400;+pad=\(tag) PRIVMSG bob :400")
        #expect(harness.storedMessages.count == before)
        // Logged out: kept for a reconnect within the window, then freed.
        harness.close(alice)
        harness.advance(milliseconds: 60_000)
        #expect(harness.server.recentSends["alice"] != nil)
        harness.advance(milliseconds: ChatServer.resendWindowMilliseconds)
        #expect(harness.server.recentSends["alice"] == nil)
    }

    @Test func whoByMaskLooksAtABoundedNumberOfUsers() {
        var harness = CoreHarness(configure: { $0.maxWhoScanned = 2 })
        for index in 1...6 {
            let user = harness.register("user\(index)")
            harness.send(user, "MODE user\(index) -i")
        }
        let asker = harness.register("asker")
        let reply = harness.send(asker, "WHO nobody*")
        #expect(reply.contains { $0.contains("NOTE WHO TRUNCATED nobody* :") }, "\(reply)")
        #expect(reply.last?.contains(" 315 ") == true)
        var roomy = CoreHarness()
        for index in 1...6 { roomy.register("user\(index)") }
        let quiet = roomy.register("asker")
        #expect(!roomy.send(quiet, "WHO nobody*").contains { $0.contains("NOTE") })
    }
}
