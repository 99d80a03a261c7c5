import IRCWire

/// Errors are replies: a handler throws one and the dispatcher renders it to the client, as a
/// numeric or as an IRCv3 standard reply (`FAIL <command> <code> [context...] :description`).
public struct CommandError: Error, Sendable, Equatable {
    enum Reply: Sendable, Equatable {
        /// Parameters after the client's nick, last one being the human-readable text.
        case numeric(Numeric, [String])
        case standard(verb: String, command: String, code: String, context: [String], description: String)
    }

    let reply: Reply

    static func numeric(_ numeric: Numeric, _ parameters: String...) -> CommandError {
        CommandError(reply: .numeric(numeric, parameters))
    }

    static func fail(_ command: String, _ code: String, _ context: String..., description: String) -> CommandError {
        CommandError(reply: .standard(verb: "FAIL", command: command, code: code, context: context, description: description))
    }

    static func needMoreParameters(_ command: String) -> CommandError {
        .numeric(.errNeedMoreParams, command, "Not enough parameters")
    }
}

/// The state of one command being handled: who sent it, when, and the replies destined for that
/// connection, collected so that labeled-response can tag or batch them as one unit.
struct CommandContext {
    let connection: ConnectionID
    /// The sender's session, for a command a connection sent (`ChatServer.process`): handlers
    /// on the message path read it instead of looking it up again. Nil for other work.
    let session: Session?
    let now: Timestamp
    let label: String?
    /// The command being handled, upper-cased (set by `ChatServer.receive`).
    var verb = ""
    var replies: [IRCMessage] = []
    /// Set when the connection was closed while handling; nothing more is sent to it.
    var connectionClosed = false
    /// Set when the answer comes later (after a password check or storage); the label is kept
    /// with the pending work and nothing is sent now, not even an ACK.
    var repliesDeferred = false
    /// Messages this command stored: its replies (the echo) wait until they are committed.
    var pendingStores: [StoredMessage] = []
    /// What the other nodes need, beside the command itself, to decide a replicated command as
    /// this node did (`ChatServer.publishCommand`): tags under `parley/` on the command they run.
    var replicationTags: [IRCTag] = []
    /// The part of the command that took effect, when not all of it did: the other nodes run
    /// this instead (an empty JOIN: nothing). They let another node's user into a channel on
    /// that node's word, so a JOIN it refused must not reach them.
    var replicatedParameters: [String]?

    mutating func deferReplies() {
        replies.removeAll()
        repliesDeferred = true
    }

    init(connection: ConnectionID, now: Timestamp, label: String?, session: Session? = nil) {
        self.connection = connection
        self.session = session
        self.now = now
        self.label = label
    }
}
