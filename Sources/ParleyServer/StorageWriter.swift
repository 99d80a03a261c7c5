import CoreMetrics
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ParleyCore
import ParleyStorage
import Synchronization

/// Carries out the domain's storage work in the order it decided it, several writes per
/// transaction, on a thread of its own: while one batch commits, the next one gathers (group
/// commit), so a busy server pays one commit for many messages. A message's echo is written only
/// after the transaction holding it has committed. A history read is started once every write
/// decided before it has committed, so it sees them all; it then runs on a reader queue of its
/// own, so a slow read never holds up the commits (and echoes) of the messages after it.
///
/// The thread calls the store's synchronous API directly: a batch costs one wake-up of this
/// thread and one hop back to the event loops, not a task and a database queue in between.
///
/// `enqueue` is called while the chat state's lock is held, which is what makes the order of
/// the work the order of the domain's decisions.
///
/// The queue is bounded by backpressure, not by refusing work: once `backlogLimit` writes wait
/// (queued or being committed), `isBehind` turns true and the connections that add more stop
/// being read (`resumeWhenCaughtUp`) until the backlog is down to half the limit. Memory stays
/// bounded and senders slow down to the disk's pace; nothing already read is dropped.
final class StorageWriter: Sendable {
    struct Callbacks: Sendable {
        /// Lines to write once their messages are on disk, and the requests now committed.
        let deliver: @Sendable ([Outbox.Delivery], [StoreRequest]) -> Void
        /// Messages that could not be stored, and who asked (the domain tells them).
        let notStored: @Sendable ([([StoredMessage], StoreRequest)]) -> Void
        let historyLoaded: @Sendable (UInt64, HistoryResult) -> Void
    }

    /// Shared with the thread; everything in it is guarded by `condition`.
    private final class Shared: @unchecked Sendable {
        /// True when the thread has something to do: work it may take, or stop.
        let condition = ConditionLock(value: false)
        var pending: [CoreAction] = []
        /// How many actions the thread has taken in all: the sequence number of `pending[0]`.
        var taken = 0
        /// Open holds: the sequence number each began at. Work from there on waits.
        var holds: [(id: UInt64, start: Int)] = []
        var nextHoldID: UInt64 = 0
        /// When the batch being carried out was taken (wall clock); nil while none is.
        var workingSince: Timestamp?
        var working: Bool { workingSince != nil }
        var stopping = false
        var stopped: [CheckedContinuation<Void, Never>] = []
        var hasStopped = false
        /// Writes taken by the thread and not yet committed.
        var inProgress = 0
        /// Whether writes the database could not take wait to be tried again: until they are
        /// stored, the work before them is not carried out (`whenDone`, `isIdle`).
        var carrying = false
        /// Connections paused until the backlog is down to the low-water mark.
        var waitingForRoom: [@Sendable () -> Void] = []
        /// Called once the work up to `sequence` (counted as `taken`) is carried out.
        var waitingForWork: [(sequence: Int, done: @Sendable () -> Void)] = []

        /// After a commit, under the lock: the waiters whose work is all carried out.
        func takeWaitersForDoneWork() -> [@Sendable () -> Void] {
            guard !waitingForWork.isEmpty, !carrying else { return [] }
            let done = waitingForWork.filter { $0.sequence <= taken }.map(\.done)
            waitingForWork.removeAll { $0.sequence <= taken }
            return done
        }

        /// Writes handed over and not yet committed.
        var backlog: Int { pending.count + inProgress }
        /// Writes waiting before `behind` turns true; 0: no limit.
        let backlogLimit: Int
        /// Set and cleared under `condition`; read without it on every stored message.
        let behind = Atomic<Bool>(false)

        init(backlogLimit: Int) {
            self.backlogLimit = max(0, backlogLimit)
        }

        /// After a commit, under the lock: below the low-water mark, hands back the paused
        /// connections to resume (outside the lock).
        func takeResumptionsIfCaughtUp() -> [@Sendable () -> Void] {
            guard behind.load(ordering: .relaxed), backlog <= backlogLimit / 2 else { return [] }
            behind.store(false, ordering: .relaxed)
            defer { waitingForRoom = [] }
            return waitingForRoom
        }

        /// How much of `pending` the thread may take: all of it, or what came before the
        /// earliest open hold.
        var takeable: Int {
            // Asked on every enqueue: no array built to find the earliest.
            guard var earliest = holds.first?.start else { return pending.count }
            for hold in holds where hold.start < earliest { earliest = hold.start }
            return min(pending.count, max(0, earliest - taken))
        }

