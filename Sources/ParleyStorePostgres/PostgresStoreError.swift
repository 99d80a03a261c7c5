import PostgresNIO

/// Why the PostgreSQL store could not open or run, in words an operator can act on. PostgresNIO's
/// own errors print a generic text (they avoid leaking queries); `init(_:url:)` reads the server's
/// SQLSTATE and message out of them.
public enum PostgresStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    case malformedURL(String)
    case unreachable(url: String, reason: String)
    case loginRefused(url: String, reason: String)
    case missingDatabase(url: String)
    /// The database was migrated by a newer Parley: this binary does not know its tables.
    case schemaTooNew(found: Int, supported: Int)
    /// Another running node holds this node name.
    case nodeNameInUse(String)
    case invalidNodeName(String)
    case tooManyNodeNames
    case server(String)

    public var description: String {
        switch self {
        case .malformedURL(let reason):
            reason
        case .unreachable(let url, let reason):
            "cannot reach PostgreSQL at \(url): \(reason)"
        case .loginRefused(let url, let reason):
            "PostgreSQL refused the login for \(url): \(reason)"
        case .missingDatabase(let url):
            "the PostgreSQL database of \(url) does not exist (create it first, e.g. createdb)"
        case .schemaTooNew(let found, let supported):
            "the database's schema is version \(found), newer than this parley-server understands (\(supported)); upgrade parley-server"
        case .nodeNameInUse(let name):
            "node name \(name) is held by a running node; give this node another --node-name"
        case .invalidNodeName(let name):
            "invalid node name \"\(name)\": use 1 to 32 lower-case letters, digits and '-', starting with a letter or digit"
        case .tooManyNodeNames:
            "this database has seen 4095 node names, the most a cluster can number; reuse an old node name"
        case .server(let message):
            "PostgreSQL: \(message)"
        }
    }

    /// The database could not take a statement just then: unreachable, or SQLSTATE class 08
    /// (connection), 53 (resources: disk, memory, connections) or 57P (shut down, restarting).
    var isUnavailable: Bool {
        if case .unreachable = self { return true }
        guard let state = sqlState else { return false }
        return state.hasPrefix("08") || state.hasPrefix("53") || state.hasPrefix("57P")
    }

    /// PostgreSQL broke a deadlock by failing this transaction (SQLSTATE 40P01): running it
    /// again succeeds.
    var isDeadlock: Bool { sqlState == "40P01" }

    /// The server's SQLSTATE, as `init(_:url:)` ends a `.server` message with it.
    private var sqlState: Substring? {
        guard case .server(let message) = self, message.hasSuffix(")"),
              let open = message.range(of: "(SQLSTATE ", options: .backwards) else { return nil }
        return message[open.upperBound...].dropLast()
    }

    /// Explains an error from connecting or querying.
    init(_ error: any Error, url: PostgresDatabaseURL) {
        if let known = error as? PostgresStoreError {
            self = known
            return
        }
        guard let psql = error as? PSQLError else {
            self = .server(String(describing: error))
            return
        }
        let sqlState = psql.serverInfo?[.sqlState]
        let message = psql.serverInfo?[.message] ?? ""
        switch (psql.code, sqlState) {
        case (_, "28P01"?), (_, "28000"?):
            self = .loginRefused(url: url.description, reason: message)
        case (_, "3D000"?):
            self = .missingDatabase(url: url.description)
        case (.sslUnsupported, _):
            self = .unreachable(url: url.description, reason: "the server does not offer TLS, which the URL's sslmode requires")
        case (.connectionError, _), (.uncleanShutdown, _), (.serverClosedConnection, _), (.failedToAddSSLHandler, _):
            let underlying = psql.underlying.map { String(describing: $0) } ?? "the connection failed"
            self = .unreachable(url: url.description, reason: underlying)
        case (.unsupportedAuthMechanism, _), (.authMechanismRequiresPassword, _):
            self = .loginRefused(url: url.description, reason: "the server asks for a password or an authentication method Parley cannot give")
        default:
            self = .server(message.isEmpty ? String(reflecting: psql) : "\(message) (SQLSTATE \(sqlState ?? "?"))")
        }
    }
}
