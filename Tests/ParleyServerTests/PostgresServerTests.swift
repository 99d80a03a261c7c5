import Foundation
import IRCWire
import ParleyStorePostgres
import PostgresTestSupport
import Testing

/// `parley-server --database postgresql://...`: the real executable on a real PostgreSQL (one new
/// database per test; see PostgresTestSupport for where the server comes from).
@Suite("parley-server on PostgreSQL")
struct PostgresServerTests {
    /// A data directory (for the configuration file only) and a config naming `database`.
    static func makeConfig(database: PostgresDatabaseURL) throws -> (directory: URL, config: URL) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-pg-process-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let config = directory.appendingPathComponent("parley.json")
        let json = #"{ "accounts": { "passwordIterations": 4096 }, "database": "\#(database)" }"#
        try Data(json.utf8).write(to: config)
        return (directory, config)
    }

    @Test func accountsAGroupAndOfflineDeliverySurviveARestart() async throws {
        let (url, drop) = try await TestPostgres.freshDatabase()
        let (directory, config) = try Self.makeConfig(database: url)
        defer { try? FileManager.default.removeItem(at: directory) }

        // The admin subcommands work on the database (here through --database, not the file).
        for name in ["alice", "bob"] {
            let created = try ServerProcess.run(["account", "create", name, "--database", url.description], input: "\(name)-password\n")
            #expect(created.status == 0, "\(created.errors)")
        }
        let listed = try ServerProcess.run(["account", "list", "--database", url.description])
        #expect(listed.output.contains("2 account(s)"), "\(listed.output)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("parley.sqlite").path), "no SQLite file beside it")

        var server = try await ServerProcess(dataDirectory: directory, configFile: config)
        let alice = try await TestClient.registered("alice", port: server.ports[0], password: "alice-password")
        alice.send("JOIN #team")
        try await alice.expect { $0.command == "JOIN" }
        alice.send("INVITE bob #team")
        try await alice.expect(numeric: "341")
        alice.send("PRIVMSG bob :while you were away")
        alice.send("PRIVMSG #team :hello team")
        // PING/PONG: the server handled (and stored) both messages before this answer.
        alice.send("PING :stored")
        try await alice.expect { $0.command == "PONG" }
        await alice.close()
        server.signal(SIGTERM)
        #expect(try await server.waitForExit(timeout: .seconds(10)) == 0, "\(server.logText)")
        // The same database, a new process: everything came from PostgreSQL.
        server = try await ServerProcess(dataDirectory: directory, configFile: config)
        let bob = try await TestClient.registered("bob", port: server.ports[1], host: "::1", password: "bob-password")
        let joined = try await bob.expect { $0.command == "JOIN" }
        #expect(joined.parameters.first == "#team", "bob was added while offline")
        let direct = try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.first == "bob" }
        #expect(direct.parameters.last?.hasSuffix("while you were away") == true, "replayed with its original time: \(direct)")
        let group = try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.first == "#team" }
        #expect(group.parameters.last?.hasSuffix("hello team") == true)
        await bob.close()
        server.signal(SIGTERM)
        #expect(try await server.waitForExit(timeout: .seconds(10)) == 0)
        try await drop()
    }

    /// A database that cannot be used stops the start with one line naming the problem.
    @Test func unusableDatabasesAreRefusedWithOneClearLine() async throws {
        let server = try await TestPostgres.server()
        let (newer, drop) = try await TestPostgres.freshDatabase()
        try await PostgresChatStore.open(url: newer).close()
        try await TestPostgres.execute("INSERT INTO parley_schema_migrations (version, name) VALUES (999, 'future')", on: newer)
        let cases: [(database: String, says: String)] = [
            ("postgresql://127.0.0.1/parley", "names no user"),
            ("postgres://parley@127.0.0.1:99999/parley", "port 99999 is out of range"),
            (server.with(database: "postgres").description.replacingOccurrences(of: "//\(server.user)@", with: "//no_such_role@"),
             "refused the login"),
            (server.with(database: "parley_missing").description, "does not exist"),
            (newer.description, "newer than this parley-server understands"),
        ]
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-pg-bad-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        for (database, says) in cases {
            let result = try ServerProcess.run(["serve", "--database", database, "--data-dir", directory.path, "--listen", "127.0.0.1:0"])
            let lines = result.errors.split(separator: "\n")
            #expect(result.status != 0, "\(database)")
            #expect(lines.count == 1 && result.errors.contains(says), "\(database): \(result.errors)")
            #expect(!result.errors.contains("Fatal error"))
        }
        try await drop()
    }
}
