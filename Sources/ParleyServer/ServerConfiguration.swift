import Foundation
import ParleyCore
import IRCWire

/// Everything `parley-server` can be told, loaded from a JSON file (every field optional, with
/// the defaults below) and overridden by command-line flags. Documented in docs/configuration.md.
public struct ServerConfiguration: Sendable, Codable, Equatable {
    public var serverName = "parley.local"
    public var networkName = "Parley"
    /// What LINKS says about this server.
    public var serverDescription = "Parley chat server"
    /// A password every connection must give with PASS; nil: none (PASS then logs in to an account).
    public var serverPassword: String?
    public var motd: [String] = ["Welcome to Parley: direct messages, groups, offline delivery and receipts."]
    /// Where the SQLite database lives. Created if missing.
    public var dataDirectory = "./parley-data"
    /// A PostgreSQL database shared by nodes (`postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`);
    /// nil keeps the embedded SQLite store in `dataDirectory`.
    public var database: String?
    /// This node's name among the nodes sharing `database` (default: the host name).
    public var nodeName: String?
    /// IRC on 6667 and the web client (with IRCv3 WebSocket at `/irc`) on 8080, every address.
    public var listeners: [Listener] = [
        Listener(address: "0.0.0.0", port: 6667), Listener(address: "::", port: 6667),
        Listener(address: "0.0.0.0", port: 8080, http: true), Listener(address: "::", port: 8080, http: true),
    ]
    public var tls: TLSSettings?
    public var limits = Limits()
    public var accounts = Accounts()
    public var operators: [Operator] = []
    public var history = History()
    public var web = Web()
    public var metrics = Metrics()
    /// swift-log level: trace (logs every protocol line), debug, info, notice, warning, error.
    public var logLevel = "info"
    /// Event loop threads; 0 means one per CPU the process may use but one (at least one).
    public var threads = 0

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case serverName, networkName, serverDescription, serverPassword, motd, dataDirectory, database, nodeName, listeners, tls, limits, accounts, operators, history, logLevel, threads
        case web, metrics
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.strictContainer(keyedBy: CodingKeys.self)
        let defaults = ServerConfiguration()
        serverName = try container.decode(.serverName, default: defaults.serverName)
        networkName = try container.decode(.networkName, default: defaults.networkName)
        serverDescription = try container.decode(.serverDescription, default: defaults.serverDescription)
        serverPassword = try container.decodeIfPresent(String.self, forKey: .serverPassword)
        motd = try container.decode(.motd, default: defaults.motd)
        dataDirectory = try container.decode(.dataDirectory, default: defaults.dataDirectory)
        database = try container.decodeIfPresent(String.self, forKey: .database)
        nodeName = try container.decodeIfPresent(String.self, forKey: .nodeName)
        listeners = try container.decode(.listeners, default: defaults.listeners)
        tls = try container.decodeIfPresent(TLSSettings.self, forKey: .tls)
        limits = try container.decode(.limits, default: defaults.limits)
        accounts = try container.decode(.accounts, default: defaults.accounts)
        operators = try container.decode(.operators, default: defaults.operators)
        history = try container.decode(.history, default: defaults.history)
        web = try container.decode(.web, default: defaults.web)
        metrics = try container.decode(.metrics, default: defaults.metrics)
        logLevel = try container.decode(.logLevel, default: defaults.logLevel)
        threads = try container.decode(.threads, default: defaults.threads)
    }

    public struct Listener: Sendable, Codable, Equatable {
        /// An IPv4 or IPv6 address to bind; "0.0.0.0" and "::" mean every address of that family.
        public var address: String
        public var port: Int
        /// Whether this listener speaks TLS (needs the `tls` certificate and key).
        public var tls: Bool
        /// Whether this listener speaks HTTP: IRCv3 WebSocket at `/irc` (over TLS: https).
        public var http: Bool

        public init(address: String, port: Int, tls: Bool = false, http: Bool = false) {
            self.address = address
            self.port = port
            self.tls = tls
            self.http = http
        }

        enum CodingKeys: String, CodingKey { case address, port, tls, http }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            address = try container.decode(String.self, forKey: .address)
            port = try container.decode(Int.self, forKey: .port)
            tls = try container.decodeIfPresent(Bool.self, forKey: .tls) ?? false
            http = try container.decodeIfPresent(Bool.self, forKey: .http) ?? false
        }

        /// Parses `ADDRESS:PORT`, `[IPV6]:PORT`, with a `tls://` prefix for TLS listeners and
        /// `http://` or `https://` for web listeners.
        public init?(parsing text: String) {
            var rest = Substring(text)
            var tls = false
            var http = false
            if rest.hasPrefix("tls://") { tls = true; rest = rest.dropFirst(6) }
            if rest.hasPrefix("tcp://") { rest = rest.dropFirst(6) }
            if rest.hasPrefix("http://") { http = true; rest = rest.dropFirst(7) }
            if rest.hasPrefix("https://") { http = true; tls = true; rest = rest.dropFirst(8) }
            let address: Substring
            let portText: Substring
            if rest.hasPrefix("[") {
                guard let close = rest.firstIndex(of: "]") else { return nil }
                address = rest[rest.index(after: rest.startIndex)..<close]
                let afterBracket = rest[rest.index(after: close)...]
                guard afterBracket.hasPrefix(":") else { return nil }
                portText = afterBracket.dropFirst()
            } else {
                guard let colon = rest.lastIndex(of: ":"), !rest[..<colon].contains(":") else { return nil }
                address = rest[..<colon]
                portText = rest[rest.index(after: colon)...]
            }
            guard !address.isEmpty, let port = Int(portText), (0...65_535).contains(port) else { return nil }
            self.init(address: String(address), port: port, tls: tls, http: http)
        }
    }

    public struct TLSSettings: Sendable, Codable, Equatable {
        /// PEM certificate chain file.
        public var certificateFile: String
        /// PEM private key file.
        public var privateKeyFile: String
        /// The oldest protocol version a client may use. TLS 1.0 and 1.1 are deprecated (RFC 8996):
        /// allow them only for a network whose clients cannot do better.
        public var minimumVersion: TLSVersion = .defaultMinimum

        public init(certificateFile: String, privateKeyFile: String, minimumVersion: TLSVersion = .defaultMinimum) {
            self.certificateFile = certificateFile
            self.privateKeyFile = privateKeyFile
            self.minimumVersion = minimumVersion
        }

        enum CodingKeys: String, CodingKey, CaseIterable { case certificateFile, privateKeyFile, minimumVersion }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.strictContainer(keyedBy: CodingKeys.self)
            certificateFile = try container.decode(String.self, forKey: .certificateFile)
            privateKeyFile = try container.decode(String.self, forKey: .privateKeyFile)
            let versionText = try container.decodeIfPresent(String.self, forKey: .minimumVersion)
            if let versionText {
                guard let version = TLSVersion(rawValue: versionText) else {
                    throw DecodingError.dataCorruptedError(
                        forKey: .minimumVersion, in: container,
                        debugDescription: "should be one of \(TLSVersion.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))")
                }
                minimumVersion = version
            }
        }
    }

    /// A TLS protocol version, written as in the configuration file.
    public enum TLSVersion: String, Sendable, Codable, Equatable, CaseIterable {
        case v1_0 = "1.0"
        case v1_1 = "1.1"
        case v1_2 = "1.2"
        case v1_3 = "1.3"

        /// TLS 1.2 and 1.3 only, unless the configuration says otherwise.
        public static let defaultMinimum = TLSVersion.v1_2
    }

    public struct Limits: Sendable, Codable, Equatable {
        /// Longest accepted line in bytes, tags included (IRCv3: 8191 for tags + 512 for the rest).
        public var maxLineBytes = 8191 + 512
        /// Commands per second a connection may sustain; 0 turns flood control off.
        public var floodCommandsPerSecond = 10.0
        /// Commands a connection may send at once before the rate applies.
        public var floodBurst = 40
        /// Commands held back by flood control before the connection is closed ("Excess Flood").
        public var floodQueueLimit = 200
        /// Connections allowed from one IP address at once; 0 means no limit.
        public var maxConnectionsPerAddress = 20
        /// Connections that have not finished registering, across the server; 0 means no limit.
        public var maxUnregisteredConnections = 1000
        public var registrationTimeoutSeconds = 30.0
        public var pingIntervalSeconds = 90.0
        public var pingTimeoutSeconds = 60.0
        /// Bytes queued for a client that reads too slowly before it is disconnected.
        public var sendQueueBytes = 4 * 1024 * 1024
        /// Storage writes (one per message) waiting to be committed at which connections that add
        /// more stop being read, until half of them are written; 0 means no limit.
        public var storageQueueLimit = 10_000
        /// Seconds a sender's messages wait for the database (one that stopped answering)
        /// before the sender is told so (`NOTE * STORAGE_SLOW`).
        public var storageSlowNoticeSeconds = 5.0
        /// Entries per MONITOR list.
        public var monitorLimit = 100
        /// Channels one connection may be in (groups it is a member of included); 0 means no limit.
        public var maxChannelsPerUser = 100
        /// Targets per PRIVMSG/NOTICE/TAGMSG.
        public var maxMessageTargets = 4

        // Bounds on one command's work under the domain's lock (defaults from ChatConfiguration).
        /// Entries per channel ban list (ISUPPORT MAXLIST).
        public var maxBansPerChannel = ChatConfiguration().maxBansPerChannel
        /// Users listed by one WHO by mask; the scan stops there.
        public var maxWhoReplies = ChatConfiguration().maxWhoReplies
        public var maxWhoScanned = ChatConfiguration().maxWhoScanned

        public init() {}

        enum CodingKeys: String, CodingKey, CaseIterable {
            case maxLineBytes, floodCommandsPerSecond, floodBurst, floodQueueLimit, maxConnectionsPerAddress
            case maxUnregisteredConnections, registrationTimeoutSeconds, pingIntervalSeconds, pingTimeoutSeconds
            case sendQueueBytes, storageQueueLimit, storageSlowNoticeSeconds, monitorLimit, maxMessageTargets, maxChannelsPerUser
            case maxBansPerChannel, maxWhoReplies, maxWhoScanned
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.strictContainer(keyedBy: CodingKeys.self)
            let defaults = Limits()
            maxLineBytes = try container.decode(.maxLineBytes, default: defaults.maxLineBytes)
            floodCommandsPerSecond = try container.decode(.floodCommandsPerSecond, default: defaults.floodCommandsPerSecond)
            floodBurst = try container.decode(.floodBurst, default: defaults.floodBurst)
            floodQueueLimit = try container.decode(.floodQueueLimit, default: defaults.floodQueueLimit)
            maxConnectionsPerAddress = try container.decode(.maxConnectionsPerAddress, default: defaults.maxConnectionsPerAddress)
            maxUnregisteredConnections = try container.decode(.maxUnregisteredConnections, default: defaults.maxUnregisteredConnections)
            registrationTimeoutSeconds = try container.decode(.registrationTimeoutSeconds, default: defaults.registrationTimeoutSeconds)
            pingIntervalSeconds = try container.decode(.pingIntervalSeconds, default: defaults.pingIntervalSeconds)
            pingTimeoutSeconds = try container.decode(.pingTimeoutSeconds, default: defaults.pingTimeoutSeconds)
            sendQueueBytes = try container.decode(.sendQueueBytes, default: defaults.sendQueueBytes)
            storageQueueLimit = try container.decode(.storageQueueLimit, default: defaults.storageQueueLimit)
            storageSlowNoticeSeconds = try container.decode(.storageSlowNoticeSeconds, default: defaults.storageSlowNoticeSeconds)
            monitorLimit = try container.decode(.monitorLimit, default: defaults.monitorLimit)
            maxChannelsPerUser = try container.decode(.maxChannelsPerUser, default: defaults.maxChannelsPerUser)
            maxMessageTargets = try container.decode(.maxMessageTargets, default: defaults.maxMessageTargets)
            maxBansPerChannel = try container.decode(.maxBansPerChannel, default: defaults.maxBansPerChannel)
            maxWhoReplies = try container.decode(.maxWhoReplies, default: defaults.maxWhoReplies)
            maxWhoScanned = try container.decode(.maxWhoScanned, default: defaults.maxWhoScanned)
        }
    }

    public struct Accounts: Sendable, Codable, Equatable {
        /// PBKDF2-SHA-256 iterations for new passwords (SCRAM-SHA-256 verifiers).
        public var passwordIterations = 210_000
        public var minimumPasswordLength = 8
        /// Whether users without an account may connect and chat.
        public var allowGuests = true
        /// Whether users may register accounts themselves.
        public var allowRegistration = true
        /// Whether REGISTER works before the connection has finished registering.
        public var registrationBeforeConnect = ChatConfiguration().accountRegistrationBeforeConnect
        /// Password attempts per account from one source network (IPv4 address, IPv6 /64)
        /// allowed per window before that account is refused from that network.
        public var loginFailuresAllowed = 5
        public var loginFailureWindowSeconds = 60.0

        // Password guessing and account creation; defaults in ChatConfiguration.
        /// Password attempts from one source network across accounts per window.
        public var loginFailuresPerNetworkAllowed = ChatConfiguration.defaults.loginFailuresPerNetworkAllowed
        /// Password hashes queued or running server-wide before logins get "try again later".
        public var maxPasswordChecksInFlight = ChatConfiguration.defaults.maxPasswordChecksInFlight
        /// Accounts created from one source network per `registrationWindowSeconds`.
        public var registrationsPerNetworkAllowed = ChatConfiguration.defaults.accountRegistrationsPerNetworkAllowed
        public var registrationWindowSeconds = Double(ChatConfiguration.defaults.accountRegistrationWindowMilliseconds) / 1000

        public init() {}

        enum CodingKeys: String, CodingKey, CaseIterable {
            case passwordIterations, minimumPasswordLength, allowGuests, allowRegistration, registrationBeforeConnect
            case loginFailuresAllowed, loginFailureWindowSeconds
            case loginFailuresPerNetworkAllowed, maxPasswordChecksInFlight, registrationsPerNetworkAllowed, registrationWindowSeconds
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.strictContainer(keyedBy: CodingKeys.self)
            let defaults = Accounts()
            passwordIterations = try container.decode(.passwordIterations, default: defaults.passwordIterations)
            minimumPasswordLength = try container.decode(.minimumPasswordLength, default: defaults.minimumPasswordLength)
            allowGuests = try container.decode(.allowGuests, default: defaults.allowGuests)
            allowRegistration = try container.decode(.allowRegistration, default: defaults.allowRegistration)
            registrationBeforeConnect = try container.decode(.registrationBeforeConnect, default: defaults.registrationBeforeConnect)
            loginFailuresAllowed = try container.decode(.loginFailuresAllowed, default: defaults.loginFailuresAllowed)
            loginFailureWindowSeconds = try container.decode(.loginFailureWindowSeconds, default: defaults.loginFailureWindowSeconds)
            loginFailuresPerNetworkAllowed = try container.decode(.loginFailuresPerNetworkAllowed, default: defaults.loginFailuresPerNetworkAllowed)
            maxPasswordChecksInFlight = try container.decode(.maxPasswordChecksInFlight, default: defaults.maxPasswordChecksInFlight)
            registrationsPerNetworkAllowed = try container.decode(.registrationsPerNetworkAllowed, default: defaults.registrationsPerNetworkAllowed)
            registrationWindowSeconds = try container.decode(.registrationWindowSeconds, default: defaults.registrationWindowSeconds)
        }
    }

    public struct History: Sendable, Codable, Equatable {
        /// Days stored messages are kept (offline delivery, chat history, receipts).
        public var retentionDays = 30.0
        /// Messages kept for one account while it is offline; more are refused with a FAIL reply.
        public var maxUndeliveredPerAccount = 5000
        /// The most messages one CHATHISTORY request returns.
        public var chathistoryLimit = 500
        /// Recipient states followed in memory for live delivered/read receipts (per recipient).
        public var maxTrackedRecipients = ChatConfiguration().maxTrackedRecipients
        /// Receipts kept in memory for an author with no receipts-capable connection.
        public var maxPendingReceiptsPerAuthor = ChatConfiguration().maxPendingReceiptsPerAuthor
        /// Bytes of messages one account may have stored per day.
        public var storedBytesPerAccountPerDay = ChatConfiguration().storedBytesPerAccountPerDay
        /// Messages a transient channel keeps in memory (never stored) while it exists.
        public var transientChannelMessages = ChatConfiguration().transientChannelHistoryLength
        /// Bytes of those messages one transient channel keeps at most.
        public var transientChannelBytes = ChatConfiguration().transientChannelHistoryBytes

        public init() {}

        enum CodingKeys: String, CodingKey, CaseIterable {
            case retentionDays, maxUndeliveredPerAccount, chathistoryLimit, maxTrackedRecipients, maxPendingReceiptsPerAuthor
            case storedBytesPerAccountPerDay, transientChannelMessages, transientChannelBytes
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.strictContainer(keyedBy: CodingKeys.self)
            let defaults = History()
            retentionDays = try container.decode(.retentionDays, default: defaults.retentionDays)
            maxUndeliveredPerAccount = try container.decode(.maxUndeliveredPerAccount, default: defaults.maxUndeliveredPerAccount)
            chathistoryLimit = try container.decode(.chathistoryLimit, default: defaults.chathistoryLimit)
            maxTrackedRecipients = try container.decode(.maxTrackedRecipients, default: defaults.maxTrackedRecipients)
            maxPendingReceiptsPerAuthor = try container.decode(.maxPendingReceiptsPerAuthor, default: defaults.maxPendingReceiptsPerAuthor)
            storedBytesPerAccountPerDay = try container.decode(.storedBytesPerAccountPerDay, default: defaults.storedBytesPerAccountPerDay)
            transientChannelMessages = try container.decode(.transientChannelMessages, default: defaults.transientChannelMessages)
            transientChannelBytes = try container.decode(.transientChannelBytes, default: defaults.transientChannelBytes)
        }
    }

    /// Web listeners (`http` listeners): who may open a WebSocket from a browser page.
    public struct Web: Sendable, Codable, Equatable {
        /// Page origins (e.g. `https://chat.example.org`) allowed to open a WebSocket besides
        /// the listener's own; connections without an Origin header (not browsers) always may.
        public var allowedOrigins: [String] = []
        /// Addresses of reverse proxies in front of the web listeners whose `X-Forwarded-For`
        /// names the client (per-address limits and hostmasks then use the client's address).
        /// From any other peer the header is ignored.
        public var trustedProxies: [String] = []

        public init() {}

        enum CodingKeys: String, CodingKey, CaseIterable { case allowedOrigins, trustedProxies }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.strictContainer(keyedBy: CodingKeys.self)
            allowedOrigins = try container.decode(.allowedOrigins, default: Web().allowedOrigins)
            trustedProxies = try container.decode(.trustedProxies, default: Web().trustedProxies)
        }
    }

    /// Where the Prometheus metrics (`/metrics`) are served (docs/metrics.md).
    public struct Metrics: Sendable, Codable, Equatable {
        /// `"web"`: at `/metrics` on the web listeners; `"off"`: nowhere; `"ADDRESS:PORT"`: on a
        /// plain HTTP listener of its own that serves nothing else (and not on the web listeners).
        public var listen = "web"
        /// On web listeners, whether anyone who reaches the listener may read `/metrics`. By
        /// default only requests from the machine itself (a loopback peer, with no proxy's
        /// forwarding header) may: counts of users, logins and failures are not for the public,
        /// and the default web listeners face every network.
        public var allowRemote = false

        public init() {}

        enum CodingKeys: String, CodingKey, CaseIterable { case listen, allowRemote }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.strictContainer(keyedBy: CodingKeys.self)
            listen = try container.decode(.listen, default: Metrics().listen)
            allowRemote = try container.decode(.allowRemote, default: Metrics().allowRemote)
        }
    }

    /// Where `/metrics` is served, as `metrics.listen` says.
    public enum MetricsExposure: Sendable, Equatable {
        case off
        /// On the web listeners; to loopback peers only unless `allowRemote`.
        case web(allowRemote: Bool)
        /// On a plain HTTP listener of its own.
        case listener(Listener)
    }

    public func metricsExposure() throws -> MetricsExposure {
        switch metrics.listen {
        case "off": return .off
        case "web": return .web(allowRemote: metrics.allowRemote)
        default:
            guard let listener = Listener(parsing: metrics.listen), !listener.tls else {
                throw ConfigurationError.invalidMetricsListen(metrics.listen)
            }
            return .listener(Listener(address: listener.address, port: listener.port, http: true))
        }
    }

    public struct Operator: Sendable, Codable, Equatable {
        public var name: String
        /// A verifier made by `parley-server hash-password`, never the password itself.
        public var passwordHash: String

        public init(name: String, passwordHash: String) {
            self.name = name
            self.passwordHash = passwordHash
        }
    }

    /// Reads a JSON configuration file; fields that are missing keep their defaults.
    public static func load(from path: String) throws -> ServerConfiguration {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigurationError.unreadable(path, "cannot read the file (\(error.localizedDescription))")
        }
        do {
            return try JSONDecoder().decode(ServerConfiguration.self, from: data)
        } catch let error as UnknownConfigurationKey {
            throw ConfigurationError.unreadable(path, error.description)
        } catch let DecodingError.typeMismatch(type, context), let DecodingError.valueNotFound(type, context) {
            let place = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw ConfigurationError.unreadable(path, "\(place) should be \(type == String.self ? "a string" : type == Bool.self ? "true or false" : type == Int.self || type == Double.self ? "a number" : "\(type)")")
        } catch let DecodingError.dataCorrupted(context) where !context.codingPath.isEmpty {
            let place = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw ConfigurationError.unreadable(path, "\(place) \(context.debugDescription)")
        } catch let DecodingError.keyNotFound(key, context) {
            let place = (context.codingPath + [key]).map(\.stringValue).joined(separator: ".")
            throw ConfigurationError.unreadable(path, "\(place) is required")
        } catch {
            throw ConfigurationError.unreadable(path, "not valid JSON")
        }
    }

    /// The rules the chat domain enforces, derived from this configuration.
    public func chatConfiguration() throws -> ChatConfiguration {
        var chat = ChatConfiguration()
        chat.serverName = serverName
        chat.networkName = networkName
        chat.serverDescription = serverDescription
        chat.serverPassword = serverPassword
        chat.motd = motd
        chat.monitorLimit = limits.monitorLimit
        chat.historyRetentionMilliseconds = Int64(history.retentionDays * 86_400_000)
        chat.maxUndeliveredPerAccount = history.maxUndeliveredPerAccount
        chat.maxTrackedRecipients = history.maxTrackedRecipients
        chat.maxPendingReceiptsPerAuthor = history.maxPendingReceiptsPerAuthor
        chat.storedBytesPerAccountPerDay = history.storedBytesPerAccountPerDay
        chat.chathistoryLimit = max(1, history.chathistoryLimit)
        chat.transientChannelHistoryLength = max(0, history.transientChannelMessages)
        chat.transientChannelHistoryBytes = max(0, history.transientChannelBytes)
        chat.maxChannelsPerUser = limits.maxChannelsPerUser > 0 ? limits.maxChannelsPerUser : nil
        chat.maxMessageTargets = limits.maxMessageTargets
        chat.maxBansPerChannel = max(1, limits.maxBansPerChannel)
        chat.maxWhoReplies = max(1, limits.maxWhoReplies)
        chat.maxWhoScanned = max(1, limits.maxWhoScanned)
        chat.pingIntervalMilliseconds = Int64(limits.pingIntervalSeconds * 1000)
        chat.pingTimeoutMilliseconds = Int64(limits.pingTimeoutSeconds * 1000)
        chat.storageSlowNoticeMilliseconds = Int64(limits.storageSlowNoticeSeconds * 1000)
        chat.registrationTimeoutMilliseconds = Int64(limits.registrationTimeoutSeconds * 1000)
        chat.passwordIterations = accounts.passwordIterations
        chat.minimumPasswordLength = accounts.minimumPasswordLength
        chat.allowGuests = accounts.allowGuests
        chat.allowAccountRegistration = accounts.allowRegistration
        chat.accountRegistrationBeforeConnect = accounts.registrationBeforeConnect
        chat.loginFailuresAllowed = accounts.loginFailuresAllowed
        chat.loginFailureWindowMilliseconds = Int64(accounts.loginFailureWindowSeconds * 1000)
        chat.loginFailuresPerNetworkAllowed = accounts.loginFailuresPerNetworkAllowed
        chat.maxPasswordChecksInFlight = accounts.maxPasswordChecksInFlight
        chat.accountRegistrationsPerNetworkAllowed = accounts.registrationsPerNetworkAllowed
        chat.accountRegistrationWindowMilliseconds = Int64(accounts.registrationWindowSeconds * 1000)
        // Commands wait in the domain while their connection's password check runs: as many as
        // the shell's flood queue would hold.
        chat.maxHeldCommands = max(1, limits.floodQueueLimit)
        chat.operators = try operators.map { oper in
            guard let credential = PasswordCredential(encoded: oper.passwordHash) else {
                throw ConfigurationError.invalidOperatorHash(oper.name)
            }
            return OperatorCredential(name: oper.name, credential: credential)
        }
        return chat
    }
}

