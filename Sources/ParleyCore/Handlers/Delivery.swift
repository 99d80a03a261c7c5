import IRCWire
import NIOCore

/// A recent message from an account, followed for receipts.
struct TrackedMessage: Sendable {
    let id: String
    let author: String
    let time: Timestamp
    /// The group's key, or nil for a direct message.
    var groupKey: String?
    var recipients: RecipientStates
    /// Set aside by the memory bound while it waits for a recipient (`parkedTrackedOrder`).
    var parked = false
}

/// The delivery state of a tracked message's recipients, by account: the stored message's own
/// array (a dictionary per message cost an allocation and hashing for every message). A large
/// group's message gets an index by account at its first change, not when it is sent: most are
/// never changed while followed (their members read nothing, or read after they are forgotten),
/// and hashing every member of every message was a share of the stored fan-out.
struct RecipientStates: Sendable {
    private var recipients: [StoredRecipient]
    private var index: [String: Int]?

    init(_ recipients: [StoredRecipient]) {
        self.recipients = recipients
        index = nil
    }

    /// How many recipients are followed (what the memory bound counts).
    var count: Int { recipients.count }

    /// Whether someone has not received the message yet.
    var waitsForDelivery: Bool { recipients.contains { $0.deliveredAt == nil } }

    subscript(account: String) -> StoredRecipient? {
        if let index { return index[account].map { recipients[$0] } }
        return recipients.first { $0.account == account }
    }

    /// Every recipient's state by account, for looking up many of them at once.
    var byAccount: [String: StoredRecipient] {
        Dictionary(recipients.map { ($0.account, $0) }, uniquingKeysWith: { _, last in last })
    }

    /// Changes one recipient's state in place (the set of recipients never changes).
    mutating func update(_ account: String, _ change: (inout StoredRecipient) -> Void) {
        if recipients.count > 8 {
            if index == nil {
                index = Dictionary(recipients.indices.map { (recipients[$0].account, $0) }, uniquingKeysWith: { _, last in last })
            }
            if let position = index?[account] { change(&recipients[position]) }
        } else if let position = recipients.firstIndex(where: { $0.account == account }) {
            change(&recipients[position])
        }
    }
}

/// A receipt that waits for its author to come back with a receipts-capable client.
struct PendingReceipt: Sendable {
    let messageID: String
    let reader: String
    let state: ReceiptState
    let time: Timestamp
}

/// A message delivered to a reader who has not read it yet: followed in `tracked`, or in
/// `deliveredDirect` at `position`.
struct UnreadMessage: Sendable {
    let id: String
    let position: Int?
}

enum ReceiptState: String, Sendable {
    case pending, delivered, read
}

/// Offline delivery, receipts, read markers and chat history.
///
/// A message from or to an account is stored. Its sender's replies (the echo above all) are held
/// back until storage has committed it, so an echo means "on disk". A recipient account with no
/// connection gets it when it next logs in; authors get `RECEIPT` lines (capability
/// `parley.chat/receipts`, see docs/receipts.md) when it is delivered and when it is read.
extension ChatServer {
    static let readReceiptsSetting = "read-receipts"

    mutating func restoreDeliveryState(_ state: DeliveryState) {
        undelivered = state.undelivered
        readMarkers = state.readMarkers
        receiptsWaitingSince = state.receiptsPendingSince
        var tracked = state.tracked
        if let node = configuration.clusterNodeName, isClustered {
            // In a cluster each node follows receipts for the messages its own users sent
            // (their ids start with its name). Undelivered messages come from the store only
            // for the node that holds them (the one that stored them, or the one that took them
            // over when it died: ClusterDeliveryStore); held twice, they would be delivered twice.
            let own = node + "."
            tracked.removeAll { !$0.id.hasPrefix(own) }
        }
        for message in tracked {
            guard let author = message.senderAccount, !message.recipients.isEmpty else { continue }
            remember(message)
            for recipient in message.recipients {
                if let delivered = recipient.deliveredAt, !recipient.deliveredNotified {
                    keepPendingReceipt(PendingReceipt(messageID: message.id, reader: recipient.account, state: .delivered, time: delivered), for: author)
                }
                if let read = recipient.readAt, !recipient.readNotified {
                    keepPendingReceipt(PendingReceipt(messageID: message.id, reader: recipient.account, state: .read, time: read), for: author)
                }
            }
        }
    }

    public var undeliveredCount: Int { undelivered.values.reduce(0) { $0 + $1.count } }

    func isOnline(account: String) -> Bool { nickIndex[account]?.accountKey == account }

    /// A guest's identity in stored messages: `!` (never in a nick nor in a folded nick, so never
    /// an account key), the start time of the run of the node the guest is connected to, and the
    /// connection's number (which names the node too). It belongs to one connection of one run:
    /// whoever takes the nick later, guest or account, is someone else; and it is the same on every
    /// node, so that a conversation with a guest is one conversation whichever node stores it.
    func guestIdentity(of connection: ConnectionID) -> String {
        guestIdentityPrefix(ofNode: connection.node) + String(connection.rawValue, radix: 36)
    }

    /// The start of guest identities of a node's current run: this node's own, or the one another
    /// node's user snapshots carry (a node of an earlier version sends none: its guests then get
    /// this node's prefix, as they did before).
    func guestIdentityPrefix(ofNode node: UInt16) -> String {
        node == configuration.clusterNode ? guestIdentityPrefix : remoteGuestIdentityPrefixes[node] ?? guestIdentityPrefix
    }

    /// The connection that a guest identity belongs to, if it is still connected (to any node of
    /// this run) and still a guest.
    func guestSession(identity: String) -> Session? {
        guard let dot = identity.lastIndex(of: "."),
              let number = UInt64(identity[identity.index(after: dot)...], radix: 36) else { return nil }
        let connection = ConnectionID(number)
        guard identity[...dot] == guestIdentityPrefix(ofNode: connection.node),
              let session = sessions[connection], session.accountKey == nil else { return nil }
        return session
    }

    /// Who a nick names in stored conversations now: the account or guest holding it, else the
    /// offline account of that name; nil when it names nobody.
    func identity(named nick: String) -> String? {
        let folded = fold(nick)
        if let holder = nickIndex[folded] {
            if let account = holder.accountKey { return account }
            return holder.connections.first.map(guestIdentity(of:))
        }
        return accounts[folded] != nil ? folded : nil
    }

    /// The name to show for a party of a stored direct message: an account's name, or the nick a
    /// guest had (while the guest is still connected, its nick now).
    func displayName(ofParty key: String, storedNick: String?) -> String {
        if let account = accounts[key] { return account.name }
        if let nick = guestSession(identity: key)?.nick { return nick.name }
        return storedNick ?? key
    }

    // MARK: Storing what is sent