        var shouldWake: Bool { takeable > 0 || (stopping && pending.isEmpty) }
        /// The condition's value, as last set.
        var signaled = false

        /// Releases the lock, and wakes the thread only when it has just got something to do:
        /// `ConditionLock.unlock(withValue:)` broadcasts every time, and a wake-up per message
        /// that found nothing to take cost a context switch each.
        func unlockWakingIfNeeded() {
            let wake = shouldWake
            if wake != signaled {
                signaled = wake
                condition.unlock(withValue: wake)
            } else {
                condition.unlock()
            }
        }
    }

    /// Holds back storage work while an event loop thread handles one read burst, so that the
    /// messages of the burst are committed together: without it the thread woke for the burst's
    /// first message and committed it alone (half of all commits held one message). Work
    /// enqueued after a hold began, from any thread, waits with it: the order is kept.
    /// Released by `WriteBatch.flush()` at the end of the burst.
    final class Hold: Sendable {
        fileprivate let id: UInt64
        private let writer: StorageWriter

        fileprivate init(id: UInt64, writer: StorageWriter) {
            self.id = id
            self.writer = writer
        }

        func release() {
            writer.release(self)
        }
    }

    private let shared: Shared
    private let callbacks: NIOLockedValueBox<Callbacks?> = NIOLockedValueBox(nil)
    /// History reads, one at a time (SQLite in WAL mode reads beside the writer).
    private let reads = DispatchQueue(label: "parley-history-reads")

    /// - Parameter backlogLimit: writes waiting (queued or being committed) at which connections
    ///   adding more stop being read; 0 for no limit.
    init(store: any ChatStore, backlogLimit: Int, commitDuration: CoreMetrics.Timer? = nil, logger: Logger) {
        let shared = Shared(backlogLimit: backlogLimit)
        self.shared = shared
        let callbacks = self.callbacks
        let reads = self.reads
        let thread = Thread {
            // Named from inside: set before `start()` the name did not reach the system on
            // Linux, and the thread showed its creator's name in `top -H` and profiles.
            Thread.current.name = "parley-storage"
            Self.serve(shared, store: store, reads: reads, commitDuration: commitDuration, logger: logger, callbacks: { callbacks.withLockedValue { $0 } })
        }
        thread.start()
    }

    deinit {
        requestStop()
    }

    func setCallbacks(_ callbacks: Callbacks) {
        self.callbacks.withLockedValue { $0 = callbacks }
    }

    /// Hands over work; with `holding`, the work waits until `hold` is released (a hold is
    /// begun if `hold` is nil).
    func enqueue(_ work: [CoreAction], hold: inout Hold?, holding: Bool) {
        guard !work.isEmpty else { return }
        shared.condition.lock()
        if holding && hold == nil {
            shared.nextHoldID += 1
            shared.holds.append((shared.nextHoldID, shared.taken + shared.pending.count))
            hold = Hold(id: shared.nextHoldID, writer: self)
        }
        shared.pending.append(contentsOf: work)
        if shared.backlogLimit > 0 && shared.backlog >= shared.backlogLimit && !shared.behind.load(ordering: .relaxed) {
            shared.behind.store(true, ordering: .relaxed)
        }
        shared.unlockWakingIfNeeded()
    }

    /// True while the backlog is past its limit (and until it is down to half): a connection that
    /// just handed over work should stop being read (`resumeWhenCaughtUp`).
    var isBehind: Bool { shared.behind.load(ordering: .relaxed) }

    /// Writes handed over and not yet committed.
    var backlog: Int {
        shared.condition.lock()
        defer { shared.condition.unlock() }
        return shared.backlog
    }

    /// Calls `resume` (on the storage thread) once the backlog is down to half its limit, and
    /// returns true; returns false without keeping `resume` when it already is.
    func resumeWhenCaughtUp(_ resume: @escaping @Sendable () -> Void) -> Bool {
        shared.condition.lock()
        defer { shared.condition.unlock() }
        guard shared.behind.load(ordering: .relaxed) else { return false }
        shared.waitingForRoom.append(resume)
        return true
    }

    fileprivate func release(_ hold: Hold) {
        shared.condition.lock()
        shared.holds.removeAll { $0.id == hold.id }
        shared.unlockWakingIfNeeded()
    }

