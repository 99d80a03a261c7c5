import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
@testable import ParleyCore
@testable import ParleyServer
import ParleyStorage
import ParleyStoreSQLite
import Testing

@Suite("Storage thread, with a real SQLite file")
struct StorageWriterTests {
    /// A writer over a fresh store, recording the echo lines it releases after each commit.
    final class Harness: Sendable {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("parley-writer-\(UUID().uuidString).sqlite").path
        let store: SQLiteChatStore
        let writer: StorageWriter
        let released = NIOLockedValueBox<[String]>([])

        init() async throws {
            store = try SQLiteChatStore(path: path)
            for name in ["alice", "bob"] {
                try await store.insertAccount(AccountRecord(
                    name: name, key: name, credential: PasswordCredential(salt: [0], iterations: 1, storedKey: [1], serverKey: [2]),
                    createdAt: Date(timeIntervalSince1970: 0), lastSeen: nil, email: nil))
            }
            writer = StorageWriter(store: store, backlogLimit: 0, logger: Logger(label: "test"))
            let released = self.released
            writer.setCallbacks(.init(
                deliver: { deliveries, _ in
                    released.withLockedValue { $0 += deliveries.map { String(buffer: $0.line) } }
                },
                notStored: { _ in },
                historyLoaded: { _, _ in }))
        }

        func store(_ text: String) -> CoreAction {
            let message = StoredMessage(
                id: text, time: Timestamp(millisecondsSince1970: 1_764_000_000_000), senderNick: "alice", senderAccount: "alice",
                senderPrefix: "alice!~a@h", targetKind: .direct, target: "bob", command: "PRIVMSG", text: text,
                recipients: [StoredRecipient(account: "bob")])
            return .storeMessages([message], afterCommit: [Outbox.Delivery(connection: ConnectionID(1), line: ByteBuffer(string: text))],
                                  sender: StoreRequest(connection: ConnectionID(1), label: nil, verb: "PRIVMSG"))
        }

