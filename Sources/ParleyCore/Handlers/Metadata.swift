import IRCWire

/// Bounds of IRCv3 metadata, advertised in the capability's value.
enum MetadataLimits {
    /// Keys one connection may subscribe to.
    static let maxSubscriptions = 50
    /// Keys one user or channel may hold.
    static let maxKeys = 50
    /// A value's bytes: RPL_KEYVALUE carrying it (server name, nick, target, key and value) must
    /// still fit one 512-byte line.
    static let maxValueBytes = 300
    /// A key's bytes.
    static let maxKeyBytes = 64

    static let capabilityValue = "max-subs=\(maxSubscriptions),max-keys=\(maxKeys),max-value-bytes=\(maxValueBytes)"

    /// Keys are lower-case letters, digits and `_ . / -` (IRCv3 metadata "Keys and values").
    static func isValidKey(_ key: String) -> Bool {
        guard !key.isEmpty, key.utf8.count <= maxKeyBytes else { return false }
        return key.utf8.allSatisfy { byte in
            (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "/") || byte == UInt8(ascii: "-")
        }
    }
}

/// IRCv3 metadata (`draft/metadata-3`): key/value pairs on users and channels, kept in memory.
/// A user's metadata belongs to its account (shared by its connections) or, for a guest, to its
/// connection; a channel's is set by its operators. Connections hear about changes to the keys
/// they subscribed to, for themselves, their channels and the people in them.
extension ChatServer {
    /// What a METADATA command names: a user's metadata (by owner identity) or a channel's.
    enum MetadataTarget {
        case user(owner: String, nick: String, connections: [ConnectionID])
        case channel(key: String, name: String)

        var name: String {
            switch self {
            case .user(_, let nick, _): nick
            case .channel(_, let name): name
            }
        }
    }

    /// The identity a user's metadata is kept under.
    func metadataOwner(of session: Session) -> String {
        session.accountKey ?? guestIdentity(of: session.id)
    }

    func metadata(of target: MetadataTarget) -> [String: String] {
        switch target {
        case .user(let owner, _, _): userMetadata[owner] ?? [:]
        case .channel(let key, _): channels[key]?.metadata ?? [:]
        }
    }

