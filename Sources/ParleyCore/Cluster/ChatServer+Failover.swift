import IRCWire

/// Messages that must survive a node's death: each undelivered message is held by one node,
/// which hands it over at its recipient's next login (`ClusterDeliveryStore` says which node).
extension ChatServer {
    /// A stored message goes to `account` in this call's lines: if they reach the account only
    /// through other nodes' connections, the shell marks them so that they come back should
    /// those nodes die before taking them (`Outbox.handOvers`); with several nodes, each copy
    /// names the others (the message was delivered unless all of them come back).
    mutating func noteHandOver(_ messageID: String, account: String, into outbox: inout Outbox) {
        guard isClustered, let holder = nickIndex[account], holder.accountKey == account else { return }
        var node: UInt16?
        var others: [UInt16] = []  // no allocation in the usual case: one node
        for connection in holder.connections {
            if isLocal(connection) { return }
            if node == nil {
                node = connection.node
            } else if connection.node != node, !others.contains(connection.node) {
                others.append(connection.node)
            }
        }
        guard let node else { return }
        guard !others.isEmpty else {
            outbox.handOvers.append(Outbox.HandOver(node: node, messageID: messageID, account: account))
            return
        }
        let nodes = [node] + others
        for target in nodes {
            outbox.handOvers.append(Outbox.HandOver(node: target, messageID: messageID, account: account, alsoVia: nodes.filter { $0 != target }))
        }
    }

    /// Messages this node handed to `deadNode`'s connections that never reached them: their
    /// recipients wait for them again (the store says so already), and get them at once if
    /// they are connected elsewhere. Their authors, if here, are told the delivery they were
    /// told of did not happen.
    public mutating func handOversReturned(_ messages: [StoredMessage], from deadNode: UInt16, now: Timestamp, into outbox: inout Outbox) {
        holdUndelivered(messages, except: deadNode, tellingAuthors: true, now: now, into: &outbox)
    }

    /// What a dead node held, now this node's to hand over.
    public mutating func adoptUndelivered(_ messages: [StoredMessage], from deadNode: UInt16, now: Timestamp, into outbox: inout Outbox) {
        holdUndelivered(messages, except: deadNode, tellingAuthors: false, now: now, into: &outbox)
    }

    /// The recent messages sent through a dead node (`ClusterDeliveryStore.followedMessages`):
    /// this node follows those whose receipts are not all sent from now on, as it
    /// follows its own, so that their authors get their receipts wherever they log in.
    /// `deadNode` is the node they were sent through, also when they come from the node that
    /// followed them before dying in turn: they are forgotten when `deadNode` starts again. Reads
    /// disclosed while no node followed them are applied from what this node heard of them: a
    /// read the store does not have (the dead node writes read times of the rows it follows), or
    /// a group read (the store has the position, not whether the author was told) that this
    /// node heard of once the death was `noticed`, or that the dead node never took
    /// (`untakenReads`: the reads among what was sent to it and not taken when it was declared
    /// dead). Receipts due are sent to the author if online, else kept for their login.
    public mutating func adoptFollowed(_ messages: [StoredMessage], from deadNode: UInt16, untakenReads: [UntakenRead] = [],
                                       noticed: Timestamp, now: Timestamp, into outbox: inout Outbox) {
        var updates: [RecipientUpdate] = []
        var authors: Set<String> = []
        let unheardAfter = readsUnheard(untakenReads)
        for var message in messages where tracked[message.id] == nil {
            guard let author = message.senderAccount else { continue }
            let conversation = message.targetKind == .group ? message.target : author
            for index in message.recipients.indices {
                let recipient = message.recipients[index]
                guard recipient.deliveredAt != nil, let read = disclosedReads[recipient.account]?[conversation], read.until >= message.time else { continue }
                if recipient.readAt == nil {
                    message.recipients[index].readAt = read.until
                    message.recipients[index].readNotified = false
                    updates.append(RecipientUpdate(messageID: message.id, recipient: recipient.account, readAt: read.until, readNotified: false))
                } else if message.targetKind == .group, recipient.readNotified,
                          read.notedAt >= noticed || unheardAfter[recipient.account]?[conversation].map({ message.time > $0 }) == true {
                    message.recipients[index].readNotified = false
                }
            }
            // The store gives those whose receipts all count as sent too: a group read made
            // here after the death was noticed may be stored already, and counts as sent there.
            if message.recipients.allSatisfy(\.isSettled) { continue }
            remember(message)
            followedForDeadNodes[deadNode, default: []].append(message.id)
            for recipient in message.recipients {
                if let delivered = recipient.deliveredAt, !recipient.deliveredNotified {
                    keepPendingReceipt(PendingReceipt(messageID: message.id, reader: recipient.account, state: .delivered, time: delivered), for: author)
                }
                if let read = recipient.readAt, !recipient.readNotified {
                    keepPendingReceipt(PendingReceipt(messageID: message.id, reader: recipient.account, state: .read, time: read), for: author)
                }
            }
            authors.insert(author)
        }
        if !updates.isEmpty { outbox.actions.append(.updateRecipients(updates)) }
        for author in authors.sorted() {
            var context = CommandContext(connection: Self.nobody, now: now, label: nil)
            flushPendingReceipts(of: author, &context, &outbox)
        }
    }

