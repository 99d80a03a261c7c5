import Foundation
import IRCWire
import NIOCore
@testable import ParleyCore

/// Drives `ChatServer` the way the network shell does, with plain values: connections are
/// numbers, time is a variable, and the slow work the domain asks for (password checks,
/// account creation) is carried out at once with real credentials.
struct CoreHarness {
    var server: ChatServer
    var now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
    var received: [ConnectionID: [String]] = [:]
    var closed: Set<ConnectionID> = []
    var lastSeenRecorded: [String: Timestamp] = [:]
    /// What the domain asked storage to keep, as a store would hold it.
    var savedGroups: [String: GroupRecord] = [:]
    /// How many times a whole group was saved (`.saveGroup`), its member list with it.
    var wholeGroupSaves = 0
    var storedMessages: [StoredMessage] = []
    var recipientUpdates: [RecipientUpdate] = []
    /// When set, commits and history reads wait in `deferredWork` until `completeDeferredWork()`,
    /// as they do while the storage thread is busy.
    var defersSlowWork = false
    private(set) var deferredWork: [CoreAction] = []
    /// Read markers the domain asked storage to save.
    var storedMarkerCount = 0
    /// When set, storage "fails": held-back replies become their failure replies.
    var storageFails = false
    /// When set, password checks wait (as behind a slow hash) until `completeDeferredChecks()`.
    var defersPasswordChecks = false
    private(set) var deferredChecks: [(ticket: UInt64, succeeded: Bool)] = []
    private var nextConnection: UInt64 = 1
    /// What this node published for the other nodes of a cluster, and the lines it wrote for
    /// their connections (`ClusterHarness` carries both across).
    var published: [ClusterEvent] = []
    var forwarded: [Outbox.Delivery] = []
    var closedRemotely: [ConnectionID] = []
    /// Lines for channel members on the nodes that write them to their own members.
    var channelLines: [Outbox.ChannelLine] = []

    init(configure: (inout ChatConfiguration) -> Void = { _ in }, accounts: [(String, String)] = []) {
        var configuration = ChatConfiguration()
        configuration.passwordIterations = 1024
        configure(&configuration)
        let records = accounts.map { name, password in
            AccountRecord(
                name: name, key: configuration.caseMapping.fold(name),
                credential: .derive(password: password, iterations: 1024),
                createdAt: Date(timeIntervalSince1970: 1_700_000_000), lastSeen: nil, email: nil)
        }
        server = ChatServer(configuration: configuration, accounts: records, startedAt: now)
    }

    mutating func connect(host: String = "127.0.0.1", secure: Bool = false) -> ConnectionID {
        let id = ConnectionID(UInt64(server.configuration.clusterNode) << ConnectionID.nodeShift | nextConnection)
        nextConnection += 1
        server.connectionOpened(id, host: host, isSecure: secure, now: now)
        return id
    }

    /// Opens a connection with the id given, as the shell's connection table would give it
    /// (`serial` above the slot bits).
    mutating func connect(slot: Int, serial: UInt64) -> ConnectionID {
        let id = ConnectionID(UInt64(server.configuration.clusterNode) << ConnectionID.nodeShift | serial << ConnectionID.slotBits | UInt64(slot))
        server.connectionOpened(id, host: "127.0.0.1", isSecure: false, now: now)
        return id
    }

    /// Sends raw lines from a client and returns (and takes out of its inbox) what that client
    /// received in response.
    @discardableResult
    mutating func send(_ id: ConnectionID, _ lines: String...) -> [String] {
        let before = received[id]?.count ?? 0
        for line in lines {
            var outbox = Outbox()
            let message = try! IRCMessage(parsing: line)
            server.receive(message, from: id, now: now, into: &outbox)
            apply(outbox)
        }
        let replies = Array((received[id] ?? []).dropFirst(before))
        received[id] = Array((received[id] ?? []).prefix(before))
        return replies
    }

    /// Registers a guest (or, with a password, an account holder via PASS) and clears its inbox.
    @discardableResult
    mutating func register(_ nick: String, password: String? = nil, caps: [String] = [], host: String = "127.0.0.1") -> ConnectionID {
        let id = connect(host: host)
        if !caps.isEmpty {
            send(id, "CAP LS 302", "CAP REQ :\(caps.joined(separator: " "))")
        }
        if let password { send(id, "PASS :\(nick):\(password)") }
        send(id, "NICK \(nick)", "USER \(nick) 0 * :\(nick) Example")
        if !caps.isEmpty { send(id, "CAP END") }
        received[id] = []
        return id
    }

    mutating func inbox(_ id: ConnectionID) -> [String] {
        defer { received[id] = [] }
        return received[id] ?? []
    }

    mutating func close(_ id: ConnectionID) {
        var outbox = Outbox()
        server.connectionClosed(id, reason: "Connection closed", now: now, into: &outbox)
        apply(outbox)
    }

    /// Completes the password checks started so far, oldest first (checks their completion
    /// starts stay deferred); returns how many were completed.
    @discardableResult
    mutating func completeDeferredChecks() -> Int {
        let checks = deferredChecks
        deferredChecks = []
        for check in checks {
            var outbox = Outbox()
            server.completePasswordCheck(ticket: check.ticket, succeeded: check.succeeded, now: now, into: &outbox)
            apply(outbox)
        }
        return checks.count
    }

    /// Carries out the deferred commits and history reads, in order.
    mutating func completeDeferredWork() {
        let work = deferredWork
        deferredWork = []
        defersSlowWork = false
        var outbox = Outbox()
        outbox.actions = work
        apply(outbox)
    }