    /// Builds the stored form of a message and records who it is for; the caller delivers it
    /// live to the recipients who are online.
    mutating func storeDirect(_ relayed: IRCMessage, id: String, sender: Session, recipientKey: String?, guestRecipient: (identity: String, nick: String)?,
                              online: Bool, text: String, clientTags: [IRCTag], _ context: inout CommandContext, _ outbox: inout Outbox) {
        guard sender.accountKey != nil || recipientKey != nil else { return }
        var recipients: [StoredRecipient] = []
        if let recipientKey {
            var recipient = StoredRecipient(account: recipientKey, deliveredAt: online ? context.now : nil)
            if online, let author = sender.accountKey {
                recipient.deliveredNotified = sendReceipt(author: author, messageID: id, target: .account(recipientKey),
                                                          reader: recipientKey, state: .delivered, time: context.now, &context, &outbox)
            }
            if online { noteHandOver(id, account: recipientKey, into: &outbox) }
            recipients.append(recipient)
        }
        var stored = storedMessage(relayed, id: id, sender: sender, kind: .direct, target: recipientKey ?? guestRecipient?.identity ?? "",
                                   text: text, clientTags: clientTags, recipients: recipients, now: context.now)
        stored.targetName = recipientKey == nil ? guestRecipient?.nick : nil
        remember(stored)
        if !online, let recipientKey {
            undelivered[recipientKey, default: []].append(stored)
            counters.offlineStored &+= 1
        }
        context.pendingStores.append(stored)
    }

    /// Stores a TAGMSG (a reaction, a typing-free client tag) for CHATHISTORY only: it has no
    /// recipients, so nobody waits for it, counts it unread or gets receipts for it, and history
    /// replays it only to clients with draft/event-playback.
    /// Typing notifications are for now only: a TAGMSG is kept for history only when it carries
    /// some other client tag (a reaction, a reply).
    static func keepsTagMessage(_ clientTags: [IRCTag]) -> Bool {
        clientTags.contains { $0.key != "+typing" && $0.key != "+draft/typing" }
    }

    func keepForHistoryOnly(_ relayed: IRCMessage, id: String, sender: Session, kind: StoredMessage.TargetKind, target: String,
                            targetName: String?, clientTags: [IRCTag], _ context: inout CommandContext) {
        var stored = storedMessage(relayed, id: id, sender: sender, kind: kind, target: target, text: "",
                                   clientTags: clientTags, recipients: [], now: context.now)
        stored.targetName = targetName
        context.pendingStores.append(stored)
    }

    mutating func storeGroupMessage(_ relayed: IRCMessage, id: String, sender: Session, channel: ChatChannel, text: String,
                                    clientTags: [IRCTag], _ context: inout CommandContext, _ outbox: inout Outbox) {
        var recipients: [StoredRecipient] = []
        recipients.reserveCapacity(channel.accountRoles.count)
        var full: [String] = []
        // Looked up once for the message, not once per member; receipts that wait for the
        // author are kept together after the loop (one lookup of the author's list, one trim).
        let authorsReceiptConnections = sender.accountKey.map(receiptConnections(of:)) ?? []
        var waitingReceipts: [PendingReceipt] = []
        for member in channel.accountRoles.keys where member != sender.accountKey {
            if isOnline(account: member) {
                noteHandOver(id, account: member, into: &outbox)
                var recipient = StoredRecipient(account: member, deliveredAt: context.now)
                if let author = sender.accountKey {
                    if authorsReceiptConnections.isEmpty {
                        waitingReceipts.append(PendingReceipt(messageID: id, reader: member, state: .delivered, time: context.now))
                    } else {
                        recipient.deliveredNotified = sendReceipt(author: author, messageID: id, target: .name(channel.name), reader: member,
                                                                  state: .delivered, time: context.now,
                                                                  to: authorsReceiptConnections, &context, &outbox)
                    }
                }
                recipients.append(recipient)
            } else if (undelivered[member]?.count ?? 0) >= configuration.maxUndeliveredPerAccount {
                full.append(accounts[member]?.name ?? member)
            } else {
                recipients.append(StoredRecipient(account: member))
            }
        }
        if let author = sender.accountKey, !waitingReceipts.isEmpty {
            keepWaitingReceipts(waitingReceipts, for: author, since: context.now, &outbox)
        }
        let stored = storedMessage(relayed, id: id, sender: sender, kind: .group, target: channel.key,
                                   text: text, clientTags: clientTags, recipients: recipients, now: context.now)
        remember(stored)
        for recipient in recipients where recipient.deliveredAt == nil {
            undelivered[recipient.account, default: []].append(stored)
            counters.offlineStored &+= 1
        }
        context.pendingStores.append(stored)
        if !full.isEmpty {
            context.replies.append(standardLine("WARN", relayed.command, "INBOX_FULL", [channel.name, full.joined(separator: ",")],
                                                "Not kept for \(full.joined(separator: ", ")): too many messages are waiting for them"))
        }
    }

    /// Counts a message that will be stored against its sender's daily quota (an account, or a
    /// guest's address), or refuses it: flood control bounds the rate, this bounds the disk.
    mutating func chargeStorageQuota(of sender: Session, text: String, clientTags: [IRCTag], verb: String, target: String, now: Timestamp) throws(CommandError) {
        let key = sender.accountKey ?? "address " + sender.host
        var bytes = text.utf8.count
        for tag in clientTags { bytes += tag.key.utf8.count + tag.value.utf8.count + 2 }
        var usage = storedBytesToday[key] ?? (dayStart: now, bytes: 0)
        if now.milliseconds(since: usage.dayStart) >= Self.quotaDayMilliseconds { usage = (now, 0) }
        guard usage.bytes + bytes <= configuration.storedBytesPerAccountPerDay else {
            let wait = max(1, (Self.quotaDayMilliseconds - now.milliseconds(since: usage.dayStart)) / 60_000)
            throw .fail(verb, "QUOTA_EXCEEDED", target, description: "You have stored too much today; try again in \(wait) minute\(wait == 1 ? "" : "s")")
        }
        usage.bytes += bytes
        storedBytesToday[key] = usage
    }

    static let quotaDayMilliseconds: Int64 = 86_400_000

    func storedMessage(_ relayed: IRCMessage, id: String, sender: Session, kind: StoredMessage.TargetKind, target: String,
                       text: String, clientTags: [IRCTag], recipients: [StoredRecipient], now: Timestamp) -> StoredMessage {
        StoredMessage(
            id: id, time: now, senderNick: sender.nick?.name ?? "*", senderAccount: sender.accountKey,
            senderGuest: sender.accountKey == nil ? guestIdentity(of: sender.id) : nil, senderPrefix: sender.prefix, targetKind: kind, target: target, command: relayed.command, text: text,
            clientTags: Self.encodeClientTags(clientTags), recipients: recipients)
    }

