import NIOCore
import ParleyCore
import ParleyStorage

/// The shell's side of a cluster: payloads from other nodes are applied to the domain or
/// written to this node's connections; nodes that went away take their users with them.
extension ChatHost {
    /// Starts taking payloads from the other nodes and tells them this node has (re)started:
    /// they forget what they knew of its previous run and send what this node needs to know.
    /// Returns once it has caught up with them (`catchUpWithPeers`): called before the
    /// listeners are bound, so that no user sees the state read at start, which may lack what
    /// the others changed just before they heard of this node.
    func joinCluster() async {
        guard let cluster else { return }
        let peers = cluster.peerNodes
        beginCatchUp(waitingFor: peers, reloading: !peers.isEmpty)
        cluster.start(
            receive: { [weak self] source, payload in self?.receiveFromPeer(source, payload) },
            returned: { [weak self] node, payload in self?.payloadReturned(from: node, payload) },
            peerGone: { [weak self] node, untaken in await self?.peerGone(node, untaken: untaken) },
            rejoined: { [weak self] takenForDead in
                guard let self else { return }
                if takenForDead {
                    Task { await self.startOverAfterBeingTakenForDead() }
                } else {
                    self.announce(rejoin: true)
                }
            })
        announce(rejoin: false)
        await catchUpWithPeers()
    }

    /// Tells every peer this node is here, with its users (none at start; all of them after
    /// the database was lost for a while).
    private func announce(rejoin: Bool) {
        guard let cluster else { return }
        var payload = ByteBuffer()
        ClusterCodec.append(.hello(rejoin: rejoin), to: &payload)
        appendWhatThisNodeIs(to: &payload)
        for event in withCore({ $0.localSessionAnnouncements() }) { ClusterCodec.append(.event(event), to: &payload) }
        cluster.send(payload, to: nil)
    }

    /// What a node says of itself after its hello and in answer to another's: that it writes
    /// its own users' channel lines, and its name.
    private func appendWhatThisNodeIs(to payload: inout ByteBuffer) {
        guard let cluster else { return }
        ClusterCodec.append(.writesChannelLines, to: &payload)
        ClusterCodec.append(.nodeName(cluster.nodeName), to: &payload)
    }

    func receiveFromPeer(_ source: UInt16, _ payload: ByteBuffer) {
        guard let cluster else { return }
        let records: [ClusterRecord]
        do {
            records = try ClusterCodec.decode(payload)
        } catch {
            logger.error("unreadable payload from another node", metadata: ["node": "\(source)", "error": "\(error)"])
            return
        }
        cluster.notePeer(source)
        logger.trace("from another node", metadata: ["node": "\(source)", "records": "\(records.count)"])
        if queueWhileCatchingUp(records, from: source) { return }
        apply(records, from: source)
    }

    /// Applies what a peer sent, in order.
    private func apply(_ records: [ClusterRecord], from source: UInt16) {
        guard let cluster else { return }
        var writes: [ResolvedDelivery] = []
        // Consecutive events and channel lines are applied under one lock: a user's snapshot and
        // the settings of the channels it makes here show together, never one without the other.
        var pending: [ClusterRecord] = []
        func applyPending() {
            guard !pending.isEmpty else { return }
            let batch = pending
            pending.removeAll()
            writes += perform { core, outbox in
                for record in batch {
                    switch record {
                    case .event(let event):
                        core.applyClusterEvent(event, now: Self.now(), into: &outbox)
                    case .channelLine(let channel, let statusPrefix, let line):
                        core.deliverChannelLine(line, channel: channel, statusPrefix: statusPrefix, into: &outbox)
                    case .writesChannelLines:
                        core.peerWritesChannelLines(source)
                    case .nodeName(let name):
                        core.peerNamed(source, name)
                    default:
                        break
                    }
                }
            }
        }
        for record in records {
            switch record {
            case .event(let event):
                logger.debug("cluster event", metadata: ["node": "\(source)", "event": "\(event)"])
                pending.append(record)
                continue
            case .channelLine, .writesChannelLines, .nodeName:
                pending.append(record)
                continue
            default:
                break
            }
            applyPending()
            switch record {
            case .hello(let rejoin):
                // After a restart, whatever this node knew of the sender's previous run is
                // gone. Either way the sender learns this node's users.
                if !rejoin {
                    writes += perform { core, outbox in core.remoteNodeGone(source, now: Self.now(), into: &outbox) }
                }
                var reply = ByteBuffer()
                appendWhatThisNodeIs(to: &reply)
                for event in withCore({ $0.localSessionAnnouncements() + $0.transientChannelAnnouncements() }) {
                    ClusterCodec.append(.event(event), to: &reply)
                }
                cluster.send(reply, to: source)
                if !rejoin { answerHello(from: source) }
            case .event, .channelLine, .writesChannelLines, .nodeName:
                break  // gathered above
            case .lines(let connection, let lines):
                if let delivery = resolve(connection, line: lines, closeAfter: false) { writes.append(delivery) }
            case .close(let connection):
                if let delivery = resolve(connection, line: nil, closeAfter: true) { writes.append(delivery) }
            case .handedOver, .handedOverToSeveral:
                break  // for the sender, should this payload come back
            case .caughtUp:
                break  // after this node stopped waiting for it (`queueWhileCatchingUp`)
            }
        }
        applyPending()
        Self.write(writes)
    }

