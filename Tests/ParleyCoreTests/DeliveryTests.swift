import Foundation
import IRCWire
@testable import ParleyCore
import Testing

@Suite("Offline delivery, receipts and read markers, without sockets")
struct DeliveryTests {
    static let people = [("alice", "password-a"), ("bob", "password-b"), ("carol", "password-c")]

    @Test func offlineRecipientIsNamedWithLastSeenAndGetsTheMessageAtLogin() throws {
        var harness = CoreHarness(accounts: Self.people)
        let bob = harness.register("bob", password: "password-b")
        harness.advance(milliseconds: 1000)
        harness.close(bob)
        let leftAt = harness.now
        harness.advance(milliseconds: 5 * 60_000)
        let alice = harness.register("alice", password: "password-a", caps: ["echo-message"])
        let replies = harness.send(alice, "PRIVMSG bob :are you there?")
        #expect(replies.commands == ["PRIVMSG", "NOTE"], "echo, then the note")
        #expect(replies[1] == ":parley.local NOTE PRIVMSG RECIPIENT_OFFLINE bob \(leftAt.iso8601) :bob is offline (last seen \(String(leftAt.iso8601.prefix(16)).replacingOccurrences(of: "T", with: " ")) UTC, 5 minutes ago); the message will be delivered when bob reconnects")
        #expect(harness.storedMessages.last?.recipients.first?.deliveredAt == nil)

        harness.advance(milliseconds: 60_000)
        let returning = harness.connect()
        let burst = harness.send(returning, "CAP LS 302", "CAP REQ :batch server-time message-tags", "PASS :bob:password-b", "NICK bob", "USER bob 0 * :Bob", "CAP END")
        let start = try #require(burst.firstIndex { $0.contains("that arrived while you were offline") })
        let replay = Array(burst[start...])
        #expect(replay[1].hasPrefix(":parley.local BATCH +"))
        #expect(replay[1].hasSuffix(" chathistory alice"))
        let message = try IRCMessage(parsing: replay[2])
        #expect(message.source == "alice!~alice@127.0.0.1")
        #expect(message.parameters == ["bob", "are you there?"])
        #expect(message.tagValue("msgid") == harness.storedMessages.last?.id)
        #expect(message.tagValue("time") == harness.storedMessages.last?.time.iso8601)
        #expect(replay[3].hasPrefix(":parley.local BATCH -"))
        #expect(harness.recipientUpdates.contains { $0.recipient == "bob" && $0.deliveredAt == harness.now })

        // Exactly once: another device logging in later gets nothing replayed.
        let second = harness.register("bob", password: "password-b")
        _ = second
        harness.close(returning)
        let again = harness.connect()
        let quiet = harness.send(again, "PASS :bob:password-b", "NICK bob", "USER bob 0 * :Bob")
        #expect(!quiet.commands.contains("PRIVMSG"), "\(quiet)")
    }