        func waitUntilReleased(_ count: Int) async throws -> [String] {
            let deadline = ContinuousClock.now + .seconds(5)
            while released.withLockedValue({ $0.count }) < count && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(2))
            }
            return released.withLockedValue { $0 }
        }

        func finish() async throws {
            await writer.stop()
            try await store.close()
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    @Test func heldWorkAndEverythingAfterItWaitForTheRelease() async throws {
        let harness = try await Harness()
        var hold: StorageWriter.Hold?
        var noHold: StorageWriter.Hold?
        harness.writer.enqueue([harness.store("one")], hold: &hold, holding: true)
        harness.writer.enqueue([harness.store("two")], hold: &hold, holding: true)
        // Another thread's work, decided after the hold began: it must not overtake "one".
        harness.writer.enqueue([harness.store("three")], hold: &noHold, holding: false)
        #expect(noHold == nil)
        try await Task.sleep(for: .milliseconds(100))
        #expect(harness.released.withLockedValue { $0 }.isEmpty, "nothing is committed while the burst is open")
        #expect(!harness.writer.isIdle)

        try #require(hold).release()
        #expect(try await harness.waitUntilReleased(3) == ["one", "two", "three"])
        // Committed: the messages are in the file.
        guard case .messages(let stored) = try harness.store.loadHistory(HistoryQuery(conversation: .direct("alice", "bob"), kind: .latest(after: nil), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(stored.map(\.text).sorted() == ["one", "three", "two"])
        try await harness.finish()
    }

    @Test func workBeforeAHoldIsCommittedWithoutWaitingForIt() async throws {
        let harness = try await Harness()
        var noHold: StorageWriter.Hold?
        var hold: StorageWriter.Hold?
        harness.writer.enqueue([harness.store("earlier")], hold: &noHold, holding: false)
        harness.writer.enqueue([harness.store("held")], hold: &hold, holding: true)
        #expect(try await harness.waitUntilReleased(1) == ["earlier"])
        try await Task.sleep(for: .milliseconds(50))
        #expect(harness.released.withLockedValue { $0 } == ["earlier"])
        try #require(hold).release()
        #expect(try await harness.waitUntilReleased(2) == ["earlier", "held"])
        try await harness.finish()
    }

    /// What a node's hello answer waits for (`ChatHost`'s `caughtUp`): the work handed over
    /// before, committed; not the work handed over after.
    @Test(.timeLimit(.minutes(1))) func whenDoneWaitsForTheWorkBeforeItOnly() async throws {
        let harness = try await Harness()
        let atOnce = NIOLockedValueBox(false)
        harness.writer.whenDone { atOnce.withLockedValue { $0 = true } }
        #expect(atOnce.withLockedValue { $0 }, "nothing to wait for: called at once")

        var first: StorageWriter.Hold?
        var second: StorageWriter.Hold?
        harness.writer.enqueue([harness.store("before")], hold: &first, holding: true)
        // What was committed when it was called.
        let (calls, call) = AsyncStream.makeStream(of: [String].self)
        let released = harness.released
        harness.writer.whenDone { call.yield(released.withLockedValue { $0 }) }
        harness.writer.enqueue([harness.store("after")], hold: &second, holding: true)
        try #require(first).release()
        var seen = calls.makeAsyncIterator()
        // Called once "before" was committed, while "after" still waited for its hold.
        #expect(await seen.next() == ["before"])
        try #require(second).release()
        #expect(try await harness.waitUntilReleased(2) == ["before", "after"])
        try await harness.finish()
    }

    @Test func stoppingFinishesWhatWasHandedOver() async throws {
        let harness = try await Harness()
        var noHold: StorageWriter.Hold?
        for number in 1...200 { harness.writer.enqueue([harness.store("m\(number)")], hold: &noHold, holding: false) }
        await harness.writer.stop()
        #expect(harness.released.withLockedValue { $0 } == (1...200).map { "m\($0)" })
        #expect(harness.writer.isIdle)
        try await harness.finish()
    }

    /// The real SQLite store whose history reads wait until the test opens a gate: a read that
    /// takes long (a big conversation, a cold cache), made deterministic.
    final class GatedReads: ChatStore {
        let inner: SQLiteChatStore
        let gate = ConditionLock(value: false)

        init(_ inner: SQLiteChatStore) { self.inner = inner }
        func open() { gate.lock(); gate.unlock(withValue: true) }

        func loadHistory(_ query: HistoryQuery) throws -> HistoryResult {
            gate.lock(whenValue: true)
            gate.unlock()
            return try inner.loadHistory(query)
        }
        func loadAccounts() async throws -> [AccountRecord] { try await inner.loadAccounts() }
        func insertAccount(_ account: AccountRecord) async throws { try await inner.insertAccount(account) }
        func updateCredential(accountKey: String, _ credential: PasswordCredential) async throws -> Bool { try await inner.updateCredential(accountKey: accountKey, credential) }
        func loadGroups() async throws -> [GroupRecord] { try await inner.loadGroups() }
        func transaction(_ body: (any StorageTransaction) throws -> Void) throws { try inner.transaction(body) }
        func isUnavailable(_ error: any Error) -> Bool { inner.isUnavailable(error) }
        func loadDeliveryState(since: Timestamp, maxTrackedRecipients: Int) async throws -> DeliveryState {
            try await inner.loadDeliveryState(since: since, maxTrackedRecipients: maxTrackedRecipients)
        }
        func close() async throws { try await inner.close() }
    }

    @Test func aSlowHistoryReadDoesNotHoldUpTheCommitsAfterIt() async throws {
        let harness = try await Harness()
        let gated = GatedReads(harness.store)
        let writer = StorageWriter(store: gated, backlogLimit: 0, logger: Logger(label: "test"))
        let released = NIOLockedValueBox<[String]>([])
        let answered = NIOLockedValueBox<[UInt64]>([])
        writer.setCallbacks(.init(
            deliver: { deliveries, _ in released.withLockedValue { $0 += deliveries.map { String(buffer: $0.line) } } },
            notStored: { _ in },
            historyLoaded: { ticket, _ in answered.withLockedValue { $0.append(ticket) } }))
        var noHold: StorageWriter.Hold?
        let query = HistoryQuery(conversation: .direct("alice", "bob"), kind: .latest(after: nil), limit: 10)
        writer.enqueue([harness.store("before the read"), .loadHistory(ticket: 1, query: query)], hold: &noHold, holding: false)
        writer.enqueue([harness.store("after the read")], hold: &noHold, holding: false)
        // The read is stuck behind its gate; the message decided after it is committed anyway.
        let deadline = ContinuousClock.now + .seconds(5)
        while released.withLockedValue({ $0.count }) < 2 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(2)) }
        #expect(released.withLockedValue { $0 } == ["before the read", "after the read"])
        #expect(answered.withLockedValue { $0 }.isEmpty)
        gated.open()
        await writer.stop()
        #expect(answered.withLockedValue { $0 } == [1], "stopping waits for the read that was started")
        try await harness.finish()
    }
}