    /// A node that went away (the transport holds its lock meanwhile, so that no other node
    /// does this at the same time and it cannot come back): its users are gone, and this node
    /// takes over the undelivered messages it held and follows its messages' receipts.
    /// `untaken`: what was sent to it that it never took; the reads among them it never told
    /// their messages' authors of.
    func peerGone(_ node: UInt16, untaken: [ByteBuffer]) async {
        let noticed = Self.now()
        Self.write(perform { core, outbox in core.remoteNodeGone(node, now: noticed, into: &outbox) })
        guard let cluster, let shared = store as? any ClusterDeliveryStore else { return }
        // Its users' messages are followed here for receipts from now on; first, so that
        // the messages taken over below and delivered at once send their receipts. So are
        // those of the nodes it followed, each under its own node's number: this node
        // forgets them when that node, not the one that followed them, starts again.
        do {
            let chat = withCore { $0.configuration }
            let followed = try await shared.followedMessages(
                ofNode: node, follower: cluster.nodeName, since: Self.now().adding(milliseconds: -chat.historyRetentionMilliseconds),
                maxTrackedRecipients: chat.maxTrackedRecipients)
            for (sentThrough, messages) in followed where sentThrough != node {
                logger.info("took over following the receipts of a node that went away before the one that followed them",
                            metadata: ["node": "\(sentThrough)", "followedBy": "\(node)", "messages": "\(messages.count)"])
            }
            try await follow(followed, lockedNode: node, untakenReads: Self.reads(in: untaken), noticed: noticed, cluster: cluster, store: shared)
        } catch {
            logger.error("could not follow the receipts of a node that went away", metadata: ["node": "\(node)", "error": "\(error)"])
        }
        do {
            let adopted = try await shared.adoptUndelivered(ofNode: node, holder: cluster.nodeName)
            if !adopted.isEmpty {
                logger.info("took over undelivered messages of a node that went away", metadata: ["node": "\(node)", "messages": "\(adopted.count)"])
            }
            Self.write(perform { core, outbox in core.adoptUndelivered(adopted, from: node, now: Self.now(), into: &outbox) })
        } catch {
            // They stay with the dead node's name: a node of that name that starts again
            // hands them over.
            logger.error("could not take over the undelivered messages of a node that went away",
                         metadata: ["node": "\(node)", "error": "\(error)"])
        }
        do {
            try await shared.recordConversationParties()
        } catch {
            // Done again when a node starts or another goes away.
            logger.warning("could not record the conversations a node that went away began", metadata: ["node": "\(node)", "error": "\(error)"])
        }
    }