    static func encodeClientTags(_ tags: [IRCTag]) -> String {
        guard !tags.isEmpty else { return "" }
        let line = IRCMessage(tags: tags, command: "X").wireString
        return String(line.dropFirst().prefix { $0 != " " })
    }

    static func decodeClientTags(_ text: String) -> [IRCTag] {
        guard !text.isEmpty, let message = try? IRCMessage(parsing: "@\(text) X") else { return [] }
        return message.tags
    }

    /// Follows a message for receipts (only messages from accounts have someone to tell); the
    /// recipients it reached and who have not read it yet wait for a read marker.
    mutating func remember(_ stored: StoredMessage) {
        guard let author = stored.senderAccount, !stored.recipients.isEmpty else { return }
        // In a cluster a message handed to another node's connection can come back undelivered
        // (that node died first), which `tracked`'s state per recipient follows.
        if stored.targetKind == .direct, !isClustered, stored.recipients.count == 1, let recipient = stored.recipients.first,
           recipient.deliveredAt != nil, recipient.readAt == nil {
            let position = deliveredDirect.append(id: stored.id, time: stored.time, author: author, reader: recipient.account)
            trackedRecipientCount += 1
            Self.append(UnreadMessage(id: stored.id, position: position), toUnread: &unread[recipient.account, default: [:]][author, default: []])
            forgetOldTrackedMessages()
            return
        }
        if let earlier = tracked[stored.id] { trackedRecipientCount -= earlier.recipients.count }
        tracked[stored.id] = TrackedMessage(
            id: stored.id, author: author, time: stored.time,
            groupKey: stored.targetKind == .group ? stored.target : nil, recipients: RecipientStates(stored.recipients))
        trackedRecipientCount += stored.recipients.count
        trackedOrder.append(stored.id)
        forgetOldTrackedMessages()
        if stored.targetKind == .group {
            Self.append(stored.id, toUnread: &groupFollowed[stored.target, default: []])
            return
        }
        for recipient in stored.recipients where recipient.deliveredAt != nil && recipient.readAt == nil {
            noteUnread(stored.id, reader: recipient.account, conversation: author)
        }
    }

    /// Unread messages followed per reader and conversation; a reader who never marks anything
    /// read (most IRC clients) would otherwise grow the list for the whole retention period.
    static let unreadFollowedPerConversation = 1000

    mutating func noteUnread(_ id: String, reader: String, conversation: String) {
        Self.append(UnreadMessage(id: id, position: nil), toUnread: &unread[reader, default: [:]][conversation, default: []])
    }

    private static func append<Element>(_ element: Element, toUnread list: inout [Element]) {
        list.append(element)
        // Trimmed in steps, not by one per message (removing from the front moves the rest).
        if list.count > unreadFollowedPerConversation + 100 {
            list.removeFirst(list.count - unreadFollowedPerConversation)
        }
    }

    /// Keeps `tracked` and `deliveredDirect` within `maxTrackedRecipients` (recipients, not
    /// messages: one message to a group of 1,000 follows 1,000 states), forgetting the oldest
    /// messages first. A message that still waits for a recipient (its delivered receipt is due
    /// when that recipient returns) is set aside in `parkedTrackedOrder`, and forgotten only when
    /// nothing else is left to forget (inbox limits bound those). Set aside once, not passed
    /// over at every new message: with hundreds of thousands waiting, passing over them was a
    /// tenth of the event loop's time.
    mutating func forgetOldTrackedMessages() {
        while trackedRecipientCount > configuration.maxTrackedRecipients {
            // Positions in `tracked`, not lookups by id: each lookup hashed the id and copied the
            // entry out, several times per message once the bound is reached.
            var oldest: Dictionary<String, TrackedMessage>.Index?
            while let front = trackedOrder.first {
                if let index = tracked.index(forKey: front), !tracked.values[index].parked {
                    oldest = index
                    break
                }
                trackedOrder.removeFirst()  // forgotten since
            }
            // The older of the two oldest, `deliveredDirect`'s or `tracked`'s, unless `tracked`'s
            // still waits for a recipient (then it is set aside below).
            if let direct = deliveredDirect.oldest,
               oldest.map({ direct.time < tracked.values[$0].time || tracked.values[$0].recipients.waitsForDelivery }) ?? true {
                deliveredDirect.forgetOldest()
                trackedRecipientCount -= 1
                continue
            }
            if let index = oldest {
                let id = trackedOrder.removeFirst()
                if tracked.values[index].recipients.waitsForDelivery {
                    tracked.values[index].parked = true
                    parkedTrackedOrder.append(id)
                } else {
                    forgetTracked(at: index)
                }
                continue
            }
            guard let parked = parkedTrackedOrder.popFirst() else { break }
            if let index = tracked.index(forKey: parked), tracked.values[index].parked { forgetTracked(at: index) }
        }
    }

    /// A message set aside while it waited, now delivered to everyone, goes back to the front of
    /// the order it is forgotten in (it is older than the rest).
    mutating func unparkIfDelivered(_ id: String) {
        guard let index = tracked.index(forKey: id), tracked.values[index].parked,
              !tracked.values[index].recipients.waitsForDelivery else { return }
        tracked.values[index].parked = false
        trackedOrder.prepend(id)
    }

    mutating func forgetTracked(_ id: String) {
        if let index = tracked.index(forKey: id) {
            forgetTracked(at: index)
        } else if deliveredDirect.forget(id) != nil {
            // Its entry in `unread` finds it forgotten.
            trackedRecipientCount -= 1
        }
    }

    private mutating func forgetTracked(at index: Dictionary<String, TrackedMessage>.Index) {
        trackedRecipientCount -= tracked.values[index].recipients.count
        tracked.remove(at: index)
    }

    /// Called after a command's handler: if it stored messages, its replies wait for the commit.
    mutating func finishDurably(_ context: inout CommandContext, into outbox: inout Outbox) {
        let request = StoreRequest(connection: context.connection, label: context.label, verb: context.verb)
        let stores = context.pendingStores
        context.pendingStores = []
        var success = Outbox()
        finish(&context, into: &success)
        outbox.linesQueued &+= success.linesQueued
        sessions[context.connection]?.storesInFlight += 1
        outbox.actions.append(.storeMessages(stores, afterCommit: success.deliveries, sender: request))
    }