@Suite("When the storage thread commits (CommitGathering)")
struct CommitGatheringTests {
    static let millisecond: UInt64 = 1_000_000
    static let noWriters: [ConnectionID] = []

    /// `count` writes taken evenly over one rate window starting at `start`, the n-th from
    /// `writers[n % writers.count]` (none: writes that store no message).
    static func busy(_ count: Int, from start: UInt64, writers: [ConnectionID] = []) -> (CommitGathering, UInt64) {
        var gathering = CommitGathering()
        gathering.noteTaken(0, writers: noWriters, now: start)
        let window = CommitGathering.rateWindowNanoseconds
        for step in 0..<count {
            gathering.noteTaken(1, writers: writers.isEmpty ? [] : [writers[step % writers.count]], now: start + window * UInt64(step) / UInt64(count))
        }
        gathering.noteTaken(0, writers: noWriters, now: start + window)  // closes the window: the rate is known from here
        return (gathering, start + window)
    }

    static func connections(_ range: Range<UInt64>) -> [ConnectionID] { range.map(ConnectionID.init) }

    @Test func aQuietServerCommitsAtOnce() {
        var gathering = CommitGathering()
        let start = 5_000 * Self.millisecond
        let decision1 = gathering.shouldWait(takeable: 1, writers: Self.noWriters, paused: 0, now: start)
        #expect(!decision1)
        gathering.noteTaken(1, writers: Self.noWriters, now: start)
        let decision2 = gathering.shouldWait(takeable: 1, writers: Self.noWriters, paused: 0, now: start + Self.millisecond)
        #expect(!decision2)
    }

    @Test func underLoadASmallBatchWaitsABoundedTime() {
        // 400 writes in 20 ms: 20,000 writes/s.
        var (gathering, now) = Self.busy(400, from: 5_000 * Self.millisecond)
        #expect(gathering.rate > 15_000)
        let decision3 = gathering.shouldWait(takeable: 3, writers: Self.noWriters, paused: 0, now: now)
        #expect(decision3)
        let decision4 = gathering.shouldWait(takeable: 6, writers: Self.noWriters, paused: CommitGathering.pauseSliceNanoseconds, now: now)
        #expect(decision4)
        let decision5 = gathering.shouldWait(takeable: 9, writers: Self.noWriters, paused: CommitGathering.maxPauseNanoseconds - 1, now: now)
        #expect(decision5)
        let decision6 = gathering.shouldWait(takeable: 12, writers: Self.noWriters, paused: CommitGathering.maxPauseNanoseconds, now: now)
        #expect(!decision6, "the wait is bounded")
        let decision7 = gathering.shouldWait(takeable: CommitGathering.enough, writers: Self.noWriters, paused: 0, now: now)
        #expect(!decision7, "a large batch commits at once")
        let decision8 = gathering.shouldWait(takeable: 0, writers: Self.noWriters, paused: 0, now: now)
        #expect(!decision8)
    }

    @Test func atAFixedRateOverManyConnectionsASmallBatchStillWaits() {
        // 20,000 msgs/s from 500 senders (bench: direct --rate 20000 --pairs 500): a batch holds
        // a few of them, the others may send any moment.
        var (gathering, now) = Self.busy(400, from: 5_000 * Self.millisecond, writers: Self.connections(0..<500))
        #expect(gathering.recentWriters == 400)
        let decision = gathering.shouldWait(takeable: 3, writers: Self.connections(7..<10), paused: 0, now: now)
        #expect(decision)
    }

    @Test func aLoneClosedLoopSenderDoesNotWait() {
        // One sender with a window of 64, at 40,000 msgs/s: its whole window is the batch, and
        // it sends no more before their echoes. Not even the first slice is taken.
        let sender = ConnectionID(7)
        var (gathering, now) = Self.busy(800, from: 5_000 * Self.millisecond, writers: [sender])
        #expect(gathering.rate > 30_000)
        #expect(gathering.recentWriters == 1)
        let decision = gathering.shouldWait(takeable: 64, writers: Array(repeating: sender, count: 64), paused: 0, now: now)
        #expect(!decision)
    }