    mutating func handleMetadata(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let session = sessions[context.connection] else { return }
        let subcommand = message.parameters[1].uppercased()
        let arguments = Array(message.parameters.dropFirst(2))
        switch subcommand {
        case "SUB": try subscribeMetadata(arguments, session, &context)
        case "UNSUB": try unsubscribeMetadata(arguments, session, &context)
        case "SUBS": listMetadataSubscriptions(session, &context)
        case "GET":
            guard !arguments.isEmpty else { throw .needMoreParameters("METADATA") }
            let target = try metadataTarget(message.parameters[0], session, readingKey: arguments[0])
            let values = metadata(of: target)
            var lines: [IRCMessage] = []
            for key in arguments {
                if !MetadataLimits.isValidKey(key) {
                    lines.append(standardLine("FAIL", "METADATA", "KEY_INVALID", [key], "Invalid metadata key"))
                } else if let value = values[key] {
                    lines.append(numeric(.rplKeyValue, [target.name, key, "*", value], for: session.id))
                } else {
                    lines.append(numeric(.rplKeyNotSet, [target.name, key, "key not set"], for: session.id))
                }
            }
            appendMetadataBatch(target.name, lines, &context)
        case "LIST":
            let target = try metadataTarget(message.parameters[0], session, readingKey: "*")
            let lines = metadata(of: target).sorted { $0.key < $1.key }.map { key, value in
                numeric(.rplKeyValue, [target.name, key, "*", value], for: session.id)
            }
            appendMetadataBatch(target.name, lines, &context)
        case "SYNC":
            let target = try metadataTarget(message.parameters[0], session, readingKey: "*")
            var lines = subscribedMetadataLines(of: target, for: session)
            if case .channel(let key, _) = target, let channel = channels[key] {
                for member in metadataMembers(of: channel, except: nil) {
                    lines += subscribedMetadataLines(of: member, for: session)
                }
            }
            appendMetadataBatch(target.name, lines, &context)
        case "SET":
            guard let key = arguments.first else { throw .needMoreParameters("METADATA") }
            let target = try metadataTarget(message.parameters[0], session, writingKey: key)
            guard MetadataLimits.isValidKey(key) else {
                throw .fail("METADATA", "KEY_INVALID", key, description: "Invalid metadata key")
            }
            let value = arguments.count > 1 && !arguments[1].isEmpty ? arguments[1] : nil
            if let value, value.utf8.count > MetadataLimits.maxValueBytes {
                throw .fail("METADATA", "INVALID_VALUE", key, description: "Metadata values are at most \(MetadataLimits.maxValueBytes) bytes")
            }
            let current = metadata(of: target)
            if value != nil, current[key] == nil, current.count >= MetadataLimits.maxKeys {
                throw .fail("METADATA", "LIMIT_REACHED", target.name, description: "At most \(MetadataLimits.maxKeys) metadata keys")
            }
            if value == nil, current[key] == nil {
                throw .numeric(.rplKeyNotSet, target.name, key, "key not set")
            }
            storeMetadata(key, value, on: target)
            context.replies.append(metadataLine(target: target.name, key: key, value: value, for: session.id))
            notifyMetadataChange(target, key: key, value: value, except: session.id, into: &outbox)
        case "CLEAR":
            let target = try metadataTarget(message.parameters[0], session, writingKey: "*")
            var lines: [IRCMessage] = []
            for key in metadata(of: target).keys.sorted() {
                storeMetadata(key, nil, on: target)
                lines.append(metadataLine(target: target.name, key: key, value: nil, for: session.id))
                notifyMetadataChange(target, key: key, value: nil, except: session.id, into: &outbox)
            }
            appendMetadataBatch(target.name, lines, &context)
        default:
            throw .fail("METADATA", "SUBCOMMAND_INVALID", message.parameters[1], description: "Unknown METADATA subcommand")
        }
    }

    /// Resolves a target for reading: a closed channel (invite-only or secret, and the asker not
    /// in it) shows outsiders none of its metadata, as it shows them no topic.
    func metadataTarget(_ raw: String, _ session: Session, readingKey key: String) throws(CommandError) -> MetadataTarget {
        let target = try resolveMetadataTarget(raw, session)
        if case .channel(let channelKey, let name) = target, let channel = channels[channelKey], isClosed(channel, to: session.id) {
            throw .fail("METADATA", "KEY_NO_PERMISSION", name, key, description: "You cannot see that channel's metadata")
        }
        return target
    }

    /// Resolves a target for writing: users change only their own metadata, channel operators
    /// their channel's.
    func metadataTarget(_ raw: String, _ session: Session, writingKey key: String) throws(CommandError) -> MetadataTarget {
        let target = try resolveMetadataTarget(raw, session)
        switch target {
        case .user(let owner, let nick, _):
            guard owner == metadataOwner(of: session) else {
                throw .fail("METADATA", "KEY_NO_PERMISSION", nick, key, description: "You may only change your own metadata")
            }
        case .channel(let channelKey, let name):
            guard let channel = channels[channelKey], role(of: session.id, in: channel) >= .op else {
                throw .fail("METADATA", "KEY_NO_PERMISSION", name, key, description: "You're not a channel operator")
            }
        }
        return target
    }

    func resolveMetadataTarget(_ raw: String, _ session: Session) throws(CommandError) -> MetadataTarget {
        if raw == "*" {
            return .user(owner: metadataOwner(of: session), nick: session.replyName, connections: sameNickOnline(session.id))
        }
        if raw.hasPrefix("#") {
            guard let channel = channels[fold(raw)] else {
                throw .fail("METADATA", "INVALID_TARGET", raw, description: "No such channel")
            }
            return .channel(key: channel.key, name: channel.name)
        }
        guard let holder = nickIndex[fold(raw)], let first = holder.connections.first, let user = sessions[first], let nick = user.nick else {
            throw .fail("METADATA", "INVALID_TARGET", raw, description: "No such nick or channel")
        }
        return .user(owner: metadataOwner(of: user), nick: nick.name, connections: Array(holder.connections))
    }