    /// Called after a command's handler while earlier messages of the connection are still being
    /// committed: its replies (a PONG, say) queue behind their echoes, through the same ordered
    /// writer with nothing to store, so they cannot overtake them. Later commands still run at
    /// once; only their replies wait.
    mutating func finishBehindStores(_ context: inout CommandContext, into outbox: inout Outbox) {
        var replies = Outbox()
        finish(&context, into: &replies)
        outbox.linesQueued &+= replies.linesQueued
        guard !replies.deliveries.isEmpty else { return }
        sessions[context.connection]?.storesInFlight += 1
        outbox.actions.append(.storeMessages([], afterCommit: replies.deliveries,
                                             sender: StoreRequest(connection: context.connection, label: context.label, verb: context.verb)))
    }

    /// The shell committed these requests' messages and wrote their replies.
    public mutating func storesCommitted(_ requests: [StoreRequest]) {
        for request in requests { sessions[request.connection]?.storesInFlight -= 1 }
        if !toldStorageIsSlow.isEmpty { forgetStorageSlowNotices(for: requests) }
    }

    /// The store has been carrying out one batch since `workingSince` (the shell's word, once a
    /// second while it works). Past `storageSlowNoticeMilliseconds`, every connection whose
    /// messages (or replies queued behind them) wait hears so once with
    /// `NOTE * STORAGE_SLOW`: a database that stops answering holds echoes for as long as it
    /// does, and the sender should not take the silence for a lost message. Nothing is refused
    /// for it: the commit may still land, and each message is then echoed or refused as usual.
    public mutating func storageIsWorking(since workingSince: Timestamp, now: Timestamp, into outbox: inout Outbox) {
        let waited = now.milliseconds(since: workingSince)
        guard waited >= configuration.storageSlowNoticeMilliseconds else { return }
        let seconds = max(1, (waited + 500) / 1000)
        for session in sessions.values where isLocal(session.id) && session.storesInFlight > 0 && !toldStorageIsSlow.contains(session.id) {
            toldStorageIsSlow.insert(session.id)
            var context = CommandContext(connection: session.id, now: now, label: nil)
            context.replies.append(standardLine("NOTE", "*", "STORAGE_SLOW", [],
                "Your messages are waiting for the database (for \(seconds) second\(seconds == 1 ? "" : "s") now); each is echoed once it is stored, or refused if it cannot be"))
            finish(&context, into: &outbox)
        }
    }

    /// Connections told their messages wait hear so again only after these were carried out.
    private mutating func forgetStorageSlowNotices(for requests: [StoreRequest]) {
        for request in requests where (sessions[request.connection]?.storesInFlight ?? 0) <= 0 {
            toldStorageIsSlow.remove(request.connection)
        }
    }

    /// The shell could not commit these messages: they were not accepted. Nobody gets them
    /// later (they leave offline recipients' inboxes, no receipt follows them), and their sender
    /// learns so, one FAIL per target, without an echo. Recipients who were online got them
    /// before the commit; the FAIL says so, since sending again would give them a second copy.
    public mutating func messagesNotStored(_ messages: [StoredMessage], sender request: StoreRequest, now: Timestamp, into outbox: inout Outbox) {
        var seenLive: [String: Bool] = [:]
        var order: [String] = []
        for message in messages {
            for recipient in message.recipients where recipient.deliveredAt == nil {
                undelivered[recipient.account]?.removeAll { $0.id == message.id }
                if undelivered[recipient.account]?.isEmpty == true { undelivered[recipient.account] = nil }
            }
            forgetTracked(message.id)
            let target = message.targetKind == .group ? (channels[message.target]?.name ?? message.target) : displayName(ofParty: message.target, storedNick: message.targetName)
            // A guest is messaged only while connected.
            let live = message.recipients.contains { $0.deliveredAt != nil } || (message.targetKind == .direct && accounts[message.target] == nil)
            if seenLive[target] == nil { order.append(target) }
            seenLive[target] = (seenLive[target] ?? false) || live
        }
        guard let session = sessions[request.connection] else { return }
        session.storesInFlight -= 1
        if !toldStorageIsSlow.isEmpty { forgetStorageSlowNotices(for: [request]) }
        var context = CommandContext(connection: request.connection, now: now, label: request.label)
        context.verb = request.verb
        for target in order {
            let description: String
            switch (seenLive[target] == true, target.hasPrefix("#")) {
            case (false, _): description = "The message could not be saved, so it was not accepted; please send it again"
            case (true, false): description = "The message could not be saved, so it was not accepted: it was sent to \(target) as it happened, but it is not in your history"
            case (true, true): description = "The message could not be saved, so it was not accepted: it was sent to the members online as it happened, but it is not in the history and members offline will not get it"
            }
            render(.fail(request.verb, "STORAGE_FAILED", target, description: description), in: &context)
        }
        finish(&context, into: &outbox)
    }

    // MARK: Offline notice and replay

    /// `offlineNote`, reused within one second (the last-seen time cannot change while the
    /// account is offline, and the text counts in minutes).
    mutating func cachedOfflineNote(verb: String, target: String, accountKey: String, now: Timestamp) -> IRCMessage {
        let second = now.millisecondsSince1970 / 1000
        if offlineNotes.second != second { offlineNotes = (second, [:]) }
        let key = verb == "PRIVMSG" ? accountKey : verb + " " + accountKey
        let lastSeen = accounts[accountKey]?.lastSeen
        if let cached = offlineNotes.notes[key], cached.lastSeen == lastSeen { return cached.note }
        let note = offlineNote(verb: verb, target: target, accountKey: accountKey, now: now)
        offlineNotes.notes[key] = (lastSeen, note)
        return note
    }

    func offlineNote(verb: String, target: String, accountKey: String, now: Timestamp) -> IRCMessage {
        let lastSeen = accounts[accountKey]?.lastSeen.map { Timestamp($0) }
        let name = accounts[accountKey]?.name ?? target
        let human = lastSeen.map { "last seen \(Self.humanTime($0, now: now))" } ?? "never seen online"
        return standardLine("NOTE", verb, "RECIPIENT_OFFLINE", [name, lastSeen?.iso8601 ?? "never"],
                            "\(name) is offline (\(human)); the message will be delivered when \(name) reconnects")
    }

    /// "2026-11-25 14:03 UTC, 5 minutes ago"
    static func humanTime(_ time: Timestamp, now: Timestamp) -> String {
        let clock = time.minuteText
        let seconds = max(0, now.milliseconds(since: time) / 1000)
        let ago: String
        switch seconds {
        case ..<60: ago = "just now"
        case ..<3600: ago = "\(seconds / 60) minute\(seconds / 60 == 1 ? "" : "s") ago"
        case ..<86400: ago = "\(seconds / 3600) hour\(seconds / 3600 == 1 ? "" : "s") ago"
        default: ago = "\(seconds / 86400) day\(seconds / 86400 == 1 ? "" : "s") ago"
        }
        return "\(clock), \(ago)"
    }

