import Foundation

/// Where a PostgreSQL database is: `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB` (or
/// `postgres://`), as operators write it for `--database`. User and password may be
/// percent-encoded; an IPv6 host is written in brackets (`[::1]`).
public struct PostgresDatabaseURL: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String

    public init(host: String, port: Int = 5432, user: String, password: String? = nil, database: String) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    /// Whether `text` names a PostgreSQL database at all (rather than being a malformed one).
    public static func looksLikePostgres(_ text: String) -> Bool {
        let lowered = text.lowercased()
        return lowered.hasPrefix("postgresql://") || lowered.hasPrefix("postgres://")
    }

    /// Parses a URL; the error says what is wrong with it, without repeating the password.
    public init(parsing text: String) throws(PostgresStoreError) {
        func malformed(_ reason: String) -> PostgresStoreError {
            .malformedURL("\(reason); expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        }
        guard Self.looksLikePostgres(text) else { throw malformed("the database URL must start with postgresql://") }
        guard let components = URLComponents(string: text) else { throw malformed("the database URL is not a valid URL") }
        guard let host = components.host, !host.isEmpty else { throw malformed("the database URL names no host") }
        guard let user = components.user, !user.isEmpty else { throw malformed("the database URL names no user") }
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        guard !path.isEmpty, !path.contains("/") else { throw malformed("the database URL names no database") }
        if let port = components.port, !(1...65_535).contains(port) { throw malformed("the database URL's port \(port) is out of range") }
        if let query = components.queryItems, !query.isEmpty {
            throw malformed("the database URL has options (\(query.map(\.name).joined(separator: ", "))), which Parley does not support")
        }
        // URLComponents keeps an IPv6 host's brackets.
        self.host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        self.port = components.port ?? 5432
        self.user = user.removingPercentEncoding ?? user
        self.password = components.password.map { $0.removingPercentEncoding ?? $0 }
        self.database = path.removingPercentEncoding ?? path
    }

    /// The URL without its password, for messages and logs.
    public var description: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        return "postgresql://\(user)@\(shownHost):\(port)/\(database)"
    }

    /// The same server and login, another database (tests make one per case).
    public func with(database: String) -> PostgresDatabaseURL {
        var copy = self
        copy.database = database
        return copy
    }
}