    /// Writes and reads handed over and not yet taken by the storage thread.
    var queueDepth: Int {
        shared.condition.lock()
        defer { shared.condition.unlock() }
        return shared.pending.count
    }

    /// Calls `done` once everything handed over before this call is carried out (committed,
    /// or refused and reported): at once on this thread when nothing is, else on the storage
    /// thread. Work handed over later does not delay it; writes kept while the database is
    /// unavailable do, until they are stored.
    func whenDone(_ done: @escaping @Sendable () -> Void) {
        shared.condition.lock()
        guard !shared.pending.isEmpty || shared.working || shared.carrying else {
            shared.condition.unlock()
            done()
            return
        }
        shared.waitingForWork.append((shared.taken + shared.pending.count, done))
        shared.condition.unlock()
    }

    /// Since when the storage thread has been carrying out its current batch; nil when idle.
    /// A time long past means a database that stopped answering (`ChatServer.storageIsWorking`).
    var workingSince: Timestamp? {
        shared.condition.lock()
        defer { shared.condition.unlock() }
        return shared.workingSince
    }

    /// True when everything handed over so far has been carried out.
    var isIdle: Bool {
        shared.condition.lock()
        defer { shared.condition.unlock() }
        return shared.pending.isEmpty && !shared.working && !shared.carrying
    }

    private func requestStop() {
        shared.condition.lock()
        shared.stopping = true
        shared.unlockWakingIfNeeded()
    }

    /// Finishes the work already handed over, then ends the thread.
    func stop() async {
        requestStop()
        await withCheckedContinuation { continuation in
            shared.condition.lock()
            if shared.hasStopped {
                shared.condition.unlock()
                continuation.resume()
            } else {
                shared.stopped.append(continuation)
                shared.condition.unlock()
            }
        }
    }

    // MARK: The storage thread

    /// How long writes the database could not take wait before they are tried again, when no
    /// newer work comes first.
    static let retrySeconds = 1.0

    private static func serve(_ shared: Shared, store: any ChatStore, reads: DispatchQueue, commitDuration: CoreMetrics.Timer?, logger: Logger, callbacks: @escaping @Sendable () -> Callbacks?) {
        var batch: [CoreAction] = []
        var gathering = CommitGathering()
        // Writes the database could not take (`ChatStore.isUnavailable`): first in the next batch.
        var carried: [CoreAction] = []
        // Whether the database has been unavailable since the last commit (logged once, not at
        // every second's try).
        var unavailable = false
        while true {
            if carried.isEmpty {
                shared.condition.lock(whenValue: true)
            } else if !shared.condition.lock(whenValue: true, timeoutSeconds: retrySeconds) {
                shared.condition.lock()
            }
            var paused: UInt64 = 0
            while !shared.stopping {
                // Under load a small batch waits a moment for more (see `CommitGathering`); the
                // event loop gets the core meanwhile. Only this thread takes work, and a new hold
                // covers only work after it, so what was takeable stays takeable.
                let takeable = shared.takeable
                guard gathering.shouldWait(takeable: takeable, writers: shared.pending[..<takeable].lazy.compactMap(\.messageWriter),
                                           paused: paused, now: NIODeadline.now().uptimeNanoseconds) else { break }
                shared.condition.unlock()
                var pause = timespec(tv_sec: 0, tv_nsec: Int(CommitGathering.pauseSliceNanoseconds))
                nanosleep(&pause, nil)
                paused += CommitGathering.pauseSliceNanoseconds
                shared.condition.lock()
            }
            let count = shared.takeable
            // The writers of a batch's first `enough` writes only: a larger batch commits at
            // once anyway, and naming every writer cost 680 instructions per message at full
            // speed (callgrind, offline workload).
            let named = shared.pending[..<min(count, CommitGathering.enough)].lazy.compactMap(\.messageWriter)
            gathering.noteTaken(count, writers: named, now: NIODeadline.now().uptimeNanoseconds)
            if count == shared.pending.count {
                swap(&batch, &shared.pending)
            } else {
                batch.append(contentsOf: shared.pending[..<count])
                shared.pending.removeFirst(count)
            }
            shared.taken += count
            let retryOnly = count == 0 && !carried.isEmpty
            if !carried.isEmpty {
                batch.insert(contentsOf: carried, at: 0)
                carried.removeAll()
            }
            shared.inProgress = batch.count
            if batch.isEmpty && shared.stopping && shared.pending.isEmpty {
                // Reads started before the stop finish before the store may close (outside the
                // lock: their results go back through the chat state, which may enqueue more).
                shared.condition.unlock()
                reads.sync {}
                shared.condition.lock()
                guard shared.pending.isEmpty else {
                    shared.unlockWakingIfNeeded()
                    continue
                }
                shared.hasStopped = true
                let waiting = shared.stopped
                shared.stopped = []
                let doneWork = shared.takeWaitersForDoneWork()
                shared.condition.unlock()
                for done in doneWork { done() }
                for continuation in waiting { continuation.resume() }
                return
            }
            shared.workingSince = batch.isEmpty ? nil : ChatHost.now()
            let lastTry = shared.stopping
            shared.unlockWakingIfNeeded()
            carried = Self.run(batch, store: store, reads: reads, commitDuration: commitDuration, logger: logger, quiet: retryOnly, callbacks: callbacks)
            if !carried.isEmpty && lastTry {
                logger.error("storage unavailable while stopping: changes not stored", metadata: ["writes": "\(carried.count)"])
                carried.removeAll()
            } else if !carried.isEmpty && !unavailable {
                unavailable = true
                logger.warning("storage unavailable: changes kept to be stored again, every second until it is back", metadata: ["writes": "\(carried.count)"])
            } else if carried.isEmpty && unavailable {
                unavailable = false
                logger.info("storage available again: the changes kept are stored")
            }
            batch.removeAll(keepingCapacity: true)
            shared.condition.lock()
            shared.workingSince = nil
            shared.inProgress = 0
            shared.carrying = !carried.isEmpty
            let resumptions = shared.takeResumptionsIfCaughtUp()
            let doneWork = shared.takeWaitersForDoneWork()
            shared.condition.unlock()
            for resume in resumptions { resume() }
            for done in doneWork { done() }
        }
    }

