import Foundation
@testable import ParleyCore
import ParleyStorage
@testable import ParleyStoreSQLite
import Testing

/// What every storage backend must do, run against each of them (StorageBackend.all).
@Suite("Storage behaviour, on every backend")
struct StorageBehaviourTests {
    @Test(arguments: StorageBackend.all) func groupsAndDeliveryStateRoundTrip(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let group = GroupRecord(name: "#Team", key: "#team", createdAt: now, owner: "alice", topic: "plans", topicSetBy: "alice",
                                topicSetAt: now, modes: "int", password: "k", userLimit: 5,
                                bans: [BanEntry(mask: "*!*@bad", setBy: "alice", setAt: now)], members: ["alice": .owner, "bob": .op],
                                voiced: ["bob"])
        let message = StoredMessage(id: "x1", time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h",
                                    targetKind: .group, target: "#team", command: "PRIVMSG", text: "hi",
                                    recipients: [StoredRecipient(account: "bob"), StoredRecipient(account: "carol", deliveredAt: now)])
        try store.transaction { try $0.saveGroup(group, previousKey: nil); try $0.storeMessages([message]) }
        #expect(try await store.loadGroups() == [group])
        var state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
        #expect(state.undelivered["bob"]?.map(\.id) == ["x1"])
        #expect(state.undelivered["carol"] == nil)
        // Delivered and read, with receipts sent: nothing is pending any more.
        try store.transaction {
            try $0.updateRecipients([RecipientUpdate(messageID: "x1", recipient: "bob", deliveredAt: now, readAt: now, deliveredNotified: true, readNotified: true),
                                     RecipientUpdate(messageID: "x1", recipient: "carol", readAt: now, deliveredNotified: true, readNotified: true)])
        }
        state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
        #expect(state.undelivered.isEmpty)
        #expect(state.tracked.isEmpty)
        // A rename moves the group and its messages.
        var renamed = group
        renamed.name = "#Crew"
        renamed.key = "#crew"
        try store.transaction { try $0.saveGroup(renamed, previousKey: "#team") }
        #expect(try await store.loadGroups().map(\.key) == ["#crew"])
        let history = try store.loadHistory(HistoryQuery(conversation: .group("#crew"), kind: .latest(after: nil), limit: 10))
        #expect(history == .messages([{ var moved = message; moved.target = "#crew"; moved.recipients = []; return moved }()]))
        try await done()
    }


    @Test(arguments: StorageBackend.all) func oneMemberIsAddedChangedOrRemovedAndTheOthersStay(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let team = GroupRecord(name: "#team", key: "#team", createdAt: now, owner: "alice", topic: "plans",
                               members: ["alice": .owner, "bob": .member], voiced: ["bob"])
        try store.transaction { try $0.saveGroup(team, previousKey: nil) }
        // carol joins; bob is made an operator (keeping his voice).
        try store.transaction {
            try $0.setGroupMember(group: "#team", account: "carol", role: .member, voiced: false)
            try $0.setGroupMember(group: "#team", account: "bob", role: .op, voiced: true)
        }
        var expected = team
        expected.members = ["alice": .owner, "bob": .op, "carol": .member]
        #expect(try await store.loadGroups() == [expected])
        // bob leaves; an unknown account or group changes nothing and is no error.
        try store.transaction {
            try $0.setGroupMember(group: "#team", account: "bob", role: nil, voiced: false)
            try $0.setGroupMember(group: "#team", account: "mallory", role: .member, voiced: false)
            try $0.setGroupMember(group: "#nowhere", account: "carol", role: .member, voiced: false)
        }
        expected.members = ["alice": .owner, "carol": .member]
        expected.voiced = []
        #expect(try await store.loadGroups() == [expected])
        // A TOPIC, then a RENAME: the settings change, the member list stays as stored.
        var settings = expected
        settings.topic = "plans"
        settings.members = [:]
        try store.transaction { try $0.saveGroupSettings(settings, previousKey: nil) }
        settings.name = "#crew"
        settings.key = "#crew"
        try store.transaction { try $0.saveGroupSettings(settings, previousKey: "#team") }
        expected.topic = "plans"
        expected.name = "#crew"
        expected.key = "#crew"
        #expect(try await store.loadGroups() == [expected])
        try await done()
    }

