import Foundation
import GRDBSQLite
import IRCWire
import Testing

/// When storage falls behind, the server stops reading the connections whose messages wait for
/// it, and reads them again once it has caught up: memory stays bounded, nothing is lost or
/// reordered. The store is made slow for real: a second SQLite connection holds the database's
/// write lock, so the server's commits wait behind it (its busy timeout is 5 s).
@Suite("Storage backpressure over real sockets and SQLite")
struct StorageBackpressureTests {
    @Test func aSenderIsNotReadWhileStorageIsBehindAndLosesNothing() async throws {
        let limit = 8
        let server = try await TestServer { configuration in
            configuration.limits.storageQueueLimit = limit
            configuration.limits.floodCommandsPerSecond = 0
        }
        for name in ["alice", "bob"] {
            try await AccountTests.createAccount(name, password: "\(name)-password", port: server.ipv4Port)
        }
        // alice takes receipts: for an author without them, the first receipt that waits is noted
        // in the store, one more write in the queue than the messages.
        let alice = try await TestClient.registered(
            "alice", port: server.ipv4Port, caps: ["echo-message", "batch", "server-time", "message-tags", "draft/chathistory", "parley.chat/receipts"],
            password: "alice-password")
        let bob = try await TestClient.registered("bob", port: server.ipv4Port, password: "bob-password")

        // Logins and account creation leave no storage work behind: alice's messages are then the
        // only writes waiting.
        let blocker = try await Self.lockDatabaseOnceIdle(server)

        let count = 300
        let texts = (0..<count).map { "message \($0)" }
        alice.sendRaw(Array((texts.map { "PRIVMSG bob :\($0)\r\n" }.joined() + "PING :after-all\r\n").utf8))

        // Bob gets messages as they are read, before they are committed: the first `limit`
        // arrive, then the server stops reading alice.
        let early = try await bob.lines(through: { $0.parameters.last == texts[limit - 1] }, "the first \(limit) messages")
        bob.send("PING :barrier")
        let beforeBarrier = try await bob.lines(through: { $0.command == "PONG" }, "bob's PONG")
        let readWhileBlocked = (early + beforeBarrier).filter { $0.command == "PRIVMSG" }.compactMap(\.parameters.last)
        #expect(readWhileBlocked == Array(texts.prefix(readWhileBlocked.count)))
        #expect(readWhileBlocked.count <= limit + 1, "the server read on while \(server.storageBacklog) writes waited")
        #expect(server.storageBacklog <= limit + 1, "memory stays bounded")
        #expect(!alice.drain().contains { $0.contains("PRIVMSG") || $0.contains("PONG") }, "nothing is echoed before it is on disk")

        // The disk is fast again: alice is read again, every message is echoed in order, then
        // her PONG; bob gets the rest, in order, none twice.
        try blocker.release()
        let echoed = try await alice.lines(through: { $0.command == "PONG" }, "alice's PONG", timeout: .seconds(20))
        #expect(echoed.filter { $0.command == "PRIVMSG" }.compactMap(\.parameters.last) == texts)
        bob.send("PING :end")
        let rest = try await bob.lines(through: { $0.command == "PONG" }, "bob's last PONG", timeout: .seconds(20))
        #expect(readWhileBlocked + rest.filter { $0.command == "PRIVMSG" }.compactMap(\.parameters.last) == texts)

        // And all of it is on disk.
        #expect(try await IdentityTests.history(alice, "CHATHISTORY LATEST bob * 500") == texts)
        try await server.shutdownAndRemove()
    }

    @Test func aSenderWhoseMessageWaitsForTheDatabaseIsToldSoAndStillGetsItsEcho() async throws {
        let server = try await TestServer { configuration in
            configuration.limits.storageSlowNoticeSeconds = 0.5
        }
        for name in ["alice", "bob"] {
            try await AccountTests.createAccount(name, password: "\(name)-password", port: server.ipv4Port)
        }
        let alice = try await TestClient.registered("alice", port: server.ipv4Port, caps: ["echo-message", "batch", "draft/chathistory"],
                                                    password: "alice-password")
        let bob = try await TestClient.registered("bob", port: server.ipv4Port, password: "bob-password")
        // The database stops answering: the commit of alice's message waits (up to the store's
        // 5 s busy timeout).
        let blocker = try await Self.lockDatabaseOnceIdle(server)
        alice.send("PRIVMSG bob :held up")
        _ = try await bob.lines(through: { $0.parameters.last == "held up" }, "bob's copy, sent before the commit")

        let note = try await alice.lines(through: { $0.command == "NOTE" }, "alice's STORAGE_SLOW note")
        #expect(note.last?.parameters.prefix(2) == ["*", "STORAGE_SLOW"], "\(note)")
        #expect(!note.contains { $0.command == "PRIVMSG" }, "no echo before the commit")

        try blocker.release()
        alice.send("PING :after")
        let rest = try await alice.lines(through: { $0.command == "PONG" }, "alice's PONG")
        #expect(rest.map(\.command) == ["PRIVMSG", "PONG"], "the echo once stored, no FAIL: \(rest)")
        #expect(try await IdentityTests.history(alice, "CHATHISTORY LATEST bob * 10") == ["held up"])
        try await server.shutdownAndRemove()
    }
}

extension StorageBackpressureTests {
    /// Waits until the server's storage thread has nothing left to write, then takes the
    /// database's write lock: the next commit waits behind it.
    static func lockDatabaseOnceIdle(_ server: TestServer) async throws -> SQLiteWriteLock {
        let deadline = ContinuousClock.now + .seconds(5)
        while server.storageBacklog > 0 && ContinuousClock.now < deadline { await Task.yield() }
        try #require(server.storageBacklog == 0)
        return try SQLiteWriteLock(path: server.directory.appendingPathComponent("parley.sqlite").path)
    }
}

/// Another connection to a SQLite file holding its write lock (`BEGIN IMMEDIATE`) until
/// `release()`: every other writer waits, as behind a slow disk.
final class SQLiteWriteLock {
    struct Failure: Error { let message: String }
    private var connection: OpaquePointer?

    init(path: String) throws {
        guard sqlite3_open_v2(path, &connection, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK else {
            throw Failure(message: "cannot open \(path)")
        }
        // The server may be committing at this moment: wait for it like any writer.
        sqlite3_busy_timeout(connection, 5000)
        try execute("BEGIN IMMEDIATE")
    }

    func release() throws {
        try execute("COMMIT")
        sqlite3_close(connection)
        connection = nil
    }

    private func execute(_ sql: String) throws {
        guard sqlite3_exec(connection, sql, nil, nil, nil) == SQLITE_OK else {
            throw Failure(message: "\(sql): \(String(cString: sqlite3_errmsg(connection)))")
        }
    }

    deinit { if connection != nil { sqlite3_close(connection) } }
}
