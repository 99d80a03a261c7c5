/// What the domain has done since the server started, as plain running totals. The shell reads
/// them (under the lock that owns the `ChatServer`) when it reports metrics; the domain knows no
/// metrics library. Totals only grow, so a reader can report what changed since its last look.
public struct ChatCounters: Sendable, Equatable {
    /// Connections that finished IRC registration (the welcome burst).
    public var connectionRegistrations: UInt64 = 0
    /// Accounts created (REGISTER or NickServ REGISTER).
    public var accountRegistrations: UInt64 = 0
    /// Connections attached to an account: SASL, PASS, NickServ IDENTIFY, or right after
    /// creating the account.
    public var logins: UInt64 = 0
    /// Login attempts refused: a wrong password or an unknown account, or one refused because
    /// that account or network had failed too often.
    public var loginFailures: UInt64 = 0
    /// PRIVMSG, NOTICE and TAGMSG commands received (one per command, whatever its targets).
    public var messagesReceived: UInt64 = 0
    /// Messages handed to a recipient's connection as they were sent (one per connection).
    public var deliveries: UInt64 = 0
    /// Messages kept for an account that was offline (one per recipient account).
    public var offlineStored: UInt64 = 0
    /// Messages kept for an offline account and sent to it when it came back.
    public var offlineReplayed: UInt64 = 0
    /// CHATHISTORY requests handed to storage.
    public var historyQueries: UInt64 = 0

    public init() {}
}
