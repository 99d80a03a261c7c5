import Logging
import NIOConcurrencyHelpers
import ParleyCore
import ParleyStore

/// Carries out the domain's storage writes in the order it decided them, several per
/// transaction: while one batch commits, the next one gathers (group commit), so a busy server
/// pays one commit for many messages.
///
/// `enqueue` is called while the chat state's lock is held, which is what makes the order of
/// writes the order of the domain's decisions.
final class StorageWriter: Sendable {
    private struct Queue {
        var pending: [CoreAction] = []
        var draining = false
    }

    private let queue = NIOLockedValueBox(Queue())
    private let store: any ChatStore
    private let logger: Logger

    init(store: any ChatStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    func enqueue(_ writes: [CoreAction]) {
        guard !writes.isEmpty else { return }
        let startDrain = queue.withLockedValue { queue -> Bool in
            queue.pending.append(contentsOf: writes)
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
            do {
                try await store.perform(batch)
            } catch {
                logger.error("storage write failed", metadata: ["writes": "\(batch.count)", "error": "\(error)"])
            }
        }
    }

    /// True when every write handed over so far has been committed (or has failed).
    var isIdle: Bool { queue.withLockedValue { $0.pending.isEmpty && !$0.draining } }
}