    @Test(arguments: StorageBackend.all) func chathistoryQueriesSelectTheRightMessages(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let base = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        func message(_ number: Int, from: String, to: String, group: Bool = false) -> StoredMessage {
            StoredMessage(id: "id\(number)", time: base.adding(milliseconds: Int64(number) * 1000), senderNick: from, senderAccount: from,
                          senderPrefix: "\(from)!~\(from)@h", targetKind: group ? .group : .direct, target: to, command: "PRIVMSG", text: "m\(number)")
        }
        // alice and bob talk (1-6); carol writes to alice (7); #team has two messages (8, 9).
        var messages = (1...6).map { message($0, from: $0.isMultiple(of: 2) ? "bob" : "alice", to: $0.isMultiple(of: 2) ? "alice" : "bob") }
        messages.append(message(7, from: "carol", to: "alice"))
        messages.append(message(8, from: "alice", to: "#team", group: true))
        messages.append(message(9, from: "bob", to: "#team", group: true))
        let team = GroupRecord(name: "#team", key: "#team", createdAt: base, owner: "alice", members: ["alice": .owner, "bob": .member])
        try store.transaction { try $0.saveGroup(team, previousKey: nil); try $0.storeMessages(messages) }
        func texts(_ kind: HistoryQuery.Kind, limit: Int = 10, _ conversation: HistoryQuery.Conversation = .direct("alice", "bob")) async throws -> [String] {
            guard case .messages(let found) = try store.loadHistory(HistoryQuery(conversation: conversation, kind: kind, limit: limit)) else { return ["not messages"] }
            return found.map(\.text)
        }
        let at = { (number: Int) in HistoryQuery.Reference.timestamp(base.adding(milliseconds: Int64(number) * 1000)) }
        #expect(try await texts(.latest(after: nil), limit: 3) == ["m4", "m5", "m6"], "the newest, oldest first")
        #expect(try await texts(.latest(after: at(4))) == ["m5", "m6"])
        #expect(try await texts(.before(at(4)), limit: 2) == ["m2", "m3"])
        #expect(try await texts(.before(.msgid("id4")), limit: 2) == ["m2", "m3"], "a msgid reference excludes that message")
        #expect(try await texts(.after(.msgid("id2")), limit: 2) == ["m3", "m4"])
        #expect(try await texts(.around(.msgid("id3")), limit: 3) == ["m2", "m3", "m4"])
        #expect(try await texts(.around(at(3)), limit: 3) == ["m2", "m3", "m4"], "a timestamp's own instant is in the later half")
        #expect(try await texts(.between(at(1), at(5))) == ["m2", "m3", "m4"])
        #expect(try await texts(.latest(after: nil), .direct("bob", "carol")).isEmpty, "bob and carol never talked")
        #expect(try await texts(.latest(after: nil), .group("#team")) == ["m8", "m9"])
        guard case .targets(let targets) = try store.loadHistory(HistoryQuery(
            conversation: .everything(account: "alice", groups: ["#team"]), kind: .targets(base, base.adding(milliseconds: 60_000)), limit: 10)) else {
            Issue.record("expected targets"); return
        }
        #expect(targets.map(\.key) == ["bob", "carol", "#team"], "conversations by their latest message")
        #expect(targets.map(\.isGroup) == [false, false, true])
        try await done()
    }


