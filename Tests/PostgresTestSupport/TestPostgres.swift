import Foundation
import Logging
import NIOPosix
import ParleyStorePostgres
import PostgresNIO

/// Where the tests' PostgreSQL comes from: the server named by `PARLEY_TEST_POSTGRES_URL` (CI
/// starts one; see .ci/run), or else a throwaway cluster this process starts once with the
/// machine's `initdb` and that stops when the process ends. Without either, the PostgreSQL cases
/// fail with `TestPostgresError`, which says how to provide one: they never pass silently.
public enum TestPostgres {
    public static let environmentVariable = "PARLEY_TEST_POSTGRES_URL"

    /// The server's administrative URL (its `postgres` database).
    public static func server() async throws -> PostgresDatabaseURL {
        try await ClusterStarter.shared.url()
    }

    /// A new empty database on the server, for one test; `drop` removes it.
    public static func freshDatabase() async throws -> (url: PostgresDatabaseURL, drop: @Sendable () async throws -> Void) {
        let admin = try await server()
        let name = "parley_test_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16)
        try await execute("CREATE DATABASE \(name)", on: admin)
        return (admin.with(database: String(name)), { try await execute("DROP DATABASE IF EXISTS \(name) WITH (FORCE)", on: admin) })
    }

    /// Runs one statement on a short-lived connection.
    public static func execute(_ sql: String, on url: PostgresDatabaseURL) async throws {
        let configuration = PostgresConnection.Configuration(
            host: url.host, port: url.port, username: url.user, password: url.password, database: url.database, tls: .disable)
        let connection = try await PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.next(), configuration: configuration,
                                                              id: 0, logger: Logger(label: "parley.test.postgres"))
        do {
            try await connection.query(PostgresQuery(unsafeSQL: sql), logger: Logger(label: "parley.test.postgres"))
        } catch {
            try? await connection.close()
            throw error
        }
        try await connection.close()
    }

    /// Runs one query on a short-lived connection and returns its first row's first column as
    /// text (nil without rows), for tests that wait on what is committed.
    public static func firstValue(_ sql: String, on url: PostgresDatabaseURL) async throws -> String? {
        let configuration = PostgresConnection.Configuration(
            host: url.host, port: url.port, username: url.user, password: url.password, database: url.database, tls: .disable)
        let connection = try await PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.next(), configuration: configuration,
                                                              id: 0, logger: Logger(label: "parley.test.postgres"))
        do {
            var value: String?
            for try await row in try await connection.query(PostgresQuery(unsafeSQL: sql), logger: Logger(label: "parley.test.postgres")) {
                if value == nil { value = try row.decode(String?.self) }
            }
            try await connection.close()
            return value
        } catch {
            try? await connection.close()
            throw error
        }
    }
}

/// A transaction kept open on a connection of its own, for a test that holds row or table
/// locks (say, `SELECT ... FOR UPDATE`) while the code under test runs.
public enum HeldTransaction {
    /// Begins a transaction, runs `sql` in it, runs `body`, then commits (letting go of the
    /// locks) and closes the connection, also when `body` throws.
    public static func holding<Value>(_ sql: String, on url: PostgresDatabaseURL,
                                      while body: () async throws -> Value) async throws -> Value {
        let logger = Logger(label: "parley.test.postgres")
        let configuration = PostgresConnection.Configuration(
            host: url.host, port: url.port, username: url.user, password: url.password, database: url.database, tls: .disable)
        let connection = try await PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.next(), configuration: configuration,
                                                              id: 0, logger: logger)
        let value: Value
        do {
            for statement in ["BEGIN", sql] {
                for try await _ in try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger) {}
            }
            value = try await body()
            for try await _ in try await connection.query("COMMIT", logger: logger) {}
        } catch {
            try? await connection.close()
            throw error
        }
        try await connection.close()
        return value
    }
}

/// A PostgreSQL server of one test's own, which the test may stop (as a crash: immediate mode)
/// and start again, to see what the server does while its database is gone.
public struct DedicatedPostgres: Sendable {
    public let url: PostgresDatabaseURL
    /// With `make(tlsOnly: true)`: the server's self-signed certificate (PEM), issued for `localhost`.
    public let certificateFile: String?
    let start: @Sendable () throws -> Void
    let stop: @Sendable () throws -> Void