    /// Sends an account that has just come online what it missed, one `chathistory` batch per
    /// conversation, oldest first within each; then the receipts that waited for it.
    mutating func deliverBacklog(to id: ConnectionID, _ context: inout CommandContext, _ outbox: inout Outbox) {
        guard let session = sessions[id], let account = session.accountKey else { return }
        if let backlog = undelivered.removeValue(forKey: account), !backlog.isEmpty {
            replay(backlog, to: id, account: account, &context, &outbox)
        }
        flushPendingReceipts(of: account, &context, &outbox)
    }

    private mutating func replay(_ backlog: [StoredMessage], to id: ConnectionID, account: String, _ context: inout CommandContext, _ outbox: inout Outbox) {
        guard let session = sessions[id] else { return }
        let count = backlog.count
        emit(IRCMessage(source: configuration.serverName, command: "NOTICE",
                        parameters: [session.replyName, "You have \(count) message\(count == 1 ? "" : "s") that arrived while you were offline"]),
             to: id, &context, &outbox)
        var updates: [RecipientUpdate] = []
        // One chathistory batch per conversation, oldest first within it; conversations in the
        // order of their first missed message. (Interleaved across conversations, a backlog from
        // many people became a batch per message: three lines for each.)
        var runs: [(target: String, lines: [IRCMessage])] = []
        var runOfTarget: [String: Int] = [:]
        for stored in backlog {
            let target: String
            if stored.targetKind == .group {
                guard let channel = channels[stored.target] else { continue }
                target = channel.name
            } else {
                target = stored.senderNick
            }
            // Without server-time a client would show the replay time; say when it was sent.
            let text = session.has(.serverTime) ? stored.text : "[sent \(stored.time.minuteText)] " + stored.text
            let line = storedLine(stored, target: stored.targetKind == .group ? target : (session.nick?.name ?? account), text: text)
            if let run = runOfTarget[target] {
                runs[run].lines.append(line)
            } else {
                runOfTarget[target] = runs.count
                runs.append((target, [line]))
            }

            var update = RecipientUpdate(messageID: stored.id, recipient: account, deliveredAt: context.now)
            if let message = tracked[stored.id] {
                // In place: a copy taken out and put back would copy its recipients too.
                tracked[stored.id]?.recipients.update(account) { $0.deliveredAt = context.now }
                if message.parked { unparkIfDelivered(stored.id) }
                // A group's messages are followed in the group's list already.
                if message.groupKey == nil { noteUnread(stored.id, reader: account, conversation: message.author) }
                update.deliveredNotified = sendReceipt(author: message.author, messageID: stored.id, target: .name(receiptTarget(for: message, reader: account)),
                                                       reader: account, state: .delivered, time: context.now, &context, &outbox)
            }
            updates.append(update)
            counters.offlineReplayed &+= 1
            if isClustered, !isLocal(id) {
                outbox.handOvers.append(Outbox.HandOver(node: id.node, messageID: stored.id, account: account))
            }
        }
        for run in runs {
            for line in batched(run.lines, type: "chathistory", parameters: [run.target], for: session) { emit(line, to: id, &context, &outbox) }
        }
        if !updates.isEmpty { outbox.actions.append(.updateRecipients(updates)) }
    }

    /// A stored message as a client sees it again: original source, time, id, account and
    /// client tags.
    func storedLine(_ stored: StoredMessage, target: String, text: String? = nil) -> IRCMessage {
        var tags = [IRCTag("time", stored.time.iso8601), IRCTag("msgid", stored.id)]
        if let author = stored.senderAccount { tags.append(IRCTag("account", accounts[author]?.name ?? author)) }
        tags.append(contentsOf: Self.decodeClientTags(stored.clientTags))
        return IRCMessage(tags: tags, source: stored.senderPrefix, command: stored.command,
                          parameters: stored.command == "TAGMSG" ? [target] : [target, text ?? stored.text])
    }

    /// Wraps lines in an IRCv3 batch for clients that asked for batches; others get them bare.
    mutating func batched(_ lines: [IRCMessage], type: String, parameters: [String], for session: Session) -> [IRCMessage] {
        guard session.has(.batch) else { return lines }
        let reference = makeBatchReference()
        var wrapped = [IRCMessage(source: configuration.serverName, command: "BATCH", parameters: ["+" + reference, type] + parameters)]
        for var line in lines {
            line.tags.insert(IRCTag("batch", reference), at: 0)
            wrapped.append(line)
        }
        wrapped.append(IRCMessage(source: configuration.serverName, command: "BATCH", parameters: ["-" + reference]))
        return wrapped
    }

    // MARK: Receipts

    /// The author's connections that take receipts.
    func receiptConnections(of author: String) -> [ConnectionID] {
        (nickIndex[author]?.connections ?? []).filter { sessions[$0]?.has(.receipts) == true }
    }

    /// What a receipt names as its conversation: a name, or an account whose display name is
    /// looked up only when the receipt is sent (most authors' clients take no receipts).
    enum ReceiptTarget {
        case name(String)
        case account(String)
    }

    /// Sends a receipt to the author's receipts-capable connections (`connections`, when the
    /// caller has looked them up); if there are none, keeps it. Returns whether it was sent.
    @discardableResult
    mutating func sendReceipt(author: String, messageID: String, target: ReceiptTarget, reader: String, state: ReceiptState,
                              time: Timestamp, to connections: [ConnectionID]? = nil,
                              _ context: inout CommandContext, _ outbox: inout Outbox) -> Bool {
        let connections = connections ?? receiptConnections(of: author)
        guard !connections.isEmpty else {
            keepWaitingReceipts([PendingReceipt(messageID: messageID, reader: reader, state: state, time: time)], for: author, since: time, &outbox)
            return false
        }
        let targetName = switch target {
        case .name(let name): name
        case .account(let key): accounts[key]?.name ?? key
        }
        let line = receiptLine(target: targetName, messageID: messageID, state: state, reader: accounts[reader]?.name ?? reader, time: time)
        for connection in connections { emit(line, to: connection, &context, &outbox) }
        return true
    }

    /// Receipts wait in memory for an author who has no receipts-capable connection, up to
    /// `maxPendingReceiptsPerAuthor` (the newest are kept). An author who never uses such a
    /// client would otherwise grow the list with every message read; older ones stay answerable
    /// on disk (RECEIPTS STATUS).
    mutating func keepPendingReceipt(_ receipt: PendingReceipt, for author: String) {
        let limit = configuration.maxPendingReceiptsPerAuthor
        guard limit > 0 else { return }
        pendingReceipts[author, default: []].append(receipt)
        // Trimmed in steps, not by one per receipt (removing from the front moves the rest).
        if let count = pendingReceipts[author]?.count, count > limit + limit / 10 {
            pendingReceipts[author]?.removeFirst(count - limit)
        }
    }