    /// Returns the writes to try again (see `commit`).
    /// `quiet`: the batch only tries again what the database could not take, whose failure
    /// again is not worth an error line each time.
    private static func run(_ batch: [CoreAction], store: any ChatStore, reads: DispatchQueue, commitDuration: CoreMetrics.Timer?, logger: Logger,
                            quiet: Bool = false, callbacks: @escaping @Sendable () -> Callbacks?) -> [CoreAction] {
        guard batch.contains(where: \.isHistoryRead) else {
            return commit(batch, store: store, commitDuration: commitDuration, logger: logger, quiet: quiet, callbacks: callbacks)
        }
        var carried: [CoreAction] = []
        // Writes decided before a history read are committed before it starts.
        var writes: [CoreAction] = []
        for action in batch {
            guard case .loadHistory(let ticket, let query) = action else {
                writes.append(action)
                continue
            }
            carried += commit(writes, store: store, commitDuration: commitDuration, logger: logger, callbacks: callbacks)
            writes.removeAll()
            reads.async {
                let result: HistoryResult
                do {
                    result = try store.loadHistory(query)
                } catch {
                    logger.error("history read failed", metadata: ["error": "\(error)"])
                    result = .failed("storage is unavailable")
                }
                callbacks()?.historyLoaded(ticket, result)
            }
        }
        return carried + commit(writes, store: store, commitDuration: commitDuration, logger: logger, callbacks: callbacks)
    }

    /// Commits `writes`; a message that could not be stored is refused (its sender is told).
    /// Returns the other writes when the database could not take them just then: groups,
    /// members, receipts and read positions the domain has decided, and users were told of,
    /// are tried again before anything newer, so that they hold after a restart too.
    private static func commit(_ writes: [CoreAction], store: any ChatStore, commitDuration: CoreMetrics.Timer?, logger: Logger,
                               quiet: Bool = false, callbacks: () -> Callbacks?) -> [CoreAction] {
        guard !writes.isEmpty else { return [] }
        var succeeded = true
        var unavailable = false
        let started = NIODeadline.now()
        do {
            try store.transaction { transaction in
                for write in writes { try apply(write, to: transaction) }
            }
            commitDuration?.recordNanoseconds((NIODeadline.now() - started).nanoseconds)
        } catch {
            succeeded = false
            unavailable = store.isUnavailable(error)
            if quiet && unavailable {
                logger.debug("storage still unavailable", metadata: ["writes": "\(writes.count)", "error": "\(error)"])
            } else {
                logger.error("storage write failed", metadata: ["writes": "\(writes.count)", "error": "\(error)"])
            }
        }
        var lines: [Outbox.Delivery] = []
        var committed: [StoreRequest] = []
        var refused: [([StoredMessage], StoreRequest)] = []
        for write in writes {
            guard case .storeMessages(let messages, let afterCommit, let request) = write else { continue }
            // Replies queued behind earlier commits store nothing: they go out even if the commit failed.
            if succeeded || messages.isEmpty {
                lines.append(contentsOf: afterCommit)
                committed.append(request)
            } else {
                refused.append((messages, request))
            }
        }
        if !refused.isEmpty { callbacks()?.notStored(refused) }
        if !committed.isEmpty { callbacks()?.deliver(lines, committed) }
        guard unavailable else { return [] }
        return writes.filter { if case .storeMessages = $0 { false } else { true } }
    }
}

