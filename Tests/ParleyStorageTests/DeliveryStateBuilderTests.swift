import ParleyCore
import ParleyStorage
import Testing

/// How a backend's rows become the messages a node follows, as plain values.
@Suite("Delivery state assembled from rows")
struct DeliveryStateBuilderTests {
    /// A group message whose only member without a row has a read position past it, while its
    /// author's receipts are not waiting: its read receipt counts as sent. A node's own start
    /// does not follow it; a node following a dead node's messages gets it still, as that
    /// position may have been stored by its own read since the death (the receipt unsent).
    @Test func aGroupMessageWhoseReceiptsCountAsSentIsKeptOnlyForAFollower() throws {
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        var ids = StoredIdentities()
        ids.addAccount(key: "alice", id: 1)
        ids.addAccount(key: "bob", id: 2)
        ids.setGroup(key: "#team", id: 10)
        var groups = DerivedRecipients()
        groups.addMember(group: 10, account: "alice", since: 0)
        groups.addMember(group: 10, account: "bob", since: 0)
        groups.addReadPosition(group: 10, account: "bob", time: now)
        var builder = DeliveryStateBuilder()
        builder.add(messageID: "n1.g1", recipient: nil, hasRecipientRow: false, groupPosition: (group: 10, position: 5)) {
            StoredMessage(id: "n1.g1", time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h",
                          targetKind: .group, target: "#team", command: "PRIVMSG", text: "")
        }
        builder.complete(with: groups, ids: ids)
        #expect(builder.build().tracked.isEmpty)
        let followed = builder.build(keepingSettled: true).tracked
        #expect(followed.map(\.id) == ["n1.g1"])
        #expect(followed.first?.recipients == [StoredRecipient(account: "bob", deliveredAt: now, readAt: now, deliveredNotified: true, readNotified: true)])
    }
}