    /// Keeps receipts that wait for the author, as `keepPendingReceipt` does, and has the store
    /// note since when they wait, if it has not yet: from then until they are sent, the receipts
    /// of recipients who have no row of their own (group members, and the recipients of direct
    /// messages who had them as they were sent) are due too.
    mutating func keepWaitingReceipts(_ receipts: [PendingReceipt], for author: String, since time: Timestamp, _ outbox: inout Outbox) {
        let limit = configuration.maxPendingReceiptsPerAuthor
        guard limit > 0 else { return }
        if receiptsWaitingSince[author] == nil {
            receiptsWaitingSince[author] = time
            outbox.actions.append(.saveReceiptsPendingSince(account: author, time: time))
        }
        // One access to the author's list for both (each lookup hashes the name again).
        Self.append(receipts, trimmingTo: limit, &pendingReceipts[author, default: []])
    }

    private static func append(_ receipts: [PendingReceipt], trimmingTo limit: Int, _ list: inout [PendingReceipt]) {
        list.append(contentsOf: receipts)
        if list.count > limit + limit / 10 { list.removeFirst(list.count - limit) }
    }

    func receiptLine(target: String, messageID: String, state: ReceiptState, reader: String, time: Timestamp?) -> IRCMessage {
        IRCMessage(source: configuration.serverName, command: "RECEIPT",
                   parameters: [target, messageID, state.rawValue, reader, time?.iso8601 ?? "*"])
    }

    func receiptTarget(for message: TrackedMessage, reader: String) -> String {
        if let group = message.groupKey { return channels[group]?.name ?? group }
        return accounts[reader]?.name ?? reader
    }

    mutating func flushPendingReceipts(of author: String, _ context: inout CommandContext, _ outbox: inout Outbox) {
        guard pendingReceipts[author]?.isEmpty == false || receiptsWaitingSince[author] != nil,
              nickIndex[author]?.connections.contains(where: { sessions[$0]?.has(.receipts) == true }) == true else { return }
        let waiting = pendingReceipts.removeValue(forKey: author) ?? []
        receiptsWaitingSince[author] = nil
        var updates: [RecipientUpdate] = []
        for receipt in waiting {
            let target = tracked[receipt.messageID].map { receiptTarget(for: $0, reader: receipt.reader) } ?? (accounts[receipt.reader]?.name ?? receipt.reader)
            sendReceipt(author: author, messageID: receipt.messageID, target: .name(target), reader: receipt.reader, state: receipt.state, time: receipt.time, &context, &outbox)
            updates.append(receipt.state == .read
                ? RecipientUpdate(messageID: receipt.messageID, recipient: receipt.reader, readNotified: true)
                : RecipientUpdate(messageID: receipt.messageID, recipient: receipt.reader, deliveredNotified: true))
        }
        if !updates.isEmpty { outbox.actions.append(.updateRecipients(updates)) }
        outbox.actions.append(.saveReceiptsPendingSince(account: author, time: nil))
    }