    /// At start: the dead nodes' messages this node's previous run followed, if it died before
    /// any other node noticed (none took them over from it). Before the listeners are bound and
    /// the cluster is joined, so that no read nor hello comes first; this run holds its lock,
    /// so no other node takes them over meanwhile.
    func resumeFollowing() async {
        guard let cluster, let shared = store as? any ClusterDeliveryStore else { return }
        do {
            let chat = withCore { $0.configuration }
            let followed = try await shared.messagesFollowed(
                by: cluster.nodeName, since: Self.now().adding(milliseconds: -chat.historyRetentionMilliseconds),
                maxTrackedRecipients: chat.maxTrackedRecipients)
            for (node, messages) in followed {
                logger.info("follows the receipts of a node that went away again, as this node's previous run did",
                            metadata: ["node": "\(node)", "messages": "\(messages.count)"])
            }
            try await follow(followed, lockedNode: nil, untakenReads: [], noticed: Self.now(), cluster: cluster, store: shared)
        } catch {
            logger.error("could not follow again the receipts this node followed for nodes that went away", metadata: ["error": "\(error)"])
        }
    }

    /// Follows the messages of dead nodes (`ClusterDeliveryStore.followedMessages`,
    /// `messagesFollowed`), each under the node they were sent through: this node forgets them
    /// when that node starts again. Unlike `lockedNode` (the transport holds its lock meanwhile),
    /// such a node may start again while they are loaded, and say hello before they are adopted
    /// here, so that they would never be forgotten: the store is asked once they are.
    private func follow(_ followed: [(sentThrough: UInt16, messages: [StoredMessage])], lockedNode: UInt16?, untakenReads: [UntakenRead],
                        noticed: Timestamp, cluster: any ClusterTransport, store shared: any ClusterDeliveryStore) async throws {
        for (node, messages) in followed {
            Self.write(perform { core, outbox in
                core.adoptFollowed(messages, from: node, untakenReads: untakenReads, noticed: noticed, now: Self.now(), into: &outbox)
            })
        }
        let unlocked = followed.map(\.sentThrough).filter { $0 != lockedNode }
        guard !unlocked.isEmpty else { return }
        let restarted = Set(unlocked).subtracting(try await shared.stillFollowed(unlocked, by: cluster.nodeName))
        guard !restarted.isEmpty else { return }
        Self.write(perform { core, _ in
            for node in restarted.sorted() { core.forgetFollowed(ofDeadNode: node) }
        })
    }

    /// The disclosed reads in payloads a dead node never took.
    static func reads(in payloads: [ByteBuffer]) -> [UntakenRead] {
        var reads: [UntakenRead] = []
        for payload in payloads {
            for record in (try? ClusterCodec.decode(payload)) ?? [] {
                if case .event(.read(let account, let conversation, let time, disclose: true)) = record {
                    reads.append(UntakenRead(account: account, conversation: conversation, time: time))
                }
            }
        }
        return reads
    }

    /// A payload for a node that died before taking it: the stored messages it handed to that
    /// node's connections wait for their recipients again. One handed to an account's
    /// connections on several nodes waits again once every one of those copies is back.
    func payloadReturned(from node: UInt16, _ payload: ByteBuffer) {
        guard let cluster, let shared = store as? any ClusterDeliveryStore,
              let records = try? ClusterCodec.decode(payload) else { return }
        var handOvers: [(messageID: String, account: String)] = []
        for record in records {
            switch record {
            case .handedOver(let messageID, let account):
                handOvers.append((messageID, account))
            case .handedOverToSeveral(let messageID, let account, let alsoVia):
                let allBack = returnedCopies.withLockedValue {
                    $0.copyBack(messageID: messageID, account: account, from: node, alsoVia: alsoVia, now: .now)
                }
                if allBack { handOvers.append((messageID, account)) }
            default:
                break
            }
        }
        guard !handOvers.isEmpty else { return }
        let returned = handOvers
        Task {
            do {
                let messages = try await shared.returnHandOvers(returned, holder: cluster.nodeName)
                logger.warning("messages did not reach a node that went away; they wait for their recipients again",
                               metadata: ["node": "\(node)", "messages": "\(messages.count)"])
                Self.write(perform { core, outbox in core.handOversReturned(messages, from: node, now: Self.now(), into: &outbox) })
            } catch {
                logger.error("could not mark messages undelivered again", metadata: ["node": "\(node)", "error": "\(error)"])
            }
        }
    }