    mutating func storeMetadata(_ key: String, _ value: String?, on target: MetadataTarget) {
        switch target {
        case .user(let owner, _, _):
            userMetadata[owner, default: [:]][key] = value
            if userMetadata[owner]?.isEmpty == true { userMetadata[owner] = nil }
        case .channel(let channelKey, _):
            channels[channelKey]?.metadata[key] = value
        }
    }

    /// RPL_KEYVALUE for a value, RPL_KEYNOTSET for a key without one.
    func metadataLine(target: String, key: String, value: String?, for connection: ConnectionID) -> IRCMessage {
        if let value { return numeric(.rplKeyValue, [target, key, "*", value], for: connection) }
        return numeric(.rplKeyNotSet, [target, key, "key not set"], for: connection)
    }

    /// Tells the connections that follow `target` (its own other connections and its channels'
    /// members for a user, the members for a channel) and subscribed to `key` of the change.
    func notifyMetadataChange(_ target: MetadataTarget, key: String, value: String?, except: ConnectionID, into outbox: inout Outbox) {
        var audience: Set<ConnectionID>
        switch target {
        case .user(_, _, let connections):
            audience = channelNeighbours(of: connections).union(connections)
        case .channel(let channelKey, _):
            audience = Set(channels[channelKey]?.joined ?? [])
        }
        audience.remove(except)
        for connection in audience.sorted() {
            guard let session = sessions[connection], session.has(.metadata), session.metadataSubscriptions.contains(key) else { continue }
            send(metadataLine(target: target.name, key: key, value: value, for: connection), to: connection, session: session, into: &outbox)
        }
    }

    /// The values of `target` for the keys `session` subscribed to, as RPL_KEYVALUE lines.
    func subscribedMetadataLines(of target: MetadataTarget, for session: Session) -> [IRCMessage] {
        guard !session.metadataSubscriptions.isEmpty else { return [] }
        return metadata(of: target).sorted { $0.key < $1.key }.compactMap { key, value in
            session.metadataSubscriptions.contains(key) ? numeric(.rplKeyValue, [target.name, key, "*", value], for: session.id) : nil
        }
    }

    /// The channel's members as metadata targets, one per nick.
    func metadataMembers(of channel: ChatChannel, except excluded: String?) -> [MetadataTarget] {
        var seen: Set<String> = []
        var targets: [MetadataTarget] = []
        for member in channel.joined {
            guard let session = sessions[member], let nick = session.nick, nick.folded != excluded, seen.insert(nick.folded).inserted else { continue }
            targets.append(.user(owner: metadataOwner(of: session), nick: nick.name, connections: []))
        }
        return targets
    }

    /// On JOIN: the joiner hears the channel's and its members' subscribed metadata, and members
    /// hear the joiner's (`announceJoiner` is false when the nick was already present).
    mutating func sendMetadataOnJoin(_ channel: ChatChannel, joiner: ConnectionID, announceJoiner: Bool, _ context: inout CommandContext, _ outbox: inout Outbox) {
        guard let session = sessions[joiner], let nick = session.nick else { return }
        if session.has(.metadata), !session.metadataSubscriptions.isEmpty {
            var lines = subscribedMetadataLines(of: .channel(key: channel.key, name: channel.name), for: session)
            for member in metadataMembers(of: channel, except: nick.folded) {
                lines += subscribedMetadataLines(of: member, for: session)
            }
            for line in lines { emit(line, to: joiner, &context, &outbox) }
        }
        guard announceJoiner, userMetadata[metadataOwner(of: session)] != nil else { return }
        let joinerTarget = MetadataTarget.user(owner: metadataOwner(of: session), nick: nick.name, connections: [])
        for member in channel.joined where sessions[member]?.nick?.folded != nick.folded {
            guard let memberSession = sessions[member], memberSession.has(.metadata) else { continue }
            for line in subscribedMetadataLines(of: joinerTarget, for: memberSession) { emit(line, to: member, &context, &outbox) }
        }
    }

