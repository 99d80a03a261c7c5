import Foundation
import Logging
import NIOCore
import PostgresNIO

/// A value bound to a statement. The store writes its SQL with `?` placeholders, as the SQLite
/// store does, and `PostgresSQL` numbers them (`$1`, `$2`, ...) for PostgreSQL.
enum SQLValue: Sendable {
    case int(Int64?)
    case text(String?)
    case bool(Bool?)
    case bytes(Data)

    static func int(_ value: Int) -> SQLValue { .int(Int64(value)) }
}

/// One statement and its values.
struct PostgresSQL: Sendable {
    var query: PostgresQuery

    init(_ sql: String, _ values: [SQLValue] = []) {
        var bindings = PostgresBindings(capacity: values.count)
        for value in values {
            switch value {
            case .int(let number): bindings.append(number)
            case .text(let text): bindings.append(text)
            case .bool(let flag): bindings.append(flag)
            case .bytes(let data): bindings.append(ByteBuffer(bytes: data))
            }
        }
        // Byte by byte: a batch's statement has thousands of placeholders, and walking it by
        // Character cost more than building its rows.
        var numbered: [UInt8] = []
        numbered.reserveCapacity(sql.utf8.count + values.count * 4)
        var next = 1
        for byte in sql.utf8 {
            if byte == UInt8(ascii: "?") {
                numbered.append(UInt8(ascii: "$"))
                numbered.append(contentsOf: String(next).utf8)
                next += 1
            } else {
                numbered.append(byte)
            }
        }
        precondition(next - 1 == values.count, "placeholders and values differ in \(sql)")
        query = PostgresQuery(unsafeSQL: String(decoding: numbered, as: UTF8.self), binds: bindings)
    }
}

extension PostgresConnection {
    /// Runs one statement and waits for all of its rows, blocking the calling thread.
    ///
    /// The storage protocol's transactions and history reads are synchronous: the server calls
    /// them from its own storage thread and reader queue (never an event loop), and a blocking
    /// call there costs no hop into Swift concurrency per statement. PostgresNIO does its I/O
    /// on its event loop, so waiting on the future from any other thread cannot deadlock, even
    /// from a task on the cooperative pool (as tests do).
    @discardableResult
    func run(_ statement: PostgresSQL, logger: Logger) throws -> PostgresQueryResult {
        try query(statement.query, logger: logger).wait()
    }

    @discardableResult
    func run(_ sql: String, _ values: [SQLValue] = [], logger: Logger) throws -> PostgresQueryResult {
        try run(PostgresSQL(sql, values), logger: logger)
    }

    /// The same, for async callers.
    @discardableResult
    func runAsync(_ sql: String, _ values: [SQLValue] = [], logger: Logger) async throws -> PostgresQueryResult {
        try await query(PostgresSQL(sql, values).query, logger: logger).get()
    }
}

extension PostgresRandomAccessRow {
    subscript<Value: PostgresDecodable>(_ column: String, as type: Value.Type = Value.self) -> Value {
        get throws { try self[column].decode(Value.self) }
    }
}