    /// The RECEIPT lines for messages read back from the store (RECEIPTS STATUS).
    func receiptStatusReplies(requested: [String], found: [StoredMessage], into context: inout CommandContext) {
        let byID = Dictionary(found.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        for messageID in requested {
            guard let stored = byID[messageID] else {
                render(.fail("RECEIPTS", "UNKNOWN_MESSAGE", messageID, description: "No message of yours with that id is being followed"), in: &context)
                continue
            }
            let followed = tracked[messageID]?.recipients.byAccount
            for recipient in stored.recipients {
                // Memory may be ahead of the disk for receipts decided a moment ago.
                let state = followed?[recipient.account] ?? recipient
                let target = stored.targetKind == .group ? (channels[stored.target]?.name ?? stored.target) : (accounts[recipient.account]?.name ?? recipient.account)
                let reader = accounts[recipient.account]?.name ?? recipient.account
                if let read = state.readAt {
                    context.replies.append(receiptLine(target: target, messageID: messageID, state: .read, reader: reader, time: read))
                } else if let delivered = state.deliveredAt {
                    context.replies.append(receiptLine(target: target, messageID: messageID, state: .delivered, reader: reader, time: delivered))
                } else {
                    context.replies.append(receiptLine(target: target, messageID: messageID, state: .pending, reader: reader, time: nil))
                }
            }
        }
    }

    /// `RECEIPTS STATUS <msgid>[,<msgid>...]` and `RECEIPTS READ [ON|OFF]`.
    mutating func handleReceipts(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let account = sessions[id]?.accountKey else {
            throw .fail("RECEIPTS", "ACCOUNT_REQUIRED", description: "Log in to an account to use receipts")
        }
        switch message.parameters[0].uppercased() {
        case "STATUS":
            guard message.parameters.count > 1 else { throw .fail("RECEIPTS", "NEED_MORE_PARAMS", description: "Usage: RECEIPTS STATUS <msgid>[,<msgid>...]") }
            // The store answers: it knows every message of the retention period, restarts included.
            let ids = Array(message.parameters[1].split(separator: ",").map(String.init).prefix(100))
            let ticket = nextTicket
            nextTicket += 1
            pendingWork[ticket] = .history(id, target: ids.joined(separator: ","), label: context.label, subcommand: "RECEIPTS")
            sessions[id]?.pendingTickets += 1
            outbox.actions.append(.loadHistory(ticket: ticket, query: HistoryQuery(conversation: .everything(account: account, groups: []), kind: .receipts(ids), limit: ids.count)))
            context.deferReplies()
        case "READ":
            var settings = accounts[account]?.settings ?? [:]
            if message.parameters.count > 1 {
                switch message.parameters[1].uppercased() {
                case "ON": settings[Self.readReceiptsSetting] = nil
                case "OFF": settings[Self.readReceiptsSetting] = "off"
                default: throw .fail("RECEIPTS", "INVALID_PARAMS", message.parameters[1], description: "Usage: RECEIPTS READ [ON|OFF]")
                }
                accounts[account]?.settings = settings
                outbox.actions.append(.saveAccountSettings(accountKey: account, settings: settings))
                publishAccount(account, into: &outbox)
            }
            let on = settings[Self.readReceiptsSetting] != "off"
            context.replies.append(IRCMessage(
                source: configuration.serverName, command: "RECEIPTS",
                parameters: ["READ", on ? "ON" : "OFF", on ? "Authors see when you read their messages" : "Authors never see when you read their messages"]))
        default:
            throw .fail("RECEIPTS", "INVALID_PARAMS", message.parameters[0], description: "Usage: RECEIPTS STATUS <msgid>[,...] or RECEIPTS READ [ON|OFF]")
        }
    }

    // MARK: Read markers (draft/read-marker)

    mutating func handleMarkRead(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        guard let target = message.parameters.first, !target.isEmpty else {
            throw .fail("MARKREAD", "NEED_MORE_PARAMS", description: "Usage: MARKREAD <target> [timestamp=YYYY-MM-DDThh:mm:ss.sssZ]")
        }
        // A guest's markers are kept for its connection only (in memory, never stored) and
        // forgotten when it closes; an account's sync its devices and outlive its connections.
        let account = session.accountKey ?? guestIdentity(of: id)
        let isGuest = session.accountKey == nil
        // Only conversations the user takes part in: a group they are a member of, a channel
        // they are in, or an existing account or connected user. Anything else would be a marker
        // for nothing, kept in memory (and for groups, on disk) on the say-so of the client.
        var conversation: String?
        var isTransientChannel = false
        if target.hasPrefix("#") {
            if let channel = channels[fold(target)],
               channel.isGroup ? channel.accountRoles[account] != nil : channel.contains(id) {
                conversation = channel.key
                isTransientChannel = !channel.isGroup
            }
        } else if isGuest {
            conversation = identity(named: target)
        } else {
            // An account's direct-message markers are stored: only for conversations with accounts.
            conversation = accounts[fold(target)]?.key
        }
        let current = conversation.flatMap { readMarkers[account]?[$0] }
        guard message.parameters.count > 1 else {
            // Asking about a conversation one is not part of reveals nothing: no marker.
            context.replies.append(markReadLine(target: target, time: current))
            return
        }
        let value = message.parameters[1]
        guard value.hasPrefix("timestamp="), let requested = Timestamp(iso8601: String(value.dropFirst(10))) else {
            throw .fail("MARKREAD", "INVALID_PARAMS", target, value, description: "Use timestamp=YYYY-MM-DDThh:mm:ss.sssZ")
        }
        guard let conversation else {
            throw .fail("MARKREAD", "INVALID_TARGET", target,
                        description: target.hasPrefix("#") ? "You are not in \(target)" : "There is no account named \(target)")
        }
        let time = min(requested, context.now)
        if let current, current >= time {
            context.replies.append(markReadLine(target: target, time: current))
            return
        }
        readMarkers[account, default: [:]][conversation] = time
        if isTransientChannel {
            // Not stored: kept in memory while its holder is on the network (transientMarkerHolders).
            rememberTransientMarker(of: account, in: conversation)
        } else if !isGuest {
            outbox.actions.append(.saveReadMarker(account: account, target: conversation, time: time))
        }
        let line = markReadLine(target: target, time: time)
        for connection in nickIndex[session.nick?.folded ?? ""]?.connections ?? [id] {
            if connection == id || sessions[connection]?.has(.readMarker) == true { emit(line, to: connection, &context, &outbox) }
        }
        // Read receipts: only from clients that opted in to receipts, and only if the user
        // has not turned them off. The marker above syncs the user's devices either way.
        let disclose = session.has(.receipts) && accounts[account]?.settings[Self.readReceiptsSetting] != "off"
        if disclose, !isGuest, target.hasPrefix("#"), !isTransientChannel {
            // The group's messages without a row per member are read from this position on.
            outbox.actions.append(.saveGroupReadPosition(account: account, group: conversation, time: time))
        }
        if isClustered, !isGuest {
            outbox.clusterEvents.append(.read(account: account, conversation: conversation, time: time, disclose: disclose))
            if disclose { noteDisclosedRead(account: account, conversation: conversation, time: time, now: context.now) }
        }
        sendReadReceipts(account: account, conversation: conversation, time: time, disclose: disclose, &context, &outbox)
    }

    /// Receipts for the messages this node follows that `account` has now read.
    mutating func sendReadReceipts(account: String, conversation: String, time: Timestamp, disclose: Bool,
                                   _ context: inout CommandContext, _ outbox: inout Outbox) {
        if let followed = groupFollowed[conversation] {
            sendGroupReadReceipts(account: account, group: conversation, followed: followed, time: time, disclose: disclose, &context, &outbox)
            return
        }
        guard let waiting = unread[account]?[conversation], !waiting.isEmpty else { return }
        var updates: [RecipientUpdate] = []
        var remaining: [UnreadMessage] = []
        for entry in waiting {
            let messageID = entry.id
            let author: String
            let sentAt: Timestamp
            if let position = entry.position {
                guard let message = deliveredDirect.message(at: position) else { continue }
                (author, sentAt) = (message.author, message.time)
            } else {
                guard let tracked = tracked[messageID] else { continue }
                (author, sentAt) = (tracked.author, tracked.time)
            }
            guard sentAt <= time else { remaining.append(entry); continue }
            guard disclose else { continue }
            if entry.position == nil { tracked[messageID]?.recipients.update(account) { $0.readAt = time } }
            // Only direct messages are in `unread` (a group's are in `groupFollowed`).
            let sent = sendReceipt(author: author, messageID: messageID, target: .account(account),
                                   reader: account, state: .read, time: time, &context, &outbox)
            updates.append(RecipientUpdate(messageID: messageID, recipient: account, readAt: time, readNotified: sent))
        }
        unread[account]?[conversation] = remaining.isEmpty ? nil : remaining
        if !updates.isEmpty { outbox.actions.append(.updateRecipients(updates)) }
    }

    /// `sendReadReceipts` in a group: the group's followed messages that `account` had and that
    /// its reads had not reached before.
    private mutating func sendGroupReadReceipts(account: String, group: String, followed: [String], time: Timestamp, disclose: Bool,
                                                _ context: inout CommandContext, _ outbox: inout Outbox) {
        let seen = groupReadsSeen[account]?[group]
        if let seen, seen >= time { return }
        groupReadsSeen[account, default: [:]][group] = time
        guard disclose else { return }
        var updates: [RecipientUpdate] = []
        for messageID in followed {
            guard let message = tracked[messageID], message.time <= time else { continue }
            if let seen, message.time <= seen { continue }
            var wasUnread = false
            self.tracked[messageID]?.recipients.update(account) { state in
                guard state.deliveredAt != nil, state.readAt == nil else { return }
                state.readAt = time
                wasUnread = true
            }
            guard wasUnread else { continue }
            let sent = sendReceipt(author: message.author, messageID: messageID, target: .name(receiptTarget(for: message, reader: account)),
                                   reader: account, state: .read, time: time, &context, &outbox)
            updates.append(RecipientUpdate(messageID: messageID, recipient: account, readAt: time, readNotified: sent))
        }
        if !updates.isEmpty { outbox.actions.append(.updateRecipients(updates)) }
    }

    func markReadLine(target: String, time: Timestamp?) -> IRCMessage {
        IRCMessage(source: configuration.serverName, command: "MARKREAD", parameters: [target, time.map { "timestamp=\($0.iso8601)" } ?? "*"])
    }

    /// A group was renamed: what waits in memory follows it (the store moves its copy itself),
    /// so offline members still get its messages and receipts name the new group.
    mutating func rekeyDeliveryState(from oldKey: String, to newKey: String) {
        for (account, messages) in undelivered where messages.contains(where: { $0.targetKind == .group && $0.target == oldKey }) {
            undelivered[account] = messages.map { message in
                guard message.targetKind == .group, message.target == oldKey else { return message }
                var moved = message
                moved.target = newKey
                return moved
            }
        }
        for (id, message) in tracked where message.groupKey == oldKey {
            tracked[id]?.groupKey = newKey
        }
        for (reader, conversations) in unread {
            if let ids = conversations[oldKey] {
                unread[reader]?[oldKey] = nil
                unread[reader]?[newKey] = ids
            }
        }
        if let ids = groupFollowed.removeValue(forKey: oldKey) { groupFollowed[newKey] = ids }
        for (reader, groups) in groupReadsSeen {
            if let time = groups[oldKey] {
                groupReadsSeen[reader]?[oldKey] = nil
                groupReadsSeen[reader]?[newKey] = time
            }
        }
        for (account, markers) in readMarkers {
            if let time = markers[oldKey] {
                readMarkers[account]?[oldKey] = nil
                readMarkers[account]?[newKey] = time
            }
        }
        for (account, reads) in disclosedReads {
            if let read = reads[oldKey] {
                disclosedReads[account]?[oldKey] = nil
                disclosedReads[account]?[newKey] = read
            }
        }
        if let holders = transientMarkerHolders.removeValue(forKey: oldKey) {
            transientMarkerHolders[newKey] = holders
            for holder in holders {
                transientMarkerKeys[holder] = transientMarkerKeys[holder]?.map { $0 == oldKey ? newKey : $0 }
            }
        }
    }

    mutating func rememberTransientMarker(of holder: String, in key: String) {
        transientMarkerHolders[key, default: []].insert(holder)
        var keys = transientMarkerKeys[holder, default: []]
        guard !keys.contains(key) else { return }
        keys.append(key)
        if keys.count > Self.maxTransientMarkersPerHolder {
            let oldest = keys.removeFirst()
            readMarkers[holder]?[oldest] = nil
            transientMarkerHolders[oldest]?.remove(holder)
            if transientMarkerHolders[oldest]?.isEmpty == true { transientMarkerHolders[oldest] = nil }
        }
        transientMarkerKeys[holder] = keys
    }

    /// A group takes a name: markers left from transient channels of that name go.
    mutating func forgetReadMarkers(ofTransientChannel key: String) {
        for holder in transientMarkerHolders.removeValue(forKey: key) ?? [] {
            readMarkers[holder]?[key] = nil
            if readMarkers[holder]?.isEmpty == true { readMarkers[holder] = nil }
            transientMarkerKeys[holder]?.removeAll { $0 == key }
            if transientMarkerKeys[holder]?.isEmpty == true { transientMarkerKeys[holder] = nil }
        }
    }

    /// The holder left the network: its markers for transient channels go (they were never stored).
    mutating func forgetTransientMarkers(of holder: String) {
        for key in transientMarkerKeys.removeValue(forKey: holder) ?? [] {
            readMarkers[holder]?[key] = nil
            transientMarkerHolders[key]?.remove(holder)
            if transientMarkerHolders[key]?.isEmpty == true { transientMarkerHolders[key] = nil }
        }
        if readMarkers[holder]?.isEmpty == true { readMarkers[holder] = nil }
    }

    /// A group was deleted: its messages, read markers and receipts go with it (the store deletes
    /// its copy), so a group created later under the same name starts empty.
    mutating func forgetDeliveryState(ofGroup key: String) {
        for (account, messages) in undelivered where messages.contains(where: { $0.targetKind == .group && $0.target == key }) {
            let kept = messages.filter { !($0.targetKind == .group && $0.target == key) }
            undelivered[account] = kept.isEmpty ? nil : kept
        }
        var forgotten: Set<String> = []
        for (id, message) in tracked where message.groupKey == key { forgotten.insert(id) }
        for id in forgotten { forgetTracked(id) }
        for (reader, conversations) in unread where conversations[key] != nil {
            unread[reader]?[key] = nil
        }
        groupFollowed[key] = nil
        for (reader, groups) in groupReadsSeen where groups[key] != nil {
            groupReadsSeen[reader]?[key] = nil
        }
        for (account, markers) in readMarkers where markers[key] != nil {
            readMarkers[account]?[key] = nil
        }
        for (account, reads) in disclosedReads where reads[key] != nil {
            disclosedReads[account]?[key] = nil
        }
        if !forgotten.isEmpty {
            for (author, receipts) in pendingReceipts where receipts.contains(where: { forgotten.contains($0.messageID) }) {
                let kept = receipts.filter { !forgotten.contains($0.messageID) }
                pendingReceipts[author] = kept.isEmpty ? nil : kept
            }
        }
    }

    // MARK: Housekeeping

    /// Drops what is older than the retention period, in memory and (through the store) on disk.
    mutating func pruneHistoryIfDue(now: Timestamp, into outbox: inout Outbox) {
        if let last = lastPrune, now.milliseconds(since: last) < 3_600_000 { return }
        lastPrune = now
        let cutoff = now.adding(milliseconds: -configuration.historyRetentionMilliseconds)
        for (account, messages) in undelivered {
            let kept = messages.filter { $0.time >= cutoff }
            undelivered[account] = kept.isEmpty ? nil : kept
        }
        tracked = tracked.filter { $0.value.time >= cutoff }
        trackedRecipientCount = tracked.values.reduce(0) { $0 + $1.recipients.count }
        trackedOrder = CircularBuffer(trackedOrder.filter { tracked[$0]?.parked == false })
        parkedTrackedOrder = CircularBuffer(parkedTrackedOrder.filter { tracked[$0]?.parked == true })
        deliveredDirect.forget(before: cutoff)
        trackedRecipientCount += deliveredDirect.count
        for (reader, conversations) in unread {
            var kept: [String: [UnreadMessage]] = [:]
            for (conversation, entries) in conversations {
                let live = entries.filter { entry in entry.position.map { deliveredDirect.message(at: $0) != nil } ?? (tracked[entry.id] != nil) }
                if !live.isEmpty { kept[conversation] = live }
            }
            unread[reader] = kept.isEmpty ? nil : kept
        }
        for (group, ids) in groupFollowed {
            let live = ids.filter { tracked[$0] != nil }
            groupFollowed[group] = live.isEmpty ? nil : live
        }
        storedBytesToday = storedBytesToday.filter { now.milliseconds(since: $0.value.dayStart) < Self.quotaDayMilliseconds }
        outbox.actions.append(.pruneHistory(before: cutoff))
    }
}
