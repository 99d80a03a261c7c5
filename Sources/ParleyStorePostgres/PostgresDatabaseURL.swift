import Foundation

/// Where a PostgreSQL database is: `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB` (or
/// `postgres://`), as operators write it for `--database`. User and password may be
/// percent-encoded; an IPv6 host is written in brackets (`[::1]`). Two options as libpq spells
/// them: `sslmode` and `sslrootcert` (`?sslmode=verify-full&sslrootcert=/etc/parley/db-ca.pem`).
public struct PostgresDatabaseURL: Sendable, Hashable, CustomStringConvertible {
    /// Whether the connection is encrypted and how the server is checked (libpq's `sslmode`).
    public enum TLSMode: String, Sendable, Hashable, CaseIterable {
        /// Never TLS.
        case disable
        /// TLS when the server offers it, unverified; plain otherwise (libpq's default).
        case prefer
        /// TLS or no connection, the server's certificate unverified.
        case require
        /// TLS, the certificate signed by a trusted authority (any name).
        case verifyCA = "verify-ca"
        /// TLS, the certificate signed by a trusted authority and issued for the URL's host.
        case verifyFull = "verify-full"
    }

    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String
    public var tlsMode: TLSMode
    /// PEM file of the authorities trusted for `verify-ca` and `verify-full`; the system's when nil.
    public var rootCertificateFile: String?

    public init(host: String, port: Int = 5432, user: String, password: String? = nil, database: String,
                tlsMode: TLSMode = .prefer, rootCertificateFile: String? = nil) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.tlsMode = tlsMode
        self.rootCertificateFile = rootCertificateFile
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
        var tlsMode = TLSMode.prefer
        var rootCertificateFile: String?
        for item in components.queryItems ?? [] {
            let value = item.value ?? ""
            switch item.name {
            case "sslmode":
                guard let mode = TLSMode(rawValue: value) else {
                    throw .malformedURL("the database URL's sslmode \"\(value)\" is not one of \(TLSMode.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                tlsMode = mode
            case "sslrootcert":
                guard !value.isEmpty else { throw .malformedURL("the database URL's sslrootcert names no file") }
                rootCertificateFile = value
            default:
                throw .malformedURL("the database URL has the option \"\(item.name)\", which Parley does not support (it knows sslmode and sslrootcert)")
            }
        }
        if rootCertificateFile != nil, tlsMode != .verifyCA, tlsMode != .verifyFull {
            throw .malformedURL("the database URL's sslrootcert is only used with sslmode=verify-ca or verify-full")
        }
        // URLComponents keeps an IPv6 host's brackets.
        let bareHost = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        // The name checked against the certificate is also sent as SNI, which cannot be an address.
        if tlsMode == .verifyFull, Self.isAddress(bareHost) {
            throw .malformedURL("sslmode=verify-full checks the server's name: give its host name, not an address (or use verify-ca)")
        }
        self.tlsMode = tlsMode
        self.rootCertificateFile = rootCertificateFile
        self.host = bareHost
        self.port = components.port ?? 5432
        self.user = user.removingPercentEncoding ?? user
        self.password = components.password.map { $0.removingPercentEncoding ?? $0 }
        self.database = path.removingPercentEncoding ?? path
    }

    static func isAddress(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    /// The URL without its password, for messages and logs.
    public var description: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        var options: [String] = []
        if tlsMode != .prefer { options.append("sslmode=\(tlsMode.rawValue)") }
        if let rootCertificateFile { options.append("sslrootcert=\(rootCertificateFile)") }
        return "postgresql://\(user)@\(shownHost):\(port)/\(database)" + (options.isEmpty ? "" : "?" + options.joined(separator: "&"))
    }

    /// The same server and login, another database (tests make one per case).
    public func with(database: String) -> PostgresDatabaseURL {
        var copy = self
        copy.database = database
        return copy
    }
}