    /// A new cluster (initdb, a free port); it is removed when the test process ends. With
    /// `tlsOnly`, it refuses connections without TLS (`openssl` makes its certificate).
    public static func make(tlsOnly: Bool = false) async throws -> DedicatedPostgres {
        guard let binaries = ClusterStarter.postgresBinaries() else {
            throw TestPostgresError(description: "this test starts a PostgreSQL server of its own: install PostgreSQL (Debian: apt-get install postgresql)")
        }
        return try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try ClusterStarter.startDedicated(binaries: binaries, tlsOnly: tlsOnly) }) }
        }
    }

    public func crash() throws { try stop() }
    public func restart() throws { try start() }
}

public struct TestPostgresError: Error, CustomStringConvertible {
    public let description: String
}

/// Starts the throwaway cluster at most once per process.
actor ClusterStarter {
    static let shared = ClusterStarter()
    /// Shared by every caller, including those that arrive while it runs.
    private var starting: Task<PostgresDatabaseURL, any Error>?

    func url() async throws -> PostgresDatabaseURL {
        if starting == nil {
            // initdb and pg_ctl take seconds: they wait on a Dispatch thread, not on one of the
            // few threads of the cooperative pool that the tests running meanwhile need.
            starting = Task {
                try await withCheckedThrowingContinuation { continuation in
                    DispatchQueue.global().async { continuation.resume(with: Result { try Self.locateOrStart() }) }
                }
            }
        }
        return try await starting!.value
    }

    private static func locateOrStart() throws -> PostgresDatabaseURL {
        if let text = ProcessInfo.processInfo.environment[TestPostgres.environmentVariable], !text.isEmpty {
            do { return try PostgresDatabaseURL(parsing: text) } catch {
                throw TestPostgresError(description: "\(TestPostgres.environmentVariable) is not usable: \(error)")
            }
        }
        guard let binaries = postgresBinaries() else {
            throw TestPostgresError(description: """
                The PostgreSQL tests need a PostgreSQL server: set \(TestPostgres.environmentVariable)=postgresql://USER@127.0.0.1:PORT/postgres \
                (a user that may create databases), or install PostgreSQL (Debian: apt-get install postgresql) so that the tests start a \
                throwaway cluster themselves.
                """)
        }
        return try startCluster(binaries: binaries)
    }

    /// The directory holding `initdb` and `pg_ctl`: Debian's newest version, or the PATH.
    static func postgresBinaries() -> URL? {
        let debian = URL(fileURLWithPath: "/usr/lib/postgresql")
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: debian.path)) ?? []
        for version in versions.sorted(by: { (Int($0) ?? 0) > (Int($1) ?? 0) }) {
            let bin = debian.appendingPathComponent(version).appendingPathComponent("bin")
            if FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent("initdb").path) { return bin }
        }
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let bin = URL(fileURLWithPath: String(directory))
            if FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent("initdb").path) { return bin }
        }
        return nil
    }

    /// initdb into a temporary directory (as the postgres user when running as root: initdb
    /// refuses root), a free port on 127.0.0.1, trust authentication; a watchdog process stops
    /// the cluster and removes it once this process is gone, however it ends.
    static func startCluster(binaries: URL) throws -> PostgresDatabaseURL {
        try startDedicated(binaries: binaries).url
    }

    static func startDedicated(binaries: URL, tlsOnly: Bool = false) throws -> DedicatedPostgres {
        let asRoot = geteuid() == 0
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-test-pg-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        if asRoot { try run("/bin/chown", ["postgres:", directory.path], output: nil) }
        let data = directory.appendingPathComponent("data").path
        // Output goes to a file, not a pipe: the server that pg_ctl starts would hold a pipe open.
        let output = directory.appendingPathComponent("setup.log")
        let runAsOwner: @Sendable (String, [String]) throws -> Void = { path, arguments in
            if asRoot { try run("/usr/sbin/runuser", ["-u", "postgres", "--", path] + arguments, output: output) } else { try run(path, arguments, output: output) }
        }
        let asOwner: @Sendable (String, [String]) throws -> Void = { tool, arguments in
            try runAsOwner(binaries.appendingPathComponent(tool).path, arguments)
        }
        try asOwner("initdb", ["-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        let port = try freePort()
        // Test data need no durability: fsync off makes each CREATE DATABASE and commit cheap.
        var serverOptions = "-c listen_addresses=127.0.0.1 -p \(port) -k \(directory.path) -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        var certificateFile: String?
        if tlsOnly {
            let certificate = directory.appendingPathComponent("server.crt").path
            let key = directory.appendingPathComponent("server.key").path
            // Made by the server's user: PostgreSQL refuses a key that others may read.
            try runAsOwner("/usr/bin/env", ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                            "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                                            "-keyout", key, "-out", certificate])
            try runAsOwner("/bin/chmod", ["600", key])
            // TLS over TCP or nothing (the socket in the directory stays open for the tools).
            try Data("""
                local all all trust
                hostssl all all 127.0.0.1/32 trust
                hostnossl all all 127.0.0.1/32 reject
                """.utf8).write(to: URL(fileURLWithPath: data).appendingPathComponent("pg_hba.conf"))
            serverOptions += " -c ssl=on -c ssl_cert_file=\(certificate) -c ssl_key_file=\(key)"
            certificateFile = certificate
        }
        let options = serverOptions
        let start: @Sendable () throws -> Void = { try asOwner("pg_ctl", ["-D", data, "-w", "-l", directory.appendingPathComponent("log").path, "-o", options, "start"]) }
        try start()
        let stop = (asRoot ? "/usr/sbin/runuser -u postgres -- " : "") + "\(binaries.appendingPathComponent("pg_ctl").path) -D \(data) -m immediate stop"
        try spawn("/bin/sh", ["-c", "while kill -0 \(getpid()) 2>/dev/null; do sleep 1; done; \(stop); rm -rf \(directory.path)"], output: "/dev/null")
        return DedicatedPostgres(
            url: PostgresDatabaseURL(host: "127.0.0.1", port: port, user: "postgres", database: "postgres"),
            certificateFile: certificateFile, start: start, stop: { try asOwner("pg_ctl", ["-D", data, "-m", "immediate", "stop"]) })
    }

    /// Runs a command to its end with posix_spawn and waitpid. (Foundation's Process did not see
    /// pg_ctl's exit while the server it started lived on.)
    static func run(_ executable: String, _ arguments: [String], output: URL?) throws {
        let pid = try spawn(executable, arguments, output: output?.path ?? "/dev/null")
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        guard status == 0 else {
            let text = output.flatMap { try? String(contentsOf: $0, encoding: .utf8) } ?? ""
            throw TestPostgresError(description: "starting the test PostgreSQL failed: \(executable) \(arguments.joined(separator: " ")): \(text)")
        }
    }

    /// Starts a command with standard input from /dev/null and its output appended to `output`.
    @discardableResult
    static func spawn(_ executable: String, _ arguments: [String], output: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing else of this process may leak into the children (the watchdog and the server
        // live on): a socket the tests' server closes would stay open in them, and its client
        // would never see the close.
        closeInheritedDescriptors(&actions)
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        guard result == 0 else { throw TestPostgresError(description: "could not run \(executable): error \(result)") }
        return pid
    }

    /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34 and later), which Swift's Glibc
    /// module does not declare; else every descriptor open now is closed one by one.
    private static func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") {
            _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
            return
        }
        let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        for descriptor in open.compactMap({ Int32($0) }) where descriptor > 2 {
            posix_spawn_file_actions_addclose(&actions, descriptor)
        }
    }

    private static func freePort() throws -> Int {
        let socket = try ServerSocketProbe()
        return socket.port
    }
}

/// Binds 127.0.0.1:0 to learn a free port, then releases it for PostgreSQL.
private struct ServerSocketProbe {
    let port: Int

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw TestPostgresError(description: "socket() failed") }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0 }
        }
        guard bound else { throw TestPostgresError(description: "could not find a free port on 127.0.0.1") }
        port = Int(UInt16(bigEndian: address.sin_port))
    }
}