    @Test(arguments: StorageBackend.all) func pruningDropsOldMessagesAndTheirRecipientsOnly(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let base = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let messages = (0..<5).map { number in
            StoredMessage(id: "p\(number)", time: base.adding(milliseconds: Int64(number) * 1000), senderNick: "alice", senderAccount: "alice",
                          senderPrefix: "alice!~a@h", targetKind: .direct, target: "bob", command: "PRIVMSG", text: "m\(number)",
                          recipients: [StoredRecipient(account: "bob")])
        }
        try store.transaction { try $0.storeMessages(messages) }
        try store.transaction { try $0.deleteMessages(before: base.adding(milliseconds: 2000)) }
        guard case .messages(let kept) = try store.loadHistory(HistoryQuery(conversation: .direct("alice", "bob"), kind: .latest(after: nil), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(kept.map(\.text) == ["m2", "m3", "m4"])
        let state = try await store.loadDeliveryState(since: base.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
        #expect(state.undelivered["bob"]?.map(\.id) == ["p2", "p3", "p4"])
        // The pruned messages' recipient rows went with them: marking one of them delivered finds nothing.
        try store.transaction { try $0.updateRecipients([RecipientUpdate(messageID: "p0", recipient: "bob", deliveredAt: base)]) }
        #expect(try await store.loadDeliveryState(since: base.adding(milliseconds: -1), maxTrackedRecipients: 200_000).undelivered["bob"]?.count == 3)
        try await done()
    }


    /// A redaction deletes one message with its recipients' rows, also one written earlier in
    /// the same transaction (the PostgreSQL store gathers writes until something must see them).
    @Test(arguments: StorageBackend.all) func aRedactedMessageLeavesHistoryAndInboxes(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let base = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        func message(_ number: Int) -> StoredMessage {
            StoredMessage(id: "r\(number)", time: base.adding(milliseconds: Int64(number) * 1000), senderNick: "alice", senderAccount: "alice",
                          senderPrefix: "alice!~a@h", targetKind: .direct, target: "bob", command: "PRIVMSG", text: "m\(number)",
                          recipients: [StoredRecipient(account: "bob")])
        }
        try store.transaction { try $0.storeMessages([message(0), message(1)]) }
        try store.transaction { transaction in
            try transaction.storeMessages([message(2), message(3)])
            try transaction.deleteMessage(id: "r1")
            try transaction.deleteMessage(id: "r3")
            try transaction.deleteMessage(id: "never-stored")
        }
        guard case .messages(let kept) = try store.loadHistory(HistoryQuery(conversation: .direct("alice", "bob"), kind: .latest(after: nil), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(kept.map(\.text) == ["m0", "m2"])
        let state = try await store.loadDeliveryState(since: base.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
        #expect(state.undelivered["bob"]?.map(\.id) == ["r0", "r2"])
        // The id is free again: a message stored under it later is a new message with its own recipient.
        try store.transaction { try $0.storeMessages([message(3)]) }
        #expect(try await store.loadDeliveryState(since: base.adding(milliseconds: -1), maxTrackedRecipients: 200_000).undelivered["bob"]?.map(\.id) == ["r0", "r2", "r3"])
        try await done()
    }

    @Test(arguments: StorageBackend.all) func aBatchThatCannotBeStoredLeavesNothingBehind(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        func message(_ id: String, _ text: String) -> StoredMessage {
            StoredMessage(id: id, time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h",
                          targetKind: .direct, target: "bob", command: "PRIVMSG", text: text, recipients: [StoredRecipient(account: "bob")])
        }
        // The second message reuses an id: the insert fails, and so does the whole batch.
        #expect(throws: (any Error).self) {
            try store.transaction { try $0.storeMessages([message("d1", "first"), message("d1", "clash")]) }
        }
        guard case .messages(let found) = try store.loadHistory(HistoryQuery(conversation: .direct("alice", "bob"), kind: .latest(after: nil), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(found.isEmpty)
        // The statement is usable again afterwards.
        try store.transaction { try $0.storeMessages([message("d2", "later")]) }
        guard case .messages(let later) = try store.loadHistory(HistoryQuery(conversation: .direct("alice", "bob"), kind: .latest(after: nil), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(later.map(\.text) == ["later"])
        try await done()
    }


    @Test(arguments: StorageBackend.all) func aDeletedGroupTakesItsRowsAndARenamedOneKeepsThem(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let team = GroupRecord(name: "#team", key: "#team", createdAt: now, owner: "alice", members: ["alice": .owner, "bob": .member])
        func message(_ id: String) -> StoredMessage {
            StoredMessage(id: id, time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h", targetKind: .group,
                          target: "#team", command: "PRIVMSG", text: id, recipients: [StoredRecipient(account: "bob")])
        }
        func texts(_ key: String) throws -> [String] {
            guard case .messages(let found) = try store.loadHistory(HistoryQuery(conversation: .group(key), kind: .latest(after: nil), limit: 10)) else { return ["not messages"] }
            return found.map(\.text)
        }
        try store.transaction {
            try $0.saveGroup(team, previousKey: nil)
            try $0.storeMessages([message("first")])
            try $0.setReadMarker(account: "bob", conversation: "#team", time: now)
        }
        var renamed = team
        renamed.name = "#crew"
        renamed.key = "#crew"
        try store.transaction { try $0.saveGroup(renamed, previousKey: "#team") }
        #expect(try texts("#crew") == ["first"])
        #expect(try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000).readMarkers["bob"] == ["#crew": now])
        // Deleted, then made again under the same name in the same batch: a new group, empty.
        try store.transaction { try $0.deleteGroup(key: "#crew"); try $0.saveGroup(renamed, previousKey: nil) }
        #expect(try texts("#crew").isEmpty)
        let state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
        #expect(state.readMarkers["bob"] == nil)
        #expect(state.undelivered.isEmpty)
        try await done()
    }


    @Test(arguments: StorageBackend.all) func startUpLoadsABoundedWindowWhateverTheHistorysSize(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let base = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        // 5,000 messages bob received and never marked read (most IRC clients send no MARKREAD),
        // and three that carol has not received yet, the first of them the oldest of all.
        func message(_ number: Int, to recipient: String, delivered: Bool) -> StoredMessage {
            StoredMessage(id: "s\(number)", time: base.adding(milliseconds: Int64(number)), senderNick: "alice", senderAccount: "alice",
                          senderPrefix: "alice!~a@h", targetKind: .direct, target: recipient, command: "PRIVMSG", text: "\(number)",
                          recipients: [StoredRecipient(account: recipient, deliveredAt: delivered ? base : nil, deliveredNotified: delivered)])
        }
        var messages = [message(0, to: "carol", delivered: false)]
        messages += (1...5000).map { message($0, to: "bob", delivered: true) }
        messages += [message(5001, to: "carol", delivered: false), message(5002, to: "carol", delivered: false)]
        try store.transaction { try $0.storeMessages(messages) }

        let state = try await store.loadDeliveryState(since: base.adding(milliseconds: -1), maxTrackedRecipients: 100)
        #expect(state.undelivered["carol"]?.map(\.id) == ["s0", "s5001", "s5002"], "everything still waiting is loaded, however old")
        #expect(state.tracked.count <= 100 + 1, "the rest is the newest window only: \(state.tracked.count)")
        #expect(state.tracked.contains { $0.id == "s5000" })
        #expect(!state.tracked.contains { $0.id == "s1" })
        try await done()
    }


    @Test(arguments: StorageBackend.all) func updatesOfOneRecipientInOneBatchApplyInOrder(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let later = now.adding(milliseconds: 5000)
        let message = StoredMessage(id: "u1", time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h",
                                    targetKind: .direct, target: "bob", command: "PRIVMSG", text: "hi",
                                    recipients: [StoredRecipient(account: "bob")])
        try store.transaction { try $0.storeMessages([message]) }
        // Delivered, its receipt sent, then read, all in one batch (as one read burst of bob's
        // client may do); a second delivery time never replaces the first.
        try store.transaction {
            try $0.updateRecipients([
                RecipientUpdate(messageID: "u1", recipient: "bob", deliveredAt: now),
                RecipientUpdate(messageID: "u1", recipient: "bob", deliveredNotified: true),
                RecipientUpdate(messageID: "u1", recipient: "bob", deliveredAt: later, readAt: later),
            ])
        }
        guard case .messages(let found) = try store.loadHistory(HistoryQuery(
            conversation: .everything(account: "alice", groups: []), kind: .receipts(["u1"]), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(found.first?.recipients == [StoredRecipient(account: "bob", deliveredAt: now, readAt: later, deliveredNotified: true, readNotified: false)])
        try await done()
    }

    /// The storage thread hands a whole group commit to one transaction: many messages, their
    /// recipients' updates, markers and last-seen times, a group made halfway. Whatever a backend
    /// does to write them together, the result is the one of applying them in order.
    @Test(arguments: StorageBackend.all) func aGroupCommitsWritesLandAsTheyWereDecided(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        func message(_ id: String, to target: String, kind: StoredMessage.TargetKind = .direct, _ recipients: [String]) -> StoredMessage {
            StoredMessage(id: id, time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h",
                          targetKind: kind, target: target, command: "PRIVMSG", text: "text \(id)",
                          recipients: recipients.map { StoredRecipient(account: $0) })
        }
        let group = GroupRecord(name: "#Team", key: "#team", createdAt: now, owner: "alice", members: ["alice": .owner, "bob": .member, "carol": .member])
        try store.transaction { transaction in
            try transaction.storeMessages([message("d1", to: "bob", ["bob"]), message("d2", to: "carol", ["carol"])])
            try transaction.updateRecipients([RecipientUpdate(messageID: "d1", recipient: "bob", deliveredAt: now)])
            try transaction.setReadMarker(account: "bob", conversation: "alice", time: now.adding(milliseconds: 20))
            try transaction.recordLastSeen(account: "bob", at: now.adding(milliseconds: 1))
            try transaction.saveGroup(group, previousKey: nil)
            try transaction.storeMessages([message("g1", to: "#team", kind: .group, ["bob", "carol"])])
            try transaction.updateRecipients([RecipientUpdate(messageID: "g1", recipient: "carol", deliveredAt: now, readAt: now),
                                              RecipientUpdate(messageID: "d1", recipient: "bob", readAt: now.adding(milliseconds: 3))])
            // A marker never moves back, even within one transaction; the latest last seen wins.
            try transaction.setReadMarker(account: "bob", conversation: "alice", time: now.adding(milliseconds: 10))
            try transaction.setReadMarker(account: "carol", conversation: "#team", time: now.adding(milliseconds: 7))
            try transaction.recordLastSeen(account: "bob", at: now.adding(milliseconds: 2))
        }
        let state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
        #expect(state.undelivered.mapValues { $0.map(\.id) } == ["carol": ["d2"], "bob": ["g1"]])
        #expect(state.readMarkers["bob"]?["alice"] == now.adding(milliseconds: 20))
        #expect(state.readMarkers["carol"]?["#team"] == now.adding(milliseconds: 7))
        let bob = try await store.loadAccounts().first { $0.key == "bob" }
        #expect(bob?.lastSeen == now.adding(milliseconds: 2).date)
        guard case .messages(let found) = try store.loadHistory(HistoryQuery(
            conversation: .everything(account: "alice", groups: ["#team"]), kind: .receipts(["d1", "g1"]), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        let recipients = Dictionary(uniqueKeysWithValues: found.map { ($0.id, $0.recipients) })
        #expect(recipients["d1"] == [StoredRecipient(account: "bob", deliveredAt: now, readAt: now.adding(milliseconds: 3))])
        #expect(recipients["g1"]?.first { $0.account == "carol" } == StoredRecipient(account: "carol", deliveredAt: now, readAt: now))
        try await done()
    }

    /// A group message is one row: the members who had it as it was sent have no row of their own,
    /// and their state comes back from when they joined and how far they have read.
    @Test(arguments: StorageBackend.all) func groupMembersStateFollowsFromTheirPositions(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let later = now.adding(milliseconds: 10)
        let team = GroupRecord(name: "#team", key: "#team", createdAt: now, owner: "alice",
                               members: ["alice": .owner, "bob": .member, "carol": .member])
        func message(_ id: String, at time: Timestamp, online: [String], offline: [String] = []) -> StoredMessage {
            StoredMessage(id: id, time: time, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h", targetKind: .group,
                          target: "#team", command: "PRIVMSG", text: id,
                          recipients: online.map { StoredRecipient(account: $0, deliveredAt: time) } + offline.map { StoredRecipient(account: $0) })
        }
        try store.transaction {
            try $0.saveGroup(team, previousKey: nil)
            // bob is online, carol offline; dave joins after the first message.
            try $0.storeMessages([message("g1", at: now, online: ["bob"], offline: ["carol"])])
            try $0.setGroupMember(group: "#team", account: "dave", role: .member, voiced: false)
            try $0.storeMessages([message("g2", at: later, online: ["bob", "carol", "dave"])])
            try $0.setGroupReadPosition(account: "bob", group: "#team", time: now.adding(milliseconds: 5))
            // A read position never moves back.
            try $0.setGroupReadPosition(account: "bob", group: "#team", time: now.adding(milliseconds: 1))
        }
        func receipts() throws -> [String: [StoredRecipient]] {
            guard case .messages(let found) = try store.loadHistory(HistoryQuery(
                conversation: .everything(account: "alice", groups: ["#team"]), kind: .receipts(["g1", "g2"]), limit: 10)) else { return [:] }
            return Dictionary(uniqueKeysWithValues: found.map { ($0.id, $0.recipients) })
        }
        let readByBob = now.adding(milliseconds: 5)
        var expected: [String: [StoredRecipient]] = [
            "g1": [StoredRecipient(account: "bob", deliveredAt: now, readAt: readByBob, deliveredNotified: true, readNotified: true),
                   StoredRecipient(account: "carol")],
            "g2": ["bob", "carol", "dave"].map { StoredRecipient(account: $0, deliveredAt: later, deliveredNotified: true) },
        ]
        #expect(try receipts() == expected, "dave joined after g1: not one of its recipients")
        var state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
        #expect(state.undelivered.mapValues { $0.map(\.id) } == ["carol": ["g1"]])
        #expect(state.tracked.first { $0.id == "g2" }?.recipients == expected["g2"])

        // carol comes back (her row changes as before); the whole group is saved again (a member
        // who stays keeps the position she joined after); bob reads everything.
        try store.transaction {
            try $0.updateRecipients([RecipientUpdate(messageID: "g1", recipient: "carol", deliveredAt: later, deliveredNotified: true)])
            var saved = team
            saved.members["dave"] = .member
            try $0.saveGroup(saved, previousKey: nil)
            try $0.setGroupReadPosition(account: "bob", group: "#team", time: later)
        }
        expected["g1"]?[1] = StoredRecipient(account: "carol", deliveredAt: later, deliveredNotified: true)
        // One position per member: a read time is how far the member has read now.
        expected["g1"]?[0].readAt = later
        expected["g2"]?[0] = StoredRecipient(account: "bob", deliveredAt: later, readAt: later, deliveredNotified: true, readNotified: true)
        #expect(try receipts() == expected)
        state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
        #expect(state.undelivered.isEmpty)
        #expect(state.tracked.first { $0.id == "g2" }?.recipients == expected["g2"], "followed for carol's and dave's reads")
        try await done()
    }

    /// An author without a receipts client: the receipts of group members who have no row wait
    /// from when the author's first receipt did, until they are sent.
    /// A member who joined after the newest message is a recipient of the next one, even when that
    /// newest message was deleted in between (SQLite would give its rowid to the next message).
    @Test(arguments: StorageBackend.all) func aMemberWhoJoinedAfterARedactedMessageGetsTheNextOne(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let later = now.adding(milliseconds: 10)
        let team = GroupRecord(name: "#team", key: "#team", createdAt: now, owner: "alice", members: ["alice": .owner, "bob": .member])
        func message(_ id: String, at time: Timestamp, online: [String]) -> StoredMessage {
            StoredMessage(id: id, time: time, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h", targetKind: .group,
                          target: "#team", command: "PRIVMSG", text: id, recipients: online.map { StoredRecipient(account: $0, deliveredAt: time) })
        }
        try store.transaction {
            try $0.saveGroup(team, previousKey: nil)
            try $0.storeMessages([message("g1", at: now, online: ["bob"])])
            try $0.setGroupMember(group: "#team", account: "dave", role: .member, voiced: false)
        }
        try store.transaction { try $0.deleteMessage(id: "g1") }
        try store.transaction { try $0.storeMessages([message("g2", at: later, online: ["bob", "dave"])]) }
        guard case .messages(let found) = try store.loadHistory(HistoryQuery(
            conversation: .everything(account: "alice", groups: ["#team"]), kind: .receipts(["g2"]), limit: 10)) else {
            Issue.record("no receipts"); try await done(); return
        }
        #expect(found.first?.recipients.map(\.account) == ["bob", "dave"], "dave joined before g2 was sent")
        try await done()
    }

    @Test(arguments: StorageBackend.all) func groupReceiptsWaitWhileTheAuthorsReceiptsDo(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let team = GroupRecord(name: "#team", key: "#team", createdAt: now, owner: "alice", members: ["alice": .owner, "bob": .member])
        func message(_ id: String, at time: Timestamp) -> StoredMessage {
            StoredMessage(id: id, time: time, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h", targetKind: .group,
                          target: "#team", command: "PRIVMSG", text: id, recipients: [StoredRecipient(account: "bob", deliveredAt: time)])
        }
        let read = now.adding(milliseconds: 20)
        try store.transaction {
            try $0.saveGroup(team, previousKey: nil)
            try $0.storeMessages([message("g1", at: now)])
            try $0.setReceiptsPendingSince(account: "alice", time: now.adding(milliseconds: 5))
            try $0.storeMessages([message("g2", at: now.adding(milliseconds: 10))])
            try $0.setGroupReadPosition(account: "bob", group: "#team", time: read)
        }
        func bob() async throws -> [String: StoredRecipient] {
            let state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
            return Dictionary(uniqueKeysWithValues: state.tracked.compactMap { message in message.recipients.first.map { (message.id, $0) } })
        }
        #expect(try await bob() == [
            "g1": StoredRecipient(account: "bob", deliveredAt: now, readAt: read, deliveredNotified: true, readNotified: false),
            "g2": StoredRecipient(account: "bob", deliveredAt: now.adding(milliseconds: 10), readAt: read, deliveredNotified: false, readNotified: false),
        ])
        // The author's receipts are sent: nothing waits any more.
        try store.transaction { try $0.setReceiptsPendingSince(account: "alice", time: nil) }
        #expect(try await bob().isEmpty)
        try await done()
    }

    /// A direct message its recipient had as it was sent has no recipient row: its state comes
    /// back from the message (delivered at its time, unread, its delivered receipt waiting only if
    /// the author's receipts did since before), at start-up and in RECEIPTS STATUS; a read writes
    /// the row, and the state then comes back from it.
    @Test(arguments: StorageBackend.all) func aDirectMessageHadAtOnceKeepsItsStateWithoutARow(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let waitFrom = now.adding(milliseconds: 5)
        let later = now.adding(milliseconds: 10)
        func direct(_ id: String, at time: Timestamp, to recipient: String = "bob", command: String = "PRIVMSG", online: Bool = true,
                    notified: Bool = true) -> StoredMessage {
            StoredMessage(id: id, time: time, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h", targetKind: .direct,
                          target: recipient, command: command, text: id,
                          recipients: command == "TAGMSG" ? [] : [StoredRecipient(account: recipient, deliveredAt: online ? time : nil,
                                                                                  deliveredNotified: online && notified)])
        }
        try store.transaction {
            try $0.storeMessages([direct("d1", at: now), direct("gone", at: now), direct("t1", at: now, command: "TAGMSG"),
                                  direct("off", at: now, to: "carol", online: false)])
            // alice's receipts wait from here on (she has no receipts client): d2's delivered
            // receipt is not sent yet.
            try $0.setReceiptsPendingSince(account: "alice", time: waitFrom)
            try $0.storeMessages([direct("d2", at: later, notified: false)])
            try $0.deleteMessage(id: "gone")
        }
        if let sqlite = store as? SQLiteChatStore {
            #expect(try await sqlite.rowCount(of: "direct_recipients") == 1, "only carol's, who was offline")
            #expect(try await sqlite.rowCount(of: "message_recipients") == 0, "a direct message's recipient has a row of its own kind")
        }
        let delivered = StoredRecipient(account: "bob", deliveredAt: now, deliveredNotified: true)
        let waiting = StoredRecipient(account: "bob", deliveredAt: later, deliveredNotified: false)
        func followed(_ state: DeliveryState) -> [String: [StoredRecipient]] {
            Dictionary(uniqueKeysWithValues: state.tracked.map { ($0.id, $0.recipients) })
        }
        #expect(try store.alicesDirectReceipts(["d1", "d2", "t1"]) == ["d1": [delivered], "d2": [waiting], "t1": []])
        var state = try await store.deliveryState(since: now.adding(milliseconds: -1))
        #expect(followed(state) == ["d1": [delivered], "d2": [waiting], "off": [StoredRecipient(account: "carol")]],
                "what a restart follows; a TAGMSG has no recipient")
        #expect(state.undelivered.mapValues { $0.map(\.id) } == ["carol": ["off"]])
        #expect(state.receiptsPendingSince == ["alice": waitFrom])

        // bob reads both (after a restart, as before one); d1's read receipt is sent, d2's waits
        // with its delivered one. A read of a message deleted meanwhile writes nothing.
        try store.transaction {
            try $0.updateRecipients([RecipientUpdate(messageID: "d1", recipient: "bob", readAt: later, readNotified: true),
                                     RecipientUpdate(messageID: "d2", recipient: "bob", readAt: later, readNotified: false),
                                     RecipientUpdate(messageID: "gone", recipient: "bob", readAt: later, readNotified: true)])
        }
        if let sqlite = store as? SQLiteChatStore {
            #expect(try await sqlite.rowCount(of: "direct_recipients") == 3)
        }
        let d2Read = StoredRecipient(account: "bob", deliveredAt: later, readAt: later, deliveredNotified: false, readNotified: false)
        #expect(try store.alicesDirectReceipts(["d1", "d2"]) == [
            "d1": [StoredRecipient(account: "bob", deliveredAt: now, readAt: later, deliveredNotified: true, readNotified: true)], "d2": [d2Read],
        ])
        state = try await store.deliveryState(since: now.adding(milliseconds: -1))
        #expect(followed(state)["d1"] == nil, "read and told: settled")
        #expect(followed(state)["d2"] == [d2Read])

        // alice comes back with a receipts client: both of d2's receipts are sent.
        try store.transaction {
            try $0.updateRecipients([RecipientUpdate(messageID: "d2", recipient: "bob", deliveredNotified: true),
                                     RecipientUpdate(messageID: "d2", recipient: "bob", readNotified: true)])
            try $0.setReceiptsPendingSince(account: "alice", time: nil)
        }
        state = try await store.deliveryState(since: now.adding(milliseconds: -1))
        #expect(followed(state).keys.sorted() == ["off"])
        try await done()
    }

    /// A direct message stored while its recipient was logged out waits for them: after a
    /// restart it is in their inbox and RECEIPTS STATUS says undelivered; once delivered it
    /// leaves the inbox and keeps when it was delivered, read and told.
    @Test(arguments: StorageBackend.all) func aDirectMessageWaitingForItsRecipientKeepsItsStateUntilDelivered(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let deliveredAt = now.adding(milliseconds: 50)
        let readAt = now.adding(milliseconds: 90)
        func offline(_ id: String, to recipient: String) -> StoredMessage {
            StoredMessage(id: id, time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h", targetKind: .direct,
                          target: recipient, command: "PRIVMSG", text: id, recipients: [StoredRecipient(account: recipient)])
        }
        try store.transaction { try $0.storeMessages([offline("c1", to: "carol"), offline("c2", to: "carol"), offline("d1", to: "dave")]) }
        #expect(try store.alicesDirectReceipts(["c1", "d1"]) == ["c1": [StoredRecipient(account: "carol")], "d1": [StoredRecipient(account: "dave")]])
        var state = try await store.deliveryState(since: now.adding(milliseconds: -1))
        #expect(state.undelivered.mapValues { $0.map(\.id) } == ["carol": ["c1", "c2"], "dave": ["d1"]])
        #expect(state.undelivered["carol"]?.map(\.text) == ["c1", "c2"], "replayed with their text")

        // carol logs in: both are delivered and alice told; carol reads c1 later.
        try store.transaction {
            try $0.updateRecipients([RecipientUpdate(messageID: "c1", recipient: "carol", deliveredAt: deliveredAt, deliveredNotified: true),
                                     RecipientUpdate(messageID: "c2", recipient: "carol", deliveredAt: deliveredAt, deliveredNotified: false)])
        }
        try store.transaction { try $0.updateRecipients([RecipientUpdate(messageID: "c1", recipient: "carol", readAt: readAt, readNotified: true)]) }
        let c1 = StoredRecipient(account: "carol", deliveredAt: deliveredAt, readAt: readAt, deliveredNotified: true, readNotified: true)
        let c2 = StoredRecipient(account: "carol", deliveredAt: deliveredAt, deliveredNotified: false)
        #expect(try store.alicesDirectReceipts(["c1", "c2", "d1"]) == ["c1": [c1], "c2": [c2], "d1": [StoredRecipient(account: "dave")]])
        state = try await store.deliveryState(since: now.adding(milliseconds: -1))
        #expect(state.undelivered.mapValues { $0.map(\.id) } == ["dave": ["d1"]], "carol's inbox is empty after a restart")
        #expect(Dictionary(uniqueKeysWithValues: state.tracked.map { ($0.id, $0.recipients) }) == ["c2": [c2], "d1": [StoredRecipient(account: "dave")]],
                "c1 is settled")
        try await done()
    }

    /// A message taken back takes its recipient's state with it: the next message, which SQLite
    /// stores at the same position when the deleted one was the newest, starts with its own.
    @Test(arguments: StorageBackend.all) func aDeletedMessagesRecipientStateDoesNotPassToTheNext(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let later = now.adding(milliseconds: 10)
        func direct(_ id: String, at time: Timestamp, delivered: Bool) -> StoredMessage {
            StoredMessage(id: id, time: time, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h", targetKind: .direct,
                          target: "carol", command: "PRIVMSG", text: id,
                          recipients: [StoredRecipient(account: "carol", deliveredAt: delivered ? time : nil, deliveredNotified: delivered)])
        }
        try store.transaction { try $0.storeMessages([direct("away", at: now, delivered: false)]) }
        try store.transaction { try $0.deleteMessage(id: "away") }
        try store.transaction { try $0.storeMessages([direct("here", at: later, delivered: true)]) }
        #expect(try store.alicesDirectReceipts(["here"]) == ["here": [StoredRecipient(account: "carol", deliveredAt: later, deliveredNotified: true)]])
        #expect(try await store.deliveryState(since: now.adding(milliseconds: -1)).undelivered.isEmpty, "nothing waits for carol")
        try await done()
    }

    /// Text with the characters bulk-loading formats treat specially comes back as it was sent.
    @Test(arguments: StorageBackend.all) func anyTextComesBackAsItWasStored(backend: StorageBackend) async throws {
        let (store, done) = try await backend.open()
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let awkward = "back\\slash \\N tab\tnew\nline cr\r end \\. é 💬"
        let message = StoredMessage(id: "t1", time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a\\@h",
                                    targetKind: .direct, target: "bob", command: "PRIVMSG", text: awkward,
                                    clientTags: "+draft/reply=a\\sb;+x=\\N", recipients: [StoredRecipient(account: "bob")])
        try store.transaction { try $0.storeMessages([message]) }
        let history = try store.loadHistory(HistoryQuery(conversation: .direct("alice", "bob"), kind: .latest(after: nil), limit: 10))
        guard case .messages(let found) = history else { Issue.record("expected messages"); return }
        #expect(found.map(\.text) == [awkward])
        #expect(found.map(\.clientTags) == [message.clientTags])
        #expect(found.map(\.senderPrefix) == [message.senderPrefix])
        try await done()
    }
}

extension ChatStore {
    /// What RECEIPTS STATUS tells alice of her direct messages `ids`: each one's recipients.
    func alicesDirectReceipts(_ ids: [String]) throws -> [String: [StoredRecipient]] {
        guard case .messages(let found) = try loadHistory(HistoryQuery(
            conversation: .everything(account: "alice", groups: []), kind: .receipts(ids), limit: 10)) else { return [:] }
        return Dictionary(uniqueKeysWithValues: found.map { ($0.id, $0.recipients) })
    }

    /// What a restart loads: messages from `time` on, within the default bound.
    func deliveryState(since time: Timestamp) async throws -> DeliveryState {
        try await loadDeliveryState(since: time, maxTrackedRecipients: 200_000)
    }
}