    @Test func clientsWithoutServerTimeSeeWhenAMissedMessageWasSent() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        harness.send(alice, "PRIVMSG bob :sent while you slept")
        let sentAt = harness.now
        harness.advance(milliseconds: 3_600_000)
        let bob = harness.connect()
        let burst = harness.send(bob, "PASS :bob:password-b", "NICK bob", "USER bob 0 * :Bob")
        let stamp = String(sentAt.iso8601.prefix(16)).replacingOccurrences(of: "T", with: " ")
        #expect(burst.contains(":alice!~alice@127.0.0.1 PRIVMSG bob :[sent \(stamp) UTC] sent while you slept"))
    }

    @Test func missedGroupAndDirectMessagesArriveOldestFirstInOneBatchPerConversation() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        let bob = harness.register("bob", password: "password-b")
        harness.send(alice, "JOIN #team", "INVITE bob #team", "INVITE carol #team")
        harness.close(bob)
        harness.send(alice, "PRIVMSG #team :one")
        harness.advance(milliseconds: 10)
        harness.send(alice, "PRIVMSG #team :two")
        harness.advance(milliseconds: 10)
        harness.send(alice, "PRIVMSG bob :three, privately")
        harness.advance(milliseconds: 10)
        harness.send(alice, "PRIVMSG #team :four")
        let again = harness.connect()
        let burst = harness.send(again, "CAP LS 302", "CAP REQ :batch server-time", "PASS :bob:password-b", "NICK bob", "USER bob 0 * :Bob", "CAP END")
        let texts = burst.compactMap { try? IRCMessage(parsing: $0) }.filter { $0.command == "PRIVMSG" }.map { $0.parameters }
        // Conversations in the order of their first missed message; each one's messages in order.
        #expect(texts == [["#team", "one"], ["#team", "two"], ["#team", "four"], ["bob", "three, privately"]])
        let batches = burst.filter { $0.contains(" BATCH +") }.map { $0.split(separator: " ").last.map(String.init) ?? "" }
        #expect(batches == ["#team", "alice"])
        // The group's JOIN comes before the replay, so the client has the window open.
        let join = try #require(burst.firstIndex { $0.contains(" JOIN #team") })
        let firstMessage = try #require(burst.firstIndex { $0.contains("PRIVMSG #team :one") })
        #expect(join < firstMessage)
    }

    @Test func echoWaitsForStorageAndAFailedCommitSaysSo() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["echo-message", "labeled-response"])
        harness.storageFails = true
        let replies = harness.send(alice, "@label=x1 PRIVMSG bob :will this be kept?")
        #expect(replies == ["@label=x1 :parley.local FAIL PRIVMSG STORAGE_FAILED bob :The message could not be saved, so it was not accepted; please send it again"])
    }

    @Test func aMessageThatCouldNotBeSavedReachesNobodyLaterAndTheFailSaysWhoSawIt() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["echo-message"])
        let bob = harness.register("bob", password: "password-b")
        harness.send(alice, "JOIN #team", "INVITE bob #team", "INVITE carol #team")
        harness.storageFails = true
        // bob is online: he sees it at once, before the commit fails.
        let direct = harness.send(alice, "PRIVMSG bob :seen before the failure")
        #expect(direct == [":parley.local FAIL PRIVMSG STORAGE_FAILED bob :The message could not be saved, so it was not accepted: it was sent to bob as it happened, but it is not in your history"])
        #expect(harness.inbox(bob).contains { $0.hasSuffix("PRIVMSG bob :seen before the failure") })
        // carol is offline: she must not get a message the server did not keep.
        let group = harness.send(alice, "PRIVMSG #team :not kept")
        #expect(group == [":parley.local FAIL PRIVMSG STORAGE_FAILED #team :The message could not be saved, so it was not accepted: it was sent to the members online as it happened, but it is not in the history and members offline will not get it"])
        harness.storageFails = false
        let carol = harness.connect()
        let login = harness.send(carol, "PASS :carol:password-c", "NICK carol", "USER carol 0 * :Carol")
        #expect(login.contains { $0.contains(" 001 carol ") }, "\(login)")
        #expect(!login.contains { $0.contains("not kept") }, "\(login)")
    }

    @Test func senderIsRefusedWhenTheRecipientsInboxIsFull() {
        var harness = CoreHarness(configure: { $0.maxUndeliveredPerAccount = 2 }, accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        harness.send(alice, "PRIVMSG bob :1", "PRIVMSG bob :2")
        #expect(harness.send(alice, "PRIVMSG bob :3").first == ":parley.local FAIL PRIVMSG INBOX_FULL bob :bob has too many messages waiting; try again after they have read some")
        #expect(harness.storedMessages.count == 2)
    }

    @Test func receiptsFollowAMessageFromDeliveredToRead() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["echo-message", "parley.chat/receipts", "message-tags"])
        let bob = harness.register("bob", password: "password-b", caps: ["parley.chat/receipts", "draft/read-marker", "server-time"])
        let sent = harness.send(alice, "PRIVMSG bob :hello")
        let echo = try IRCMessage(parsing: sent[0])
        let id = try #require(echo.tagValue("msgid"))
        #expect(sent[1] == ":parley.local RECEIPT bob \(id) delivered bob \(harness.now.iso8601)", "delivered at once, after the echo")
        let received = try IRCMessage(parsing: #require(harness.inbox(bob).first))
        harness.advance(milliseconds: 2000)
        let marker = harness.send(bob, "MARKREAD alice timestamp=\(received.tagValue("time") ?? "")")
        #expect(marker == [":parley.local MARKREAD alice timestamp=\(received.tagValue("time") ?? "")"])
        #expect(harness.inbox(alice) == [":parley.local RECEIPT bob \(id) read bob \(received.tagValue("time") ?? "")"])
        // The author can ask for the state later.
        #expect(harness.send(alice, "RECEIPTS STATUS \(id),unknown") == [
            ":parley.local RECEIPT bob \(id) read bob \(received.tagValue("time") ?? "")",
            ":parley.local FAIL RECEIPTS UNKNOWN_MESSAGE unknown :No message of yours with that id is being followed",
        ])
        // An older marker does not move the position back.
        #expect(harness.send(bob, "MARKREAD alice timestamp=2020-01-01T00:00:00.000Z") == [":parley.local MARKREAD alice timestamp=\(received.tagValue("time") ?? "")"])
    }

    @Test func receiptTrackingIsBoundedAndKeepsWhatStillWaitsForDelivery() throws {
        var harness = CoreHarness(configure: { $0.maxTrackedRecipients = 3 }, accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["parley.chat/receipts"])
        let bob = harness.register("bob", password: "password-b", caps: ["parley.chat/receipts", "server-time"])
        // carol is offline: her message must still get its delivered receipt later.
        harness.send(alice, "PRIVMSG carol :for carol")
        let forCarol = try #require(harness.storedMessages.last?.id)
        var ids: [String] = []
        for number in 1...5 {
            harness.advance(milliseconds: 10)
            harness.send(alice, "PRIVMSG bob :number \(number)")
            ids.append(try #require(harness.storedMessages.last?.id))
        }
        _ = harness.inbox(alice)
        // bob had his as they were sent: those are followed by position, beside `tracked`.
        #expect(harness.server.tracked.count + harness.server.deliveredDirect.count == 3, "memory stays within the bound")
        #expect(harness.server.deliveredDirect.count == 2)
        #expect(harness.server.trackedRecipientCount == 3)
        #expect(harness.server.tracked[forCarol] != nil, "a message still waiting for its recipient is kept")

        // bob reads everything: live read receipts for the messages still followed.
        harness.advance(milliseconds: 1000)
        harness.send(bob, "MARKREAD alice timestamp=\(harness.now.iso8601)")
        let receipts = harness.inbox(alice).compactMap { try? IRCMessage(parsing: $0) }.filter { $0.command == "RECEIPT" }
        #expect(receipts.map { $0.parameters[1] } == Array(ids.suffix(2)))
        #expect(receipts.allSatisfy { $0.parameters[2] == "read" })

        // carol comes back: alice learns her message was delivered.
        _ = harness.register("carol", password: "password-c")
        let delivered = harness.inbox(alice).compactMap { try? IRCMessage(parsing: $0) }.filter { $0.command == "RECEIPT" }
        #expect(delivered.map { $0.parameters[1] } == [forCarol])
        #expect(delivered.first?.parameters[2] == "delivered")
    }

    /// Messages waiting for their recipients fill the memory bound: they are set aside once
    /// (not passed over again at every new message), the oldest go when nothing else is left,
    /// and those that are delivered become forgettable again, before a message still waiting.
    @Test func messagesWaitingForTheirRecipientsAreSetAsideAndTheOldestForgotten() throws {
        var harness = CoreHarness(configure: { $0.maxTrackedRecipients = 3 }, accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["parley.chat/receipts"])
        var forBob: [String] = []
        var forCarol: [String] = []
        for number in 1...3 {
            harness.send(alice, "PRIVMSG bob :for bob \(number)")
            forBob.append(try #require(harness.storedMessages.last?.id))
        }
        for number in 1...2 {
            harness.send(alice, "PRIVMSG carol :for carol \(number)")
            forCarol.append(try #require(harness.storedMessages.last?.id))
        }
        _ = harness.inbox(alice)
        #expect(Set(harness.server.tracked.keys) == Set([forBob[2]] + forCarol), "the oldest waiting ones went, within the bound")
        #expect(harness.server.tracked.values.allSatisfy { $0.parked })
        #expect(harness.server.trackedOrder.isEmpty, "nothing left to pass over")

        // bob comes back: his one message still followed is delivered, and alice learns it.
        _ = harness.register("bob", password: "password-b")
        let delivered = harness.inbox(alice).compactMap { try? IRCMessage(parsing: $0) }.filter { $0.command == "RECEIPT" }
        #expect(delivered.map { $0.parameters[1] } == [forBob[2]])
        #expect(harness.server.tracked[forBob[2]]?.parked == false)

        // A new message to carol, still away: bob's delivered one goes before carol's waiting ones.
        harness.send(alice, "PRIVMSG carol :for carol 3")
        forCarol.append(try #require(harness.storedMessages.last?.id))
        #expect(Set(harness.server.tracked.keys) == Set(forCarol))
        _ = harness.inbox(alice)
        _ = harness.register("carol", password: "password-c")
        let toldOfCarol = harness.inbox(alice).compactMap { try? IRCMessage(parsing: $0) }.filter { $0.command == "RECEIPT" }
        #expect(toldOfCarol.map { $0.parameters[1] } == forCarol, "every message still followed gets its delivered receipt")
    }

    @Test func directMessagesHadAsTheyWereSentAreFollowedInSendOrder() throws {
        var harness = CoreHarness(accounts: Self.people)
        let caps = ["parley.chat/receipts", "draft/message-redaction"]
        let alice = harness.register("alice", password: "password-a", caps: caps)
        let bob = harness.register("bob", password: "password-b", caps: caps)
        harness.send(alice, "PRIVMSG bob :first")
        let first = try #require(harness.storedMessages.last?.id)
        harness.send(alice, "PRIVMSG bob :second")
        let second = try #require(harness.storedMessages.last?.id)
        #expect(harness.server.tracked.isEmpty, "no entry by msgid")
        #expect(harness.server.deliveredDirect.count == 2)
        #expect(harness.server.trackedRecipientCount == 2)
        _ = harness.inbox(alice)
        _ = harness.inbox(bob)

        // A message taken back gets no read receipt.
        #expect(harness.send(alice, "REDACT bob \(first)").contains { $0.hasSuffix("REDACT bob \(first)") })
        #expect(harness.server.deliveredDirect.count == 1)
        harness.advance(milliseconds: 1000)
        harness.send(bob, "MARKREAD alice timestamp=\(harness.now.iso8601)")
        #expect(harness.inbox(alice).filter { $0.contains(" RECEIPT ") } == [":parley.local RECEIPT bob \(second) read bob \(harness.now.iso8601)"])

        // Read, it is still followed: its author can take it back, once.
        #expect(harness.send(alice, "REDACT bob \(second)").contains { $0.hasSuffix("REDACT bob \(second)") })
        #expect(harness.server.deliveredDirect.count == 0)
        #expect(harness.server.trackedRecipientCount == 0)
        #expect(harness.send(alice, "REDACT bob \(second)").first?.contains("UNKNOWN_MSGID") == true)
    }

    @Test func unreadMessagesFollowedPerConversationAreBounded() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        _ = harness.register("bob", password: "password-b")
        let limit = ChatServer.unreadFollowedPerConversation
        for number in 1...(limit + 101) { harness.send(alice, "PRIVMSG bob :\(number)") }
        let followed = harness.server.unread["bob"]?["alice"] ?? []
        #expect(followed.count == limit, "a reader who never marks anything read does not grow memory without end")
        #expect(followed.last?.id == harness.storedMessages.last?.id, "the newest are the ones followed")
    }

    @Test func receiptsWaitForAnOfflineAuthor() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["parley.chat/receipts"])
        harness.send(alice, "PRIVMSG bob :for later")
        let id = try #require(harness.storedMessages.last?.id)
        harness.close(alice)
        harness.advance(milliseconds: 1000)
        let bob = harness.register("bob", password: "password-b", caps: ["parley.chat/receipts"])
        let deliveredAt = harness.now
        harness.advance(milliseconds: 1000)
        harness.send(bob, "MARKREAD alice timestamp=\(harness.now.iso8601)")
        let readAt = harness.now
        let back = harness.connect()
        let burst = harness.send(back, "CAP LS 302", "CAP REQ parley.chat/receipts", "PASS :alice:password-a", "NICK alice", "USER a 0 * :A", "CAP END")
        #expect(burst.suffix(2) == [
            ":parley.local RECEIPT bob \(id) delivered bob \(deliveredAt.iso8601)",
            ":parley.local RECEIPT bob \(id) read bob \(readAt.iso8601)",
        ])
        #expect(harness.recipientUpdates.contains { $0.messageID == id && $0.readNotified == true })
    }

    @Test func readReceiptsCanBeTurnedOffAndNeedTheReaderToOptIn() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["parley.chat/receipts"])
        let bob = harness.register("bob", password: "password-b", caps: ["parley.chat/receipts", "draft/read-marker"])
        let bobPhone = harness.register("bob", password: "password-b", caps: ["draft/read-marker"])
        let plainReader = harness.register("carol", password: "password-c", caps: ["draft/read-marker"])
        #expect(harness.send(bob, "RECEIPTS READ OFF") == [":parley.local RECEIPTS READ OFF :Authors never see when you read their messages"])
        harness.send(alice, "PRIVMSG bob,carol :hi both")
        _ = harness.inbox(alice)
        _ = harness.inbox(bobPhone)
        harness.advance(milliseconds: 10)
        #expect(harness.send(bob, "MARKREAD alice timestamp=\(harness.now.iso8601)").commands == ["MARKREAD"])
        #expect(harness.inbox(bobPhone) == [":parley.local MARKREAD alice timestamp=\(harness.now.iso8601)"], "the marker still syncs bob's devices")
        harness.send(plainReader, "MARKREAD alice timestamp=\(harness.now.iso8601)")
        #expect(harness.inbox(alice).isEmpty, "no read receipt: bob opted out, carol's client never opted in")
        let id = try #require(harness.storedMessages.last?.id)
        let status = harness.send(alice, "RECEIPTS STATUS \(id)")
        #expect(status.allSatisfy { $0.contains(" delivered ") })
    }

    @Test func groupAuthorsGetReceiptsPerMember() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["parley.chat/receipts"])
        let bob = harness.register("bob", password: "password-b")
        harness.send(alice, "JOIN #team", "INVITE bob #team", "INVITE carol #team")
        _ = harness.inbox(alice)
        let sent = harness.send(alice, "PRIVMSG #team :status?")
        let id = try #require(harness.storedMessages.last?.id)
        #expect(sent == [":parley.local RECEIPT #team \(id) delivered bob \(harness.now.iso8601)"])
        let carol = harness.register("carol", password: "password-c")
        _ = carol
        #expect(harness.inbox(alice) == [":carol!~carol@127.0.0.1 JOIN #team", ":parley.local RECEIPT #team \(id) delivered carol \(harness.now.iso8601)"])
        _ = bob
    }

    /// A member's read receipts in a group are found through the group's followed messages and
    /// how far the member's reads had reached: each message is reported read once, by each member.
    @Test func groupMembersReadsAreReportedOncePerMessage() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["parley.chat/receipts"])
        let bob = harness.register("bob", password: "password-b", caps: ["parley.chat/receipts"])
        let carol = harness.register("carol", password: "password-c", caps: ["parley.chat/receipts"])
        harness.send(alice, "JOIN #team", "INVITE bob #team", "INVITE carol #team")
        harness.send(alice, "PRIVMSG #team :first")
        let first = try #require(harness.storedMessages.last?.id)
        harness.advance(milliseconds: 10)
        harness.send(alice, "PRIVMSG #team :second")
        let second = try #require(harness.storedMessages.last?.id)
        _ = harness.inbox(alice)
        func readReceipts() -> [String] {
            harness.inbox(alice).compactMap { try? IRCMessage(parsing: $0) }.filter { $0.command == "RECEIPT" && $0.parameters[2] == "read" }
                .map { "\($0.parameters[1]) \($0.parameters[3])" }
        }
        // bob reads the first message, then (again) both; carol reads both at once.
        harness.send(bob, "MARKREAD #team timestamp=\(harness.now.adding(milliseconds: -5).iso8601)")
        #expect(readReceipts() == ["\(first) bob"])
        harness.send(bob, "MARKREAD #team timestamp=\(harness.now.iso8601)")
        harness.send(bob, "MARKREAD #team timestamp=\(harness.now.iso8601)")
        #expect(readReceipts() == ["\(second) bob"])
        harness.send(carol, "MARKREAD #team timestamp=\(harness.now.iso8601)")
        #expect(readReceipts() == ["\(first) carol", "\(second) carol"])
    }

    @Test func storedHistoryKeepsOnlyWhatAccountsAreParty() {
        var harness = CoreHarness(accounts: Self.people)
        let guest = harness.register("guest")
        let other = harness.register("other")
        harness.send(guest, "PRIVMSG other :between guests")
        #expect(harness.storedMessages.isEmpty, "guests' conversations are not stored")
        harness.send(guest, "PRIVMSG alice :to an account")
        #expect(harness.storedMessages.count == 1)
        _ = other
    }

    @Test func messagesOlderThanTheRetentionPeriodAreDropped() {
        var harness = CoreHarness(configure: { $0.historyRetentionMilliseconds = 3_600_000 }, accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        harness.send(alice, "PRIVMSG bob :stale soon")
        harness.advance(milliseconds: 2 * 3_600_000)
        let bob = harness.connect()
        let burst = harness.send(bob, "PASS :bob:password-b", "NICK bob", "USER bob 0 * :Bob")
        #expect(!burst.commands.contains("PRIVMSG"))
        #expect(harness.server.undeliveredCount == 0)
    }

    @Test func aResentClientMessageIdIsAnsweredButNotDeliveredAgain() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["echo-message", "message-tags"])
        let bob = harness.register("bob", password: "password-b")
        let first = harness.send(alice, "@+parley.chat/cid=abc123 PRIVMSG bob :only once")
        #expect(harness.inbox(bob) == [":alice!~alice@127.0.0.1 PRIVMSG bob :only once"])
        let again = harness.send(alice, "@+parley.chat/cid=abc123 PRIVMSG bob :only once")
        #expect(again == first, "the same echo, same msgid")
        #expect(harness.inbox(bob).isEmpty)
        #expect(harness.storedMessages.count == 1)
    }

    @Test func aRenamedGroupStillDeliversWhatItsOfflineMembersMissed() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        harness.send(alice, "JOIN #team", "INVITE bob #team")
        harness.send(alice, "PRIVMSG #team :before the rename")
        harness.send(alice, "RENAME #team #crew")
        let bob = harness.connect()
        let burst = harness.send(bob, "PASS :bob:password-b", "NICK bob", "USER bob 0 * :Bob")
        #expect(burst.contains { $0.hasSuffix("PRIVMSG #crew :[sent \(harness.now.minuteText)] before the rename") }, "\(burst)")
    }

    @Test func aSenderWhoseMessagesWaitForASlowStoreIsToldOnceUntilTheyAreStored() throws {
        var harness = CoreHarness(configure: { $0.storageSlowNoticeMilliseconds = 5_000 }, accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["echo-message"])
        let bob = harness.register("bob", password: "password-b")
        let carol = harness.register("carol", password: "password-c")
        harness.defersSlowWork = true
        #expect(harness.send(alice, "PRIVMSG bob :hello").isEmpty, "the echo waits for the commit")
        #expect(harness.inbox(bob).commands == ["PRIVMSG"], "bob had it as it was sent")
        let commitStarted = harness.now

        func storeWorked(for milliseconds: Int64) -> Outbox {
            var outbox = Outbox()
            harness.server.storageIsWorking(since: commitStarted, now: commitStarted.adding(milliseconds: milliseconds), into: &outbox)
            harness.apply(outbox)
            return outbox
        }
        _ = storeWorked(for: 4_999)
        #expect(harness.inbox(alice).isEmpty, "not yet: commits can take a moment")
        _ = storeWorked(for: 5_000)
        let notes = harness.inbox(alice)
        #expect(notes == [":parley.local NOTE * STORAGE_SLOW :Your messages are waiting for the database (for 5 seconds now); each is echoed once it is stored, or refused if it cannot be"])
        #expect(harness.inbox(carol).isEmpty, "carol has nothing waiting")
        _ = storeWorked(for: 30_000)
        #expect(harness.inbox(alice).isEmpty, "told once per wait, not every second")

        harness.completeDeferredWork()
        #expect(harness.inbox(alice).commands == ["PRIVMSG"], "the echo once stored")
        harness.defersSlowWork = true
        harness.send(alice, "PRIVMSG bob :again")
        _ = storeWorked(for: 6_000)
        #expect(harness.inbox(alice).commands == ["NOTE"], "a new wait is told again")
    }
}
