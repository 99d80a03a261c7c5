import Foundation
import Logging
import NIOConcurrencyHelpers
import ParleyCore
import ParleyStore

/// Carries out the domain's storage work in the order it decided it, several writes per
/// transaction, on a thread of its own: while one batch commits, the next one gathers (group
/// commit), so a busy server pays one commit for many messages. A message's echo is written only
/// after the transaction holding it has committed. History reads run in the same order, so they
/// see every write decided before them.
///
/// The thread calls the store's synchronous API directly: a batch costs one wake-up of this
/// thread and one hop back to the event loops, not a task and a database queue in between.
///
/// `enqueue` is called while the chat state's lock is held, which is what makes the order of
/// the work the order of the domain's decisions.
final class StorageWriter: Sendable {
    struct Callbacks: Sendable {
        /// Lines to write once their messages are on disk.
        let deliver: @Sendable ([Outbox.Delivery]) -> Void
        /// Messages that could not be stored, and who asked (the domain tells them).
        let notStored: @Sendable ([([StoredMessage], StoreRequest)]) -> Void
        let historyLoaded: @Sendable (UInt64, HistoryResult) -> Void
    }

    /// Shared with the thread; everything in it is guarded by `condition`.
    private final class Shared: @unchecked Sendable {
        /// True when the thread has something to do: work, or stop.
        let condition = ConditionLock(value: false)
        var pending: [CoreAction] = []
        var working = false
        var stopping = false
        var stopped: [CheckedContinuation<Void, Never>] = []
        var hasStopped = false
    }

    private let shared = Shared()
    private let callbacks: NIOLockedValueBox<Callbacks?> = NIOLockedValueBox(nil)

    init(store: any ChatStore, logger: Logger) {
        let shared = self.shared
        let callbacks = self.callbacks
        let thread = Thread {
            Self.serve(shared, store: store, logger: logger, callbacks: { callbacks.withLockedValue { $0 } })
        }
        thread.name = "parley-storage"
        thread.start()
    }

    deinit {
        requestStop()
    }

    func setCallbacks(_ callbacks: Callbacks) {
        self.callbacks.withLockedValue { $0 = callbacks }
    }

    func enqueue(_ work: [CoreAction]) {
        guard !work.isEmpty else { return }
        shared.condition.lock()
        shared.pending.append(contentsOf: work)
        shared.condition.unlock(withValue: true)
    }

    /// True when everything handed over so far has been carried out.
    var isIdle: Bool {
        shared.condition.lock()
        defer { shared.condition.unlock() }
        return shared.pending.isEmpty && !shared.working
    }

    private func requestStop() {
        shared.condition.lock()
        shared.stopping = true
        shared.condition.unlock(withValue: true)
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

    private static func serve(_ shared: Shared, store: any ChatStore, logger: Logger, callbacks: () -> Callbacks?) {
        var batch: [CoreAction] = []
        while true {
            shared.condition.lock(whenValue: true)
            swap(&batch, &shared.pending)
            let finished = batch.isEmpty && shared.stopping
            shared.working = !batch.isEmpty
            if finished {
                shared.hasStopped = true
                let waiting = shared.stopped
                shared.stopped = []
                shared.condition.unlock(withValue: true)
                for continuation in waiting { continuation.resume() }
                return
            }
            // Wait again next time, unless asked to stop (then drain what remains, and end).
            shared.condition.unlock(withValue: shared.stopping)
            run(batch, store: store, logger: logger, callbacks: callbacks)
            batch.removeAll(keepingCapacity: true)
            shared.condition.lock()
            shared.working = false
            shared.condition.unlock()
        }
    }

    private static func run(_ batch: [CoreAction], store: any ChatStore, logger: Logger, callbacks: () -> Callbacks?) {
        guard batch.contains(where: \.isHistoryRead) else {
            commit(batch, store: store, logger: logger, callbacks: callbacks)
            return
        }
        // Writes decided before a history read are committed before it runs.
        var writes: [CoreAction] = []
        for action in batch {
            guard case .loadHistory(let ticket, let query) = action else {
                writes.append(action)
                continue
            }
            commit(writes, store: store, logger: logger, callbacks: callbacks)
            writes.removeAll()
            let result: HistoryResult
            do {
                result = try store.loadHistory(query)
            } catch {
                logger.error("history read failed", metadata: ["error": "\(error)"])
                result = .failed("storage is unavailable")
            }
            callbacks()?.historyLoaded(ticket, result)
        }
        commit(writes, store: store, logger: logger, callbacks: callbacks)
    }

    private static func commit(_ writes: [CoreAction], store: any ChatStore, logger: Logger, callbacks: () -> Callbacks?) {
        guard !writes.isEmpty else { return }
        var succeeded = true
        do {
            try store.perform(writes)
        } catch {
            succeeded = false
            logger.error("storage write failed", metadata: ["writes": "\(writes.count)", "error": "\(error)"])
        }
        if succeeded {
            var lines: [Outbox.Delivery] = []
            for write in writes {
                if case .storeMessages(_, let afterCommit, _) = write { lines.append(contentsOf: afterCommit) }
            }
            if !lines.isEmpty { callbacks()?.deliver(lines) }
        } else {
            var refused: [([StoredMessage], StoreRequest)] = []
            for write in writes {
                if case .storeMessages(let messages, _, let request) = write { refused.append((messages, request)) }
            }
            if !refused.isEmpty { callbacks()?.notStored(refused) }
        }
    }
}

private extension CoreAction {
    var isHistoryRead: Bool {
        if case .loadHistory = self { return true }
        return false
    }
}
