import ArgumentParser
import CoreMetrics
import IRCWire
import Foundation
import NIOCore
import NIOPosix
import Logging
import ParleyCore
import ParleyServer
import ParleyStorage
import ParleyStorePostgres
import ParleyStoreSQLite
import Prometheus
import ServiceLifecycle
import UnixSignals

@main
struct ParleyServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parley-server",
        abstract: "Parley: an IRC chat server with accounts, groups, offline delivery and receipts.",
        subcommands: [Serve.self, Account.self, HashPassword.self],
        defaultSubcommand: Serve.self
    )
}

/// Options shared by every subcommand that touches the stored data.
struct DataOptions: ParsableArguments {
    @Option(name: .long, help: "JSON configuration file (see docs/configuration.md).")
    var config: String?

    @Option(name: .long, help: "Directory holding the SQLite database (default ./parley-data).")
    var dataDir: String?

    @Option(name: .long, help: ArgumentHelp(
        "A PostgreSQL database to use instead of SQLite in the data directory.",
        valueName: "postgresql://user[:password]@host[:port]/db"))
    var database: String?

    func loadConfiguration() throws -> ServerConfiguration {
        var configuration = try config.map { try ServerConfiguration.load(from: $0) } ?? ServerConfiguration()
        if let dataDir { configuration.dataDirectory = dataDir }
        if let database { configuration.database = database }
        return configuration
    }

    /// The configured store: PostgreSQL when a database is named, else SQLite in the data
    /// directory. A database that cannot be used throws `PostgresStoreError`, whose text is the
    /// one line printed before the non-zero exit.
    func openStore(_ configuration: ServerConfiguration, logger: Logger = DataOptions.quietLogger) async throws -> any ChatStore {
        if let database = configuration.database {
            let name = configuration.nodeName.map { "parley-server \($0) store" } ?? "parley-server"
            return try await PostgresChatStore.open(url: try PostgresDatabaseURL(parsing: database), applicationName: name, logger: logger)
        }
        try FileManager.default.createDirectory(atPath: configuration.dataDirectory, withIntermediateDirectories: true)
        let path = URL(fileURLWithPath: configuration.dataDirectory).appendingPathComponent("parley.sqlite").path
        return try SQLiteChatStore(path: path)
    }

    /// On PostgreSQL, the running nodes take the new or changed account at once (a login on any
    /// node works right away, and an old password stops working).
    func tellRunningNodes(_ record: AccountRecord, _ configuration: ServerConfiguration) async throws {
        guard let database = configuration.database else { return }
        var payload = ByteBuffer()
        ClusterCodec.append(.event(.account(record)), to: &payload)
        try await PostgresClusterLink.sendToLiveNodes(payload, url: try PostgresDatabaseURL(parsing: database), logger: Self.quietLogger)
    }