    /// For each reader and conversation with a read the dead node never took: the position it
    /// knew, the last read disclosed before the first it missed (reads are disclosed in order,
    /// and each sender's rows are taken in order). The dead node sent no read receipt for a
    /// message after that position. With no earlier read in what this node kept, it may have
    /// known an older position from the store: its receipts up to there may then come twice.
    private func readsUnheard(_ untakenReads: [UntakenRead]) -> [String: [String: Timestamp]] {
        var firstUntaken: [String: [String: Timestamp]] = [:]
        for read in untakenReads {
            let earliest = min(read.time, firstUntaken[read.account]?[read.conversation] ?? read.time)
            firstUntaken[read.account, default: [:]][read.conversation] = earliest
        }
        var knownUntil: [String: [String: Timestamp]] = [:]
        for (account, conversations) in firstUntaken {
            for (conversation, first) in conversations {
                let disclosed = disclosedReads[account]?[conversation].map { $0.earlier + [$0.until] } ?? []
                knownUntil[account, default: [:]][conversation] = disclosed.last { $0 < first } ?? Timestamp(millisecondsSince1970: 0)
            }
        }
        return knownUntil
    }

    /// A dead node whose messages this node followed starts again: it follows them itself.
    public mutating func forgetFollowed(ofDeadNode node: UInt16) {
        guard let ids = followedForDeadNodes.removeValue(forKey: node) else { return }
        let forgotten = Set(ids)
        for id in ids { forgetTracked(id) }
        for (author, receipts) in pendingReceipts where receipts.contains(where: { forgotten.contains($0.messageID) }) {
            let kept = receipts.filter { !forgotten.contains($0.messageID) }
            pendingReceipts[author] = kept.isEmpty ? nil : kept
        }
    }

    /// After the other nodes took this node for dead: the node that noticed took over what
    /// this one followed for dead nodes, along with its own messages.
    public mutating func forgetFollowedForDeadNodes() {
        for node in followedForDeadNodes.keys.sorted() { forgetFollowed(ofDeadNode: node) }
    }

    /// A read disclosed to authors (`disclosedReads`); it never moves back.
    mutating func noteDisclosedRead(account: String, conversation: String, time: Timestamp, now: Timestamp) {
        guard let previous = disclosedReads[account]?[conversation] else {
            disclosedReads[account, default: [:]][conversation] = DisclosedRead(until: time, notedAt: now)
            return
        }
        guard previous.until < time else { return }
        let earlier = (previous.earlier + [previous.until]).suffix(DisclosedRead.earlierKept)
        disclosedReads[account]?[conversation] = DisclosedRead(until: time, notedAt: now, earlier: Array(earlier))
    }

    /// After the other nodes took this node for dead (they took over what it held): forgets
    /// the undelivered messages it held, to hold those the store gives it again.
    public mutating func forgetUndelivered() {
        undelivered.removeAll()
    }

    /// After the other nodes took this node for dead: what they changed meanwhile (accounts
    /// created, groups made or changed) never reached it, so the stored state replaces its
    /// copy. Called once no session is left, so no group has members to keep.
    public mutating func reloadSharedState(accounts stored: [AccountRecord], groups: [GroupRecord]) {
        for account in stored {
            let seen = accounts[account.key]?.lastSeen
            accounts[account.key] = account
            if let seen, (account.lastSeen ?? .distantPast) < seen { accounts[account.key]?.lastSeen = seen }
        }
        for key in channels.keys where channels[key]?.isGroup == true { channels[key] = nil }
        groupsOfAccount.removeAll()
        for group in groups {
            let channel = ChatChannel(record: group)
            channels[channel.key] = channel
            for account in channel.accountRoles.keys { groupsOfAccount[account, default: []].insert(channel.key) }
        }
    }

    /// Every connection of another node this node knows of: gone, as after that node's death.
    public mutating func forgetRemoteSessions(now: Timestamp, into outbox: inout Outbox) {
        for node in Set(sessions.keys.map(\.node)).sorted() where node != configuration.clusterNode {
            remoteNodeGone(node, now: now, into: &outbox)
        }
    }

    private mutating func holdUndelivered(_ messages: [StoredMessage], except deadNode: UInt16, tellingAuthors: Bool,
                                          now: Timestamp, into outbox: inout Outbox) {
        var touched: Set<String> = []
        for message in messages {
            for recipient in message.recipients {
                let account = recipient.account
                if undelivered[account]?.contains(where: { $0.id == message.id }) == true { continue }
                tracked[message.id]?.recipients.update(account) {
                    $0.deliveredAt = nil
                    $0.deliveredNotified = false
                }
                undelivered[account, default: []].append(message)
                touched.insert(account)
                if tellingAuthors { tellAuthorDeliveryDeferred(message, recipient: account, now: now, into: &outbox) }
            }
        }
        for account in touched.sorted() {
            undelivered[account]?.sort { $0.time < $1.time }
            // Connected elsewhere already (it logged in again on a live node): handed over now,
            // preferably to a connection of this node.
            let connections = (nickIndex[account]?.accountKey == account ? nickIndex[account]?.connections ?? [] : [])
                .filter { $0.node != deadNode }
            guard let connection = connections.first(where: isLocal) ?? connections.first else { continue }
            var context = CommandContext(connection: Self.nobody, now: now, label: nil)
            deliverBacklog(to: connection, &context, &outbox)
        }
    }

    private mutating func tellAuthorDeliveryDeferred(_ message: StoredMessage, recipient: String, now: Timestamp, into outbox: inout Outbox) {
        guard let author = message.senderAccount, let holder = nickIndex[author], holder.accountKey == author else { return }
        let name = accounts[recipient]?.name ?? recipient
        let conversation = message.targetKind == .group ? " in \(channels[message.target]?.name ?? message.target)" : ""
        let note = standardLine("NOTE", message.command, "DELIVERY_DEFERRED", [name, message.id],
                                "Your message\(conversation) did not reach \(name): their server went away first; it will be delivered when \(name) reconnects")
        for connection in holder.connections where isLocal(connection) {
            send(note, to: connection, into: &outbox)
        }
    }
}
