import GRDB
import GRDBSQLite

/// Binds values straight into one of GRDB's prepared statements and runs it. GRDB's
/// `execute(arguments:)` first builds `StatementArguments` (an array of boxed values) per row;
/// for the message inserts, which run for every message stored, that was most of the binding
/// time. Used inside a GRDB write transaction, on the statement's own connection.
struct SQLiteBinding {
    private let statement: OpaquePointer
    private let connection: OpaquePointer?

    init(_ statement: Statement, in db: Database) {
        self.statement = statement.sqliteStatement
        self.connection = db.sqliteConnection
    }

    /// SQLite copies the bytes (the Swift string may move once the call returns).
    private static var transient: sqlite3_destructor_type { unsafeBitCast(-1 as Int, to: sqlite3_destructor_type.self) }

    func bind(_ index: Int32, _ text: String) {
        var text = text
        text.withUTF8 { bytes in
            guard let base = bytes.baseAddress else {
                _ = sqlite3_bind_text(statement, index, "", 0, Self.transient)
                return
            }
            base.withMemoryRebound(to: CChar.self, capacity: bytes.count) { characters in
                _ = sqlite3_bind_text(statement, index, characters, Int32(bytes.count), Self.transient)
            }
        }
    }

    func bind(_ index: Int32, _ text: String?) {
        if let text { bind(index, text) } else { sqlite3_bind_null(statement, index) }
    }

    func bind(_ index: Int32, _ value: Int64) {
        sqlite3_bind_int64(statement, index, value)
    }

    func bind(_ index: Int32, _ value: Int64?) {
        if let value { sqlite3_bind_int64(statement, index, value) } else { sqlite3_bind_null(statement, index) }
    }

    func bind(_ index: Int32, _ flag: Bool) {
        sqlite3_bind_int64(statement, index, flag ? 1 : 0)
    }

    func bind(_ index: Int32, _ flag: Bool?) {
        if let flag { bind(index, flag) } else { sqlite3_bind_null(statement, index) }
    }

    /// Runs the statement to completion and readies it for the next row.
    func run() throws {
        let code = sqlite3_step(statement)
        guard code == SQLITE_DONE else {
            // Read the error before the reset, which starts a new API call.
            let extended = connection.map { sqlite3_extended_errcode($0) } ?? code
            let message = connection.flatMap { sqlite3_errmsg($0) }.map { String(cString: $0) }
            sqlite3_reset(statement)
            throw DatabaseError(resultCode: ResultCode(rawValue: extended), message: message)
        }
        sqlite3_reset(statement)
    }
}