/// A key the configuration does not know is almost always a typo; say so instead of ignoring it.
struct UnknownConfigurationKey: Error, CustomStringConvertible {
    let key: String
    let path: [any CodingKey]
    let known: [String]
    var description: String {
        let place = path.map(\.stringValue).joined(separator: ".")
        return "unknown configuration key \"\(key)\"\(place.isEmpty ? "" : " in \(place)"); known keys: \(known.joined(separator: ", "))"
    }
}

private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension Decoder {
    /// A keyed container that refuses keys outside `Key`.
    func strictContainer<Key: CodingKey & CaseIterable & RawRepresentable>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> where Key.RawValue == String {
        let known = Key.allCases.map(\.rawValue)
        for key in try container(keyedBy: AnyKey.self).allKeys where !known.contains(key.stringValue) {
            throw UnknownConfigurationKey(key: key.stringValue, path: codingPath, known: known)
        }
        return try container(keyedBy: type)
    }
}

extension KeyedDecodingContainer {
    func decode<Value: Decodable>(_ key: Key, default value: Value) throws -> Value {
        try decodeIfPresent(Value.self, forKey: key) ?? value
    }
}

public enum ConfigurationError: Error, CustomStringConvertible, Equatable {
    case invalidOperatorHash(String)
    case unreadable(String, String)
    case invalidListener(String)
    case tlsListenerWithoutCertificate
    case invalidMetricsListen(String)