    /// The other nodes took this node for dead while it was cut off from the database: they
    /// dropped its users and took over what it held. It starts over as a node that has just
    /// started: its users are disconnected (with a reason), the others' forgotten, and it holds
    /// only what the store says it holds; then it says hello as a new node, and reads the
    /// accounts and groups again once the others have caught up (new connections are refused
    /// until then: they would see this node's stale copy).
    func startOverAfterBeingTakenForDead() async {
        guard let cluster else { return }
        logger.warning("the other nodes took this node for dead: disconnecting its users and starting over")
        setRejoining(true)
        beginCatchUp(waitingFor: cluster.peerNodes, reloading: true)
        Self.write(perform { core, outbox in
            core.shutdown(reason: "This server lost contact with the rest of the network; please reconnect", now: Self.now(), into: &outbox)
            core.forgetRemoteSessions(now: Self.now(), into: &outbox)
            // Others hold some of it now: nothing is handed over until it is reloaded.
            core.forgetUndelivered()
            core.forgetFollowedForDeadNodes()
        })
        // What its users sent before is committed first: it may be among what is taken back.
        await storageWriterIdle()
        if let shared = store as? any ClusterDeliveryStore {
            do {
                let held = try await shared.adoptUndelivered(ofNode: cluster.nodeNumber, holder: cluster.nodeName)
                Self.write(perform { core, outbox in
                    core.adoptUndelivered(held, from: 0, now: Self.now(), into: &outbox)  // 0: no node is excluded
                })
            } catch {
                logger.error("could not reload the undelivered messages this node holds", metadata: ["error": "\(error)"])
            }
        }
        announce(rejoin: false)
        await catchUpWithPeers()
        setRejoining(false)
    }

    private func storageWriterIdle() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            storageWriter.whenDone { continuation.resume() }
        }
    }

    /// From now on, what peers send waits (`queueWhileCatchingUp`) until `catchUpWithPeers`.
    /// A catch-up already under way (a start over while starting) is extended, not replaced:
    /// what it queued and whoever waits for it are kept.
    private func beginCatchUp(waitingFor peers: Set<UInt16>, reloading: Bool) {
        catchUp.withLockedValue { catchUp in
            guard catchUp != nil else {
                catchUp = CatchUp(waitingFor: peers, reloads: reloading)
                return
            }
            catchUp!.waitingFor.formUnion(peers)
            catchUp!.reloads = catchUp!.reloads || reloading
        }
    }

    /// A node that has just started read the shared state: what this node decided before it
    /// heard of that node (and so did not send it) must be in the store before it reads again;
    /// what this node decides from now on reaches it as records. `caughtUp` says so.
    private func answerHello(from source: UInt16) {
        guard let cluster else { return }
        storageWriter.whenDone {
            var answer = ByteBuffer()
            ClusterCodec.append(.caughtUp, to: &answer)
            cluster.send(answer, to: source)
        }
    }

    /// Keeps what a peer sent while this node catches up, noting its `caughtUp`; false when
    /// this node is not catching up (the records are to be applied now). A hello is answered
    /// at once (and again when it is applied; a second `caughtUp` changes nothing): two nodes
    /// that start together each wait for the other's answer.
    private func queueWhileCatchingUp(_ records: [ClusterRecord], from source: UInt16) -> Bool {
        let (queued, finished) = catchUp.withLockedValue { catchUp -> (Bool, [CheckedContinuation<Void, Never>]) in
            guard catchUp != nil else { return (false, []) }
            if records.contains(.caughtUp) { catchUp!.waitingFor.remove(source) }
            catchUp!.queued.append((source, records.filter { $0 != .caughtUp }))
            guard catchUp!.waitingFor.isEmpty else { return (true, []) }
            defer { catchUp!.finished = [] }
            return (true, catchUp!.finished)
        }
        if queued, records.contains(.hello(rejoin: false)) { answerHello(from: source) }
        for waiter in finished { waiter.resume() }
        return queued
    }

    /// Waits until every peer known at the hello has answered `caughtUp` (or `catchUpTimeout`
    /// passed: a peer that died meanwhile never answers), reads the accounts and groups from
    /// the store, which now hold all the peers decided before hearing of this node, and then
    /// applies what they sent since, in order. Records already in the store are applied twice:
    /// the domain takes a change it already has as nothing new.
    private func catchUpWithPeers() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let answered = catchUp.withLockedValue { catchUp -> Bool in
                guard catchUp != nil, !catchUp!.waitingFor.isEmpty else { return true }
                catchUp!.finished.append(continuation)
                return false
            }
            if answered {
                continuation.resume()
                return
            }
            Task { [weak self, logger] in
                try? await Task.sleep(for: Self.catchUpTimeout)
                let late = self?.catchUp.withLockedValue { catchUp -> ([CheckedContinuation<Void, Never>], Set<UInt16>)? in
                    guard let finished = catchUp?.finished, !finished.isEmpty else { return nil }
                    catchUp!.finished = []
                    return (finished, catchUp!.waitingFor)
                }
                guard let (finished, silent) = late else { return }
                logger.warning("cluster: some nodes did not answer this node's hello in time; reading the shared state without them",
                               metadata: ["nodes": "\(silent.sorted())"])
                for waiter in finished { waiter.resume() }
            }
        }
        let reloads = catchUp.withLockedValue { $0?.reloads ?? false }
        if reloads { await reloadSharedState() }
        // One caller applies the queue (a second, a start over during a start, leaves it to the
        // first): two would apply its records out of order.
        let drains = catchUp.withLockedValue { catchUp -> Bool in
            guard catchUp != nil, !catchUp!.draining else { return false }
            catchUp!.draining = true
            return true
        }
        while drains {
            let next = catchUp.withLockedValue { catchUp -> [(source: UInt16, records: [ClusterRecord])] in
                guard let queued = catchUp?.queued, !queued.isEmpty else {
                    catchUp = nil
                    return []
                }
                catchUp!.queued.removeAll()
                return queued
            }
            if next.isEmpty { break }
            for (source, records) in next { apply(records, from: source) }
        }
        logger.info("caught up with the other nodes", metadata: ["reloaded": "\(reloads)"])
    }

    /// Reads accounts and groups from the store and replaces this node's copy (its own users'
    /// changes, when it starts over, are committed first).
    private func reloadSharedState() async {
        await storageWriterIdle()
        do {
            let (accounts, groups) = (try await store.loadAccounts(), try await store.loadGroups())
            Self.write(perform { core, _ in core.reloadSharedState(accounts: accounts, groups: groups) })
        } catch {
            logger.error("could not read accounts and groups again after joining the other nodes", metadata: ["error": "\(error)"])
        }
    }

    /// How long a node that has just started waits for the others' `caughtUp`.
    static let catchUpTimeout: Duration = .seconds(5)
}

