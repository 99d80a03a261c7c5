import Dispatch
import GRDB
import GRDBSQLite
import Synchronization

/// Copies the WAL into the database file on a thread of its own, so that commits never wait for
/// a checkpoint. With SQLite's automatic checkpoints, the commit that took the WAL past the
/// limit copied it and waited for two `fdatasync`s before returning: the storage thread stood
/// still for tens of milliseconds every 10,000 pages (40 MB, under a second at full speed),
/// every message in flight waited with it, and the event loop had nothing to do meanwhile. That
/// stall was the stored path's p99 (offline, ten senders: 47-52 ms; 18-20 ms with this, 14-20
/// ms with no checkpoints at all) and left the server's core idle 9-12 % of the time.
///
/// The writer's connection reports each commit's WAL size (`sqlite3_wal_hook`); past
/// `pages` not yet checkpointed, a PASSIVE checkpoint runs on this checkpointer's own
/// connection. It copies what was committed when it started, without blocking the writer, and
/// goes again (up to `maxRounds`) while the writer added more meanwhile: SQLite starts the WAL
/// from its beginning again only at a write transaction that began with all of it copied.
/// Under steady writes the storage thread is nearly always inside a transaction, so the WAL
/// keeps growing until `writerCheckpointPages` (160 MB with 4 KiB pages; 40 MB before), where
/// the writer checkpoints itself, as SQLite's automatic checkpoints did: by then the background
/// has copied all but the last few thousand pages (it goes every tenth of `pages` over the last
/// `pages` before the limit), and the WAL starts again. (A writer that copied the rest as soon
/// as the background had caught up, at most a tenth of `pages`, found that moment in one WAL
/// of six in a full-speed trial: the background takes long enough for the writer to add more.)
///
/// Durability is unchanged: a commit is in the WAL when it returns either way, and the
/// checkpoint syncs the WAL before it copies and the database after (`synchronous=NORMAL`).
final class WALCheckpointer: Sendable {
    /// WAL pages not yet checkpointed at which a background checkpoint starts.
    let pages: Int
    /// WAL pages at which the writer checkpoints itself whatever is left to copy.
    var writerCheckpointPages: Int { 4 * pages }
    /// Rounds of one background checkpoint chasing the writer's newer commits.
    static let maxRounds = 8

    private struct State {
        var running = false
        /// Frames of the current WAL the latest checkpoint copied (0 after the WAL restarted).
        var checkpointedFrames = 0
        var completedCheckpoints = 0
        var closed = false
    }

    /// Used on `queue` only (and by `deinit`); nil once closed.
    private nonisolated(unsafe) var connection: OpaquePointer?
    private let queue = DispatchQueue(label: "parley-wal-checkpoint")
    private let state = Mutex(State())

    init(path: String, pages: Int) throws {
        var connection: OpaquePointer?
        let opened = sqlite3_open_v2(path, &connection, SQLITE_OPEN_READWRITE, nil)
        guard opened == SQLITE_OK, let connection else {
            let message = connection.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(connection)
            throw DatabaseError(resultCode: ResultCode(rawValue: opened), message: "checkpoint connection: \(message)")
        }
        // A connection that has not read the database yet does not know it is in WAL mode, and
        // its checkpoints do nothing (they report a log of -1 frames).
        let read = sqlite3_exec(connection, "SELECT count(*) FROM sqlite_master", nil, nil, nil)
        guard read == SQLITE_OK else {
            let message = String(cString: sqlite3_errmsg(connection))
            sqlite3_close(connection)
            throw DatabaseError(resultCode: ResultCode(rawValue: read), message: "checkpoint connection: \(message)")
        }
        self.connection = connection
        self.pages = max(1, pages)
    }

    deinit {
        sqlite3_close(connection)
    }

    /// Background checkpoints that copied frames, so far.
    var completedCheckpoints: Int { state.withLock { $0.completedCheckpoints } }

    /// Replaces SQLite's automatic checkpoints on the writer's `connection`. The hook holds this
    /// checkpointer unretained: the store keeps it for as long as its connections live.
    func install(onWriter connection: OpaquePointer) {
        sqlite3_wal_autocheckpoint(connection, 0)
        sqlite3_wal_hook(connection, { context, writer, _, walPages in
            if let context, let writer {
                Unmanaged<WALCheckpointer>.fromOpaque(context).takeUnretainedValue().committed(walPages: Int(walPages), writer: writer)
            }
            return SQLITE_OK
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    /// After each commit, on the writer's thread, inside SQLite.
    private func committed(walPages: Int, writer: OpaquePointer) {
        if walPages >= writerCheckpointPages {
            // Called from the WAL hook, as SQLite's own automatic checkpoint is. BUSY while the
            // background's runs: then it is left to that one.
            if sqlite3_wal_checkpoint_v2(writer, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil) == SQLITE_OK {
                state.withLock { $0.checkpointedFrames = 0 }
            }
            return
        }
        let start = state.withLock { state -> Bool in
            // A WAL smaller than what was copied of it has started again from its beginning.
            if walPages < state.checkpointedFrames { state.checkpointedFrames = 0 }
            // Close to the writer's limit the background goes more often, so that the writer
            // finds little left to copy there.
            let due = walPages >= writerCheckpointPages - pages ? max(1, pages / 10) : pages
            guard !state.running, !state.closed, walPages - state.checkpointedFrames >= due else { return false }
            state.running = true
            return true
        }
        if start { queue.async { self.checkpoint() } }
    }

    private func checkpoint() {
        guard let connection else { return }
        var copied = 0
        var previousLogFrames: Int32 = -1
        for _ in 0..<Self.maxRounds {
            var logFrames: Int32 = 0
            var checkpointedFrames: Int32 = 0
            let result = sqlite3_wal_checkpoint_v2(connection, nil, SQLITE_CHECKPOINT_PASSIVE, &logFrames, &checkpointedFrames)
            // BUSY: another checkpoint (the writer's own) is running; it does the work.
            guard result == SQLITE_OK, logFrames >= 0 else { break }
            copied = Int(checkpointedFrames)
            // A round copies what was in the WAL when it began; done once a round finds no
            // commit added since the one before (or cannot copy all, held back by a reader).
            if checkpointedFrames < logFrames || logFrames == previousLogFrames { break }
            previousLogFrames = logFrames
        }
        state.withLock {
            $0.running = false
            $0.checkpointedFrames = copied
            if copied > 0 { $0.completedCheckpoints += 1 }
        }
    }

    /// Waits for a running checkpoint and closes the connection; none starts after this.
    func close() {
        state.withLock { $0.closed = true }
        queue.sync {
            sqlite3_close(connection)
            connection = nil
        }
    }
}