    public var description: String {
        switch self {
        case .invalidOperatorHash(let name):
            "operator \(name): passwordHash is not a verifier made by `parley-server hash-password`"
        case .unreadable(let path, let reason):
            "configuration \(path): \(reason)"
        case .invalidListener(let text):
            "invalid listener \(text): use ADDRESS:PORT, [IPV6]:PORT or tls://ADDRESS:PORT"
        case .tlsListenerWithoutCertificate:
            "a TLS listener needs tls.certificateFile and tls.privateKeyFile (or --tls-cert and --tls-key)"
        case .invalidMetricsListen(let text):
            "invalid metrics listener \(text): use web, off, ADDRESS:PORT or [IPV6]:PORT (plain HTTP)"
        }
    }
}

extension PasswordCredential {
    /// `scram-sha-256$<iterations>$<salt b64>$<stored key b64>$<server key b64>`: the form used for
    /// operator passwords in the configuration file.
    public var encoded: String {
        ["scram-sha-256", String(iterations), Data(salt).base64EncodedString(),
         Data(storedKey).base64EncodedString(), Data(serverKey).base64EncodedString()].joined(separator: "$")
    }

    public init?(encoded: String) {
        let parts = encoded.split(separator: "$", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 5, parts[0] == "scram-sha-256", let iterations = Int(parts[1]), iterations > 0,
              let salt = Data(base64Encoded: parts[2]), let storedKey = Data(base64Encoded: parts[3]),
              let serverKey = Data(base64Encoded: parts[4]), storedKey.count == 32, serverKey.count == 32
        else { return nil }
        self.init(salt: [UInt8](salt), iterations: iterations, storedKey: [UInt8](storedKey), serverKey: [UInt8](serverKey))
    }
}