    mutating func advance(milliseconds: Int64) {
        now = now.adding(milliseconds: milliseconds)
        var outbox = Outbox()
        server.tick(now: now, into: &outbox)
        apply(outbox)
    }

    mutating func apply(_ outbox: Outbox) {
        published.append(contentsOf: outbox.clusterEvents)
        channelLines.append(contentsOf: outbox.channelLines)
        for delivery in outbox.deliveries {
            guard server.isLocal(delivery.connection) else {
                forwarded.append(delivery)
                continue
            }
            // A delivery holds one or more whole lines.
            let bytes = Array(delivery.line.readableBytesView)
            precondition(bytes.suffix(2) == [13, 10], "every line ends in CR LF")
            for line in String(decoding: bytes.dropLast(2), as: UTF8.self).split(separator: "\r\n", omittingEmptySubsequences: false) {
                received[delivery.connection, default: []].append(String(line))
            }
        }
        for action in outbox.actions {
            var next = Outbox()
            switch action {
            case .close(let id) where !server.isLocal(id):
                closedRemotely.append(id)
            case .close(let id):
                closed.insert(id)
            case .checkPassword(let ticket, let credential, let password) where defersPasswordChecks:
                deferredChecks.append((ticket, credential.verify(password: password)))
            case .checkPassword(let ticket, let credential, let password):
                server.completePasswordCheck(ticket: ticket, succeeded: credential.verify(password: password), now: now, into: &next)
            case .createAccount(let ticket, let name, let key, let password, let email, let iterations):
                let record = AccountRecord(
                    name: name, key: key, credential: .derive(password: password, iterations: iterations),
                    createdAt: now.date, lastSeen: nil, email: email)
                server.completeAccountCreation(ticket: ticket, result: .created(record), now: now, into: &next)
            case .recordLastSeen(let key, let time):
                lastSeenRecorded[key] = time
            case .createGroup(let group):
                // As the stores do: a group already saved keeps its rows, and gains new members.
                if var saved = savedGroups[group.key] {
                    saved.members.merge(group.members) { kept, _ in kept }
                    savedGroups[group.key] = saved
                } else {
                    savedGroups[group.key] = group
                }
                wholeGroupSaves += 1
            case .saveGroup(let group, let previousKey):
                if let previousKey { savedGroups[previousKey] = nil }
                savedGroups[group.key] = group
                wholeGroupSaves += 1
            case .saveGroupSettings(var group, let previousKey):
                // As the stores do: the member list stays as saved.
                let saved = savedGroups.removeValue(forKey: previousKey ?? group.key)
                group.members = saved?.members ?? [:]
                group.voiced = saved?.voiced ?? []
                savedGroups[group.key] = group
            case .saveGroupMember(let group, let account, let role, let voiced):
                // As the stores do: one row changes; an unknown group changes nothing.
                savedGroups[group]?.members[account] = role
                if role != nil && voiced { savedGroups[group]?.voiced.insert(account) } else { savedGroups[group]?.voiced.remove(account) }
            case .deleteGroup(let key):
                savedGroups[key] = nil
            case .deleteMessage(let id):
                storedMessages.removeAll { $0.id == id }
            case .storeMessages(let messages, let afterCommit, let sender):
                if defersSlowWork {
                    deferredWork.append(action)
                } else if storageFails && !messages.isEmpty {
                    server.messagesNotStored(messages, sender: sender, now: now, into: &next)
                } else {
                    // As the shell does: replies queued behind commits go out even if one failed.
                    storedMessages.append(contentsOf: messages)
                    next.deliveries.append(contentsOf: afterCommit)
                    server.storesCommitted([sender])
                }
            case .updateRecipients(let updates):
                recipientUpdates.append(contentsOf: updates)
            case .loadHistory(let ticket, let query):
                if defersSlowWork {
                    deferredWork.append(action)
                } else {
                    server.completeHistory(ticket: ticket, result: history(query), now: now, into: &next)
                }
            case .saveReadMarker:
                storedMarkerCount += 1
            case .saveAccountSettings, .pruneHistory, .saveGroupReadPosition, .saveReceiptsPendingSince:
                break
            }
            apply(next)
        }
    }
}

extension CoreHarness {
    /// What a store holding `storedMessages` (with `recipientUpdates` applied) would answer;
    /// only the queries the core tests use.
    func history(_ query: HistoryQuery) -> HistoryResult {
        guard case .receipts(let ids) = query.kind, case .everything(let account, _) = query.conversation else {
            return .failed("not supported by the test harness")
        }
        let found = storedMessages.filter { ids.contains($0.id) && $0.senderAccount == account }.map { message in
            var message = message
            for update in recipientUpdates where update.messageID == message.id {
                guard let index = message.recipients.firstIndex(where: { $0.account == update.recipient }) else { continue }
                if let delivered = update.deliveredAt { message.recipients[index].deliveredAt = delivered }
                if let read = update.readAt { message.recipients[index].readAt = read }
            }
            return message
        }
        return .messages(found)
    }
}

extension Array where Element == String {
    /// The IRC command (or numeric) of each line, ignoring tags and source.
    var commands: [String] {
        map { line in (try? IRCMessage(parsing: line).command) ?? "?" }
    }

    func first(command: String) -> IRCMessage? {
        lazy.compactMap { try? IRCMessage(parsing: $0) }.first { $0.command == command }
    }
}