/// When the storage thread commits: at once when the server is quiet, and under load only once a
/// batch is worth a commit. Each commit writes every page it changed to the WAL: a direct message
/// changes a leaf of five b-trees (the message, its id, its target's and its sender's index
/// entries, its recipient), so a commit of three messages wrote about as many pages as one of a
/// hundred. At a fixed 20,000 msgs/s the thread committed a few messages at a time and wrote
/// 7.5 KB to the WAL per message (3.4 system calls); the whole server used 35 us of CPU per
/// message against 15 us at full speed, where batches are large.
///
/// So when writes have been arriving fast enough that a short pause gathers `worthWaitingFor`
/// more of them, a batch smaller than `enough` waits for more, in slices of
/// `pauseSliceNanoseconds`, at most `maxPauseNanoseconds` in all, before its commit starts. A
/// lone client (or any rate below about 8,000 writes/s) never waits.
///
/// Nor does a batch whose writers are all the writers there are: when every connection that
/// handed over messages lately (this rate window and the one before) has messages in the batch,
/// those clients are waiting for its echoes (a sender whose window of unacknowledged messages is
/// in it), and a pause only delays them. That is told before the first pause: a lone sender with
/// 64 messages in flight stored 41,000 msgs/s with one fruitless 0.5 ms slice per window, 64,000
/// before commits were gathered. At a fixed rate over many connections, most of the recent
/// writers have nothing in the batch, and it waits as before. A pause that gathered nothing
/// ends the wait too (writers the rule cannot see, such as a sender's first window).
struct CommitGathering {
    /// A batch this large commits at once.
    static let enough = 128
    static let pauseSliceNanoseconds: UInt64 = 500_000
    /// The longest a batch waits for more: a small part of a message's time to its echo.
    static let maxPauseNanoseconds: UInt64 = 2_000_000
    /// Writes the pause must be expected to add for it to be worth taking.
    static let worthWaitingFor = 4
    /// How long the arrival rate is measured over.
    static let rateWindowNanoseconds: UInt64 = 20_000_000

    private var windowStart: UInt64 = 0
    private var takenInWindow = 0
    private var lastTaken: UInt64 = 0
    /// Writes per second over the last window of at least `rateWindowNanoseconds`.
    private(set) var rate = 0.0
    /// The batch's size when its latest pause started (nil before its first pause).
    private var takeableBeforePause: Int?

    /// The rate window each writer's messages were last taken in (counted from 1).
    private var lastWindowOfWriter: [ConnectionID: UInt64] = [:]
    private var window: UInt64 = 1
    /// Writers taken in this window, and those taken in the previous one but not since.
    private var writersInWindow = 0
    private var writersOnlyInPreviousWindow = 0
    /// Connections whose messages were taken in this rate window or the one before.
    var recentWriters: Int { writersInWindow + writersOnlyInPreviousWindow }

    /// Whether a batch of `takeable` writes, whose messages came from `writers` (repeats
    /// allowed), and which has waited `paused` already, should wait more.
    mutating func shouldWait(takeable: Int, writers: some Sequence<ConnectionID>, paused: UInt64, now: UInt64) -> Bool {
        if paused == 0 { takeableBeforePause = nil }
        if let before = takeableBeforePause, takeable <= before { return false }
        guard wouldGatherMore(takeable: takeable, paused: paused, now: now), !allRecentWritersWait(in: writers) else { return false }
        takeableBeforePause = takeable
        return true
    }