    @Test func aBatchWaitsUntilEveryRecentWriterIsInIt() {
        // Ten closed-loop senders: while some have nothing in the batch they may still add to it.
        let senders = Self.connections(0..<10)
        var (gathering, now) = Self.busy(800, from: 5_000 * Self.millisecond, writers: senders)
        let someWaiting = Array(senders[..<7]) + Array(senders[..<7])
        let decision1 = gathering.shouldWait(takeable: someWaiting.count, writers: someWaiting, paused: 0, now: now)
        #expect(decision1)
        // During the pause the last three sent too: every sender now waits for this batch.
        let allWaiting = someWaiting + Array(senders[7...])
        let decision2 = gathering.shouldWait(takeable: allWaiting.count, writers: allWaiting, paused: CommitGathering.pauseSliceNanoseconds, now: now)
        #expect(!decision2)
        // A connection that never sent before does not stand in for one that did.
        let decision3 = gathering.shouldWait(takeable: 10, writers: Array(senders[..<9]) + [ConnectionID(99)], paused: 0, now: now)
        #expect(decision3)
    }

    @Test func aWriterQuietForTwoWindowsNoLongerCounts() {
        let (active, gone) = (ConnectionID(1), ConnectionID(2))
        var (gathering, now) = Self.busy(800, from: 5_000 * Self.millisecond, writers: [active, gone])
        #expect(gathering.recentWriters == 2)
        let decision1 = gathering.shouldWait(takeable: 64, writers: Array(repeating: active, count: 64), paused: 0, now: now)
        #expect(decision1, "the other sender may still add to the batch")
        // Two more windows at the same rate from the active sender alone.
        let window = CommitGathering.rateWindowNanoseconds
        for step in 1...800 { gathering.noteTaken(1, writers: [active], now: now + 2 * window * UInt64(step) / 800) }
        now += 2 * window
        #expect(gathering.recentWriters == 1)
        let decision2 = gathering.shouldWait(takeable: 64, writers: Array(repeating: active, count: 64), paused: 0, now: now)
        #expect(!decision2)
    }

    @Test func aBatchItsWritersWaitForCommitsAfterOneFruitlessPause() {
        // Writers the batch does not name (writes that store no message): a pause that gathers
        // nothing more ends the wait.
        var (gathering, now) = Self.busy(400, from: 5_000 * Self.millisecond)
        let decision9 = gathering.shouldWait(takeable: 64, writers: Self.noWriters, paused: 0, now: now)
        #expect(decision9)
        let decision10 = gathering.shouldWait(takeable: 64, writers: Self.noWriters, paused: CommitGathering.pauseSliceNanoseconds, now: now)
        #expect(!decision10)
        // The next batch may wait again.
        let decision11 = gathering.shouldWait(takeable: 64, writers: Self.noWriters, paused: 0, now: now)
        #expect(decision11)
    }

    @Test func aSlowStreamIsNotHeldBack() {
        // 60 writes in 20 ms: 3,000 writes/s, a pause would gather one or two more.
        var (gathering, now) = Self.busy(60, from: 5_000 * Self.millisecond, writers: Self.connections(0..<60))
        let decision12 = gathering.shouldWait(takeable: 1, writers: [ConnectionID(3)], paused: 0, now: now)
        #expect(!decision12)
    }

    @Test func aRateMeasuredBeforeAQuietSpellIsNotTrusted() {
        let (busy, now) = Self.busy(400, from: 5_000 * Self.millisecond)
        var gathering = busy
        let later = now + 3 * CommitGathering.rateWindowNanoseconds
        let decision13 = gathering.shouldWait(takeable: 1, writers: Self.noWriters, paused: 0, now: later)
        #expect(!decision13)
        // The first batch after the quiet spell starts a new measurement, which knows of no load yet.
        gathering.noteTaken(1, writers: Self.noWriters, now: later)
        let decision14 = gathering.shouldWait(takeable: 1, writers: Self.noWriters, paused: 0, now: later + Self.millisecond)
        #expect(!decision14)
    }
}