/// What peers sent while this node catches up with them after its hello (`ChatHost.catchUp`).
struct CatchUp: Sendable {
    /// The peers whose `caughtUp` has not come yet.
    var waitingFor: Set<UInt16>
    /// Whether the shared state is read again once they answered (alone at start, this node
    /// missed nothing).
    var reloads: Bool
    var queued: [(source: UInt16, records: [ClusterRecord])] = []
    /// `catchUpWithPeers`, waiting for the last answer.
    var finished: [CheckedContinuation<Void, Never>] = []
    /// Whether a `catchUpWithPeers` is applying the queue.
    var draining = false
}

/// Copies of a stored message handed to an account's connections on several nodes, of which
/// some came back (their node died before taking them). The message reached the account
/// through a node that took its copy, unless every copy comes back. Copies whose others never
/// come back (a live node took them) are forgotten after `kept`.
struct ReturnedCopies: Sendable {
    private struct Key: Hashable {
        var messageID: String
        var account: String
    }
    private var back: [Key: (nodes: Set<UInt16>, since: ContinuousClock.Instant)] = [:]
    /// Far longer than nodes take to notice deaths one after another.
    static let kept: Duration = .seconds(600)

    /// Notes the copy that came back from `node`; true once the copies sent to `alsoVia` are
    /// back too (then the entry goes).
    mutating func copyBack(messageID: String, account: String, from node: UInt16, alsoVia: [UInt16],
                           now: ContinuousClock.Instant) -> Bool {
        back = back.filter { now - $0.value.since < Self.kept }
        let key = Key(messageID: messageID, account: account)
        var entry = back[key] ?? (nodes: [], since: now)
        entry.nodes.insert(node)
        guard alsoVia.allSatisfy(entry.nodes.contains) else {
            back[key] = entry
            return false
        }
        back[key] = nil
        return true
    }
}