    /// The admin subcommands print their results on standard output; only problems are logged.
    static var quietLogger: Logger {
        var logger = Logger(label: "parley") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .warning
        return logger
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the server (the default).")

    @OptionGroup var data: DataOptions

    @Option(name: .long, help: ArgumentHelp(
        "Listen on ADDRESS:PORT; repeat for several. [::1]:6667 for IPv6, tls://ADDRESS:PORT for TLS, http://ADDRESS:PORT (https:// with TLS) for the web client and IRCv3 WebSocket at /irc. Replaces the configured listeners.",
        valueName: "address:port"))
    var listen: [String] = []

    @Option(name: .long, help: "PEM certificate chain for TLS listeners.")
    var tlsCert: String?

    @Option(name: .long, help: "PEM private key for TLS listeners.")
    var tlsKey: String?

    @Option(name: .long, help: "Server name shown to clients.")
    var serverName: String?

    @Option(name: .long, help: ArgumentHelp(
        "Where Prometheus metrics are served: web (at /metrics on the web listeners, to this machine only unless metrics.allowRemote), off, or ADDRESS:PORT for a plain HTTP listener of their own.",
        valueName: "web|off|address:port"))
    var metricsListen: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String?

    @Option(name: .long, help: ArgumentHelp(
        "This node's name among the nodes sharing one PostgreSQL --database (default: the host name). Letters, digits and '-'.",
        valueName: "name"))
    var nodeName: String?

    func run() async throws {
        var configuration = try data.loadConfiguration()
        if !listen.isEmpty {
            configuration.listeners = try listen.map { text in
                guard let listener = ServerConfiguration.Listener(parsing: text) else {
                    throw ValidationError(ConfigurationError.invalidListener(text).description)
                }
                return listener
            }
        }
        if let tlsCert, let tlsKey {
            configuration.tls = .init(certificateFile: tlsCert, privateKeyFile: tlsKey,
                                      minimumVersion: configuration.tls?.minimumVersion ?? .defaultMinimum)
        }
        if let serverName { configuration.serverName = serverName }
        if let logLevel { configuration.logLevel = logLevel }
        if let metricsListen { configuration.metrics.listen = metricsListen }
        if let nodeName { configuration.nodeName = nodeName }
        if configuration.nodeName != nil && configuration.database == nil {
            throw ValidationError("--node-name names a node among several sharing a PostgreSQL database: give --database postgresql://... too")
        }
        if configuration.listeners.contains(where: \.tls) && configuration.tls == nil {
            throw ValidationError(ConfigurationError.tlsListenerWithoutCertificate.description)
        }
        do { _ = try configuration.metricsExposure() } catch let error as ConfigurationError {
            throw ValidationError(error.description)
        }

        let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "parley")
        // The server's metrics registry, also the process-wide swift-metrics backend: metrics
        // that libraries emit through `MetricsSystem` appear at /metrics beside Parley's.
        let metricsRegistry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metricsRegistry))
        let store = try await data.openStore(configuration, logger: logger)
        // On PostgreSQL a server is always a node of a cluster, possibly of one: a second node
        // started on the same database then finds it instead of silently splitting the users.
        var cluster: PostgresClusterLink?
        if let database = configuration.database {
            do {
                cluster = try await PostgresClusterLink.join(
                    url: try PostgresDatabaseURL(parsing: database), nodeName: configuration.nodeName ?? Self.defaultNodeName(), logger: logger)
            } catch {
                try? await store.close()
                throw error
            }
        }
        // One event loop per CPU this process may run on (taskset included) but the first, which
        // is left to the storage thread and the kernel's socket work; at least one. The domain
        // runs under one lock, so a loop without a core of its own only adds contention: on two
        // CPUs one loop carried 5-16 % more than two (bench/loops.sh, README).
        let threads = configuration.threads > 0 ? configuration.threads : max(1, availableCPUCount() - 1)
        let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        logger.info("event loops", metadata: ["threads": "\(threads)"])
        do {
            let server = try await ParleyServer(configuration: configuration, store: store, cluster: cluster, group: eventLoops,
                                                metricsRegistry: metricsRegistry, logger: logger)
            let services = ServiceGroup(
                configuration: .init(
                    services: [.init(service: server)],
                    gracefulShutdownSignals: [.sigterm, .sigint],
                    logger: logger))
            try await services.run()
        } catch {
            await cluster?.leave()
            try? await store.close()
            try? await eventLoops.shutdownGracefully()
            throw error
        }
        try await store.close()
        try? await eventLoops.shutdownGracefully()
    }

    /// The host name, lower-cased, with anything a node name cannot hold replaced by '-'.
    static func defaultNodeName() -> String {
        let host = ProcessInfo.processInfo.hostName.lowercased().split(separator: ".").first.map(String.init) ?? "node"
        let cleaned = String(host.map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "-" }.prefix(32))
        return PostgresClusterLink.isValidNodeName(cleaned) ? cleaned : "node"
    }
}