    /// RPL_WHOISKEYVALUE lines for a user's metadata.
    func whoisMetadataLines(of user: Session, nick: String, for connection: ConnectionID) -> [IRCMessage] {
        (userMetadata[metadataOwner(of: user)] ?? [:]).sorted { $0.key < $1.key }.map { key, value in
            numeric(.rplWhoisKeyValue, [nick, key, "*", value], for: connection)
        }
    }

    /// Wraps GET, LIST, SYNC and CLEAR answers in a `metadata` batch for clients that take batches.
    mutating func appendMetadataBatch(_ target: String, _ lines: [IRCMessage], _ context: inout CommandContext) {
        guard sessions[context.connection]?.has(.batch) == true else {
            context.replies += lines
            return
        }
        let reference = makeBatchReference()
        context.replies.append(IRCMessage(source: configuration.serverName, command: "BATCH", parameters: ["+" + reference, "metadata", target]))
        for var line in lines {
            line.tags.insert(IRCTag("batch", reference), at: 0)
            context.replies.append(line)
        }
        context.replies.append(IRCMessage(source: configuration.serverName, command: "BATCH", parameters: ["-" + reference]))
    }

    // MARK: Subscriptions

    mutating func subscribeMetadata(_ keys: [String], _ session: Session, _ context: inout CommandContext) throws(CommandError) {
        var accepted: [String] = []
        for key in try validSubscriptionKeys(keys, &context) {
            if !session.metadataSubscriptions.contains(key), session.metadataSubscriptions.count >= MetadataLimits.maxSubscriptions {
                context.replies.append(standardLine("FAIL", "METADATA", "TOO_MANY_SUBS", [key], "At most \(MetadataLimits.maxSubscriptions) subscriptions"))
                break
            }
            session.metadataSubscriptions.insert(key)
            accepted.append(key)
        }
        appendKeyLists(.rplMetadataSubOK, accepted, session, &context)
    }

    mutating func unsubscribeMetadata(_ keys: [String], _ session: Session, _ context: inout CommandContext) throws(CommandError) {
        var removed: [String] = []
        for key in try validSubscriptionKeys(keys, &context) {
            session.metadataSubscriptions.remove(key)
            removed.append(key)
        }
        appendKeyLists(.rplMetadataUnsubOK, removed, session, &context)
    }

    /// The keys of a SUB or UNSUB (given as parameters, or several in one), each invalid one
    /// answered with KEY_INVALID and left out.
    func validSubscriptionKeys(_ parameters: [String], _ context: inout CommandContext) throws(CommandError) -> [String] {
        guard !parameters.isEmpty else { throw .needMoreParameters("METADATA") }
        return parameters.flatMap { $0.split(separator: " ").map(String.init) }.filter { key in
            if MetadataLimits.isValidKey(key) { return true }
            context.replies.append(standardLine("FAIL", "METADATA", "KEY_INVALID", [key], "Invalid metadata key"))
            return false
        }
    }

    func listMetadataSubscriptions(_ session: Session, _ context: inout CommandContext) {
        appendKeyLists(.rplMetadataSubs, session.metadataSubscriptions.sorted(), session, &context)
    }

    /// Numerics listing keys, as many per line as fit.
    func appendKeyLists(_ numeric: Numeric, _ keys: [String], _ session: Session, _ context: inout CommandContext) {
        let budget = 400 - configuration.serverName.utf8.count - session.replyName.utf8.count
        var line: [String] = []
        var bytes = 0
        for key in keys {
            if !line.isEmpty, bytes + key.utf8.count + 1 > budget {
                context.replies.append(self.numeric(numeric, line, for: session.id))
                line = []
                bytes = 0
            }
            line.append(key)
            bytes += key.utf8.count + 1
        }
        if !line.isEmpty { context.replies.append(self.numeric(numeric, line, for: session.id)) }
    }
}
