import Logging
import NIOConcurrencyHelpers
import ParleyCore
import ParleyStore

/// Carries out the domain's storage work in the order it decided it, several writes per
/// transaction: while one batch commits, the next one gathers (group commit), so a busy server
/// pays one commit for many messages. A message's echo is written only after the transaction
/// holding it has committed. History reads run in the same order, so they see every write
/// decided before them.
///
/// `enqueue` is called while the chat state's lock is held, which is what makes the order of
/// the work the order of the domain's decisions.
final class StorageWriter: Sendable {
    private struct Queue {
        var pending: [CoreAction] = []
        var draining = false
    }

    struct Callbacks: Sendable {
        /// Lines to write once their messages are on disk (or the failure replies).
        let deliver: @Sendable ([Outbox.Delivery]) -> Void
        let historyLoaded: @Sendable (UInt64, HistoryResult) -> Void
    }

    private let queue = NIOLockedValueBox(Queue())
    private let store: any ChatStore
    private let logger: Logger
    private let callbacks: NIOLockedValueBox<Callbacks?> = NIOLockedValueBox(nil)

    init(store: any ChatStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    func setCallbacks(_ callbacks: Callbacks) {
        self.callbacks.withLockedValue { $0 = callbacks }
    }

    func enqueue(_ work: [CoreAction]) {
        guard !work.isEmpty else { return }
        let startDrain = queue.withLockedValue { queue -> Bool in
            queue.pending.append(contentsOf: work)
            if queue.draining { return false }
            queue.draining = true
            return true
        }
        if startDrain {
            Task { await self.drain() }
        }
    }

    private func drain() async {
        while true {
            let batch = queue.withLockedValue { queue -> [CoreAction]? in
                if queue.pending.isEmpty {
                    queue.draining = false
                    return nil
                }
                defer { queue.pending.removeAll(keepingCapacity: true) }
                return queue.pending
            }
            guard let batch else { return }
            await run(batch)
        }
    }

    private func run(_ batch: [CoreAction]) async {
        var writes: [CoreAction] = []
        writes.reserveCapacity(batch.count)
        for action in batch {
            if case .loadHistory(let ticket, let query) = action {
                await commit(writes)
                writes.removeAll(keepingCapacity: true)
                let result: HistoryResult
                do {
                    result = try await store.loadHistory(query)
                } catch {
                    logger.error("history read failed", metadata: ["error": "\(error)"])
                    result = .failed("storage is unavailable")
                }
                callbacks.withLockedValue { $0 }?.historyLoaded(ticket, result)
            } else {
                writes.append(action)
            }
        }
        await commit(writes)
    }

    private func commit(_ writes: [CoreAction]) async {
        guard !writes.isEmpty else { return }
        var succeeded = true
        do {
            try await store.perform(writes)
        } catch {
            succeeded = false
            logger.error("storage write failed", metadata: ["writes": "\(writes.count)", "error": "\(error)"])
        }
        var lines: [Outbox.Delivery] = []
        for write in writes {
            if case .storeMessages(_, let afterCommit, let onFailure) = write {
                lines.append(contentsOf: succeeded ? afterCommit : onFailure)
            }
        }
        if !lines.isEmpty { callbacks.withLockedValue { $0 }?.deliver(lines) }
    }

    /// True when everything handed over so far has been carried out.
    var isIdle: Bool { queue.withLockedValue { $0.pending.isEmpty && !$0.draining } }
}