    private func wouldGatherMore(takeable: Int, paused: UInt64, now: UInt64) -> Bool {
        guard takeable > 0, takeable < Self.enough, paused < Self.maxPauseNanoseconds, rate > 0 else { return false }
        // A rate measured before a quiet spell says nothing about now (a long commit, a WAL
        // checkpoint, is not a quiet spell: this is measured from when the batch was taken).
        guard now &- lastTaken < 2 * Self.rateWindowNanoseconds else { return false }
        return rate * Double(Self.pauseSliceNanoseconds) / 1e9 >= Double(Self.worthWaitingFor)
    }

    /// True when every recent writer has messages in the batch (asked only of a batch under
    /// `enough`, so the set stays small).
    private func allRecentWritersWait(in writers: some Sequence<ConnectionID>) -> Bool {
        guard recentWriters > 0 else { return false }
        var waiting = Set<ConnectionID>()
        for writer in writers where lastWindowOfWriter[writer].map({ $0 + 1 >= window }) == true {
            waiting.insert(writer)
            if waiting.count == recentWriters { return true }
        }
        return false
    }

    /// The storage thread took `count` writes, whose messages came from `writers` (those of the
    /// first `enough` writes are enough: only batches below that wait).
    mutating func noteTaken(_ count: Int, writers: some Sequence<ConnectionID>, now: UInt64) {
        var previous: ConnectionID?
        for writer in writers where writer != previous {
            // A read burst's messages come one after another: one lookup for the run.
            previous = writer
            noteWriter(writer)
        }
        takenInWindow += count
        lastTaken = now
        let elapsed = now &- windowStart
        guard elapsed >= Self.rateWindowNanoseconds else { return }
        rate = Double(takenInWindow) * 1e9 / Double(elapsed)
        windowStart = now
        takenInWindow = 0
        window += 1
        writersOnlyInPreviousWindow = writersInWindow
        writersInWindow = 0
        // Writers not seen for two windows no longer count; their entries go now and then.
        if lastWindowOfWriter.count > 4 * recentWriters + 256 {
            lastWindowOfWriter = lastWindowOfWriter.filter { $0.value + 1 >= window }
        }
    }

    private mutating func noteWriter(_ writer: ConnectionID) {
        let last = lastWindowOfWriter.updateValue(window, forKey: writer)
        guard last != window else { return }
        if let last, last + 1 == window { writersOnlyInPreviousWindow -= 1 }
        writersInWindow += 1
    }
}

extension StorageWriter {
    /// The domain's storage decisions as the store's named operations.
    static func apply(_ action: CoreAction, to transaction: any StorageTransaction) throws {
        switch action {
        case .storeMessages(let messages, _, _): try transaction.storeMessages(messages)
        case .updateRecipients(let updates): try transaction.updateRecipients(updates)
        case .saveReadMarker(let account, let target, let time): try transaction.setReadMarker(account: account, conversation: target, time: time)
        case .saveGroupReadPosition(let account, let group, let time): try transaction.setGroupReadPosition(account: account, group: group, time: time)
        case .saveReceiptsPendingSince(let account, let time): try transaction.setReceiptsPendingSince(account: account, time: time)
        case .recordLastSeen(let account, let time): try transaction.recordLastSeen(account: account, at: time)
        case .saveAccountSettings(let account, let settings): try transaction.setAccountSettings(account: account, settings)
        case .createGroup(let group): try transaction.createGroup(group)
        case .saveGroup(let group, let previousKey): try transaction.saveGroup(group, previousKey: previousKey)
        case .saveGroupSettings(let group, let previousKey): try transaction.saveGroupSettings(group, previousKey: previousKey)
        case .saveGroupMember(let group, let account, let role, let voiced):
            try transaction.setGroupMember(group: group, account: account, role: role, voiced: voiced)
        case .deleteGroup(let key): try transaction.deleteGroup(key: key)
        case .pruneHistory(let cutoff): try transaction.deleteMessages(before: cutoff)
        case .deleteMessage(let id): try transaction.deleteMessage(id: id)
        case .close, .checkPassword, .createAccount, .loadHistory:
            // Not writes: the shell carries these out elsewhere (history reads on the reader queue).
            break
        }
    }
}

private extension CoreAction {
    var isHistoryRead: Bool {
        if case .loadHistory = self { return true }
        return false
    }

    /// The connection that sent the message(s) this action stores, if it stores any.
    var messageWriter: ConnectionID? {
        if case .storeMessages(_, _, let request) = self { return request.connection }
        return nil
    }
}