struct Account: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage accounts in a data directory or PostgreSQL database. On PostgreSQL running nodes learn of the change at once; with a data directory, run while the server is stopped or restart it afterwards.",
        subcommands: [Create.self, ResetPassword.self, List.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an account; the password is read from standard input.")
        @OptionGroup var data: DataOptions
        @Argument(help: "The account name, which is also its nick.") var name: String

        func run() async throws {
            let configuration = try data.loadConfiguration()
            let chat = try configuration.chatConfiguration()
            let nick: Nickname
            do { nick = try Nickname(name, caseMapping: chat.caseMapping, maxLength: chat.nickLength) } catch {
                throw ValidationError("\(name) is not a valid nick: letters, digits and []\\`_^{|}- only, up to \(chat.nickLength) characters")
            }
            let password = try readPassword(prompt: "Password for \(name): ", minimumLength: chat.minimumPasswordLength)
            let store = try await data.openStore(configuration)
            let credential = PasswordCredential.derive(password: password, iterations: chat.passwordIterations)
            let record = AccountRecord(name: nick.name, key: nick.folded, credential: credential, createdAt: Date(), lastSeen: nil, email: nil)
            do {
                try await store.insertAccount(record)
            } catch StoreError.accountExists {
                try? await store.close()
                throw ValidationError("an account named \(name) already exists")
            }
            try await store.close()
            try await data.tellRunningNodes(record, configuration)
            print("created account \(nick.name)")
        }
    }

    struct ResetPassword: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set a new password; read from standard input.")
        @OptionGroup var data: DataOptions
        @Argument(help: "The account name.") var name: String

        func run() async throws {
            let configuration = try data.loadConfiguration()
            let chat = try configuration.chatConfiguration()
            let password = try readPassword(prompt: "New password for \(name): ", minimumLength: chat.minimumPasswordLength)
            let store = try await data.openStore(configuration)
            let credential = PasswordCredential.derive(password: password, iterations: chat.passwordIterations)
            let key = chat.caseMapping.fold(name)
            let updated = try await store.updateCredential(accountKey: key, credential)
            let record = updated ? try await store.loadAccounts().first { $0.key == key } : nil
            try await store.close()
            guard updated else { throw ValidationError("no account named \(name)") }
            if let record { try await data.tellRunningNodes(record, configuration) }
            print("password changed for \(name)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List accounts with when they were created and last seen.")
        @OptionGroup var data: DataOptions

        func run() async throws {
            let configuration = try data.loadConfiguration()
            let store = try await data.openStore(configuration)
            let accounts = try await store.loadAccounts().sorted { $0.key < $1.key }
            try await store.close()
            for account in accounts {
                let lastSeen = account.lastSeen.map { Timestamp($0).iso8601 } ?? "never"
                print("\(account.name)\tcreated \(Timestamp(account.createdAt).iso8601)\tlast seen \(lastSeen)")
            }
            print("\(accounts.count) account(s)")
        }
    }
}

struct HashPassword: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hash-password",
        abstract: "Read a password from standard input and print a verifier for the operators section of the configuration.")

    @Option(help: "PBKDF2 iterations.") var iterations = 210_000

    func run() throws {
        let password = try readPassword(prompt: "Password: ", minimumLength: 1)
        print(PasswordCredential.derive(password: password, iterations: iterations).encoded)
    }
}

/// Reads a password from standard input: without echo on a terminal, else the first line.
func readPassword(prompt: String, minimumLength: Int) throws -> String {
    var password: String?
    if isatty(STDIN_FILENO) == 1 {
        FileHandle.standardError.write(Data(prompt.utf8))
        var original = termios()
        tcgetattr(STDIN_FILENO, &original)
        var silent = original
        silent.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &silent)
        password = readLine(strippingNewline: true)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &original)
        FileHandle.standardError.write(Data("\n".utf8))
    } else {
        password = readLine(strippingNewline: true)
    }
    guard let password, password.utf8.count >= minimumLength else {
        throw ValidationError("the password must be at least \(minimumLength) bytes")
    }
    return password
}

/// The CPUs this process may run on (its affinity mask, which taskset sets), at least 1.
func availableCPUCount() -> Int {
    if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
       let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") }) {
        let mask = line.dropFirst("Cpus_allowed:".count).filter { $0.isHexDigit }
        let count = mask.reduce(0) { $0 + (Int(String($1), radix: 16) ?? 0).nonzeroBitCount }
        if count > 0 { return count }
    }
    return max(1, NIOCore.System.coreCount)
}
