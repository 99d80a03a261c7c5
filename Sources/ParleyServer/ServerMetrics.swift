import CoreMetrics
import NIOConcurrencyHelpers
import NIOCore
import ParleyCore
import Prometheus

/// The operator's metrics for one server (docs/metrics.md), in Prometheus text format at
/// `/metrics`.
///
/// Each server has a registry of its own, handed in by whoever makes the server: tests start many
/// servers in one process, and swift-metrics' global `MetricsSystem` can be bootstrapped only once
/// per process. The metrics are made with swift-metrics' types on that registry's factory (the
/// executable also bootstraps the global system with it, so metrics that libraries emit appear
/// beside Parley's).
///
/// The shell measures what only it sees (open connections, commit latency, event-loop lag) as it
/// happens. What the domain knows (logins, deliveries, ...) it keeps as plain running totals
/// (`ChatCounters`), read when metrics are asked for: no metrics call on the message path, and
/// no metrics import in ParleyCore.
final class ServerMetrics: Sendable {
    enum Transport: String, CaseIterable, Sendable {
        case tcp, tls, websocket
    }

    let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let openConnections: [Transport: CoreMetrics.Meter]
    let storageCommitDuration: CoreMetrics.Timer
    private let storageQueueDepth: CoreMetrics.Meter
    private let passwordChecksInFlight: CoreMetrics.Meter
    /// The domain's totals, each reported as a counter moved by what changed since the last look.
    private let domainCounters: [(any KeyPath<ChatCounters, UInt64> & Sendable, CoreMetrics.Counter)]
    private let linesOut: CoreMetrics.Counter
    private let reported = NIOLockedValueBox<(counters: ChatCounters, linesOut: UInt64)>((ChatCounters(), 0))

    static let storageCommitLabel = "parley_storage_commit_duration_seconds"
    static let eventLoopLagLabel = "parley_event_loop_lag_seconds"

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        // A commit takes about a millisecond on SQLite; the default buckets start at 5 ms.
        factory.durationHistogramBuckets[Self.storageCommitLabel] = [
            .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
            .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(5),
        ]
        // A healthy loop runs a timer within a millisecond of its deadline.
        factory.durationHistogramBuckets[Self.eventLoopLagLabel] = [
            .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
        ]
        self.factory = factory
        var open: [Transport: CoreMetrics.Meter] = [:]
        for transport in Transport.allCases {
            open[transport] = CoreMetrics.Meter(label: "parley_connections_open", dimensions: [("transport", transport.rawValue)], factory: factory)
        }
        openConnections = open
        storageCommitDuration = CoreMetrics.Timer(label: Self.storageCommitLabel, factory: factory)
        storageQueueDepth = CoreMetrics.Meter(label: "parley_storage_queue_depth", factory: factory)
        passwordChecksInFlight = CoreMetrics.Meter(label: "parley_password_checks_in_flight", factory: factory)
        let counter = { (name: String) in CoreMetrics.Counter(label: name, factory: factory) }
        domainCounters = [
            (\.connectionRegistrations, counter("parley_connection_registrations_total")),
            (\.accountRegistrations, counter("parley_account_registrations_total")),
            (\.logins, counter("parley_logins_total")),
            (\.loginFailures, counter("parley_login_failures_total")),
            (\.messagesReceived, counter("parley_messages_received_total")),
            (\.deliveries, counter("parley_deliveries_total")),
            (\.offlineStored, counter("parley_offline_messages_stored_total")),
            (\.offlineReplayed, counter("parley_offline_messages_replayed_total")),
            (\.historyQueries, counter("parley_history_queries_total")),
        ]
        linesOut = counter("parley_lines_out_total")
    }

    /// Names the node this process is in a cluster (`parley_node_info{node,number} 1`): an
    /// operator scraping every node tells them apart by it, whatever address each is scraped at.
    func identify(node: String, number: UInt16) {
        CoreMetrics.Meter(label: "parley_node_info", dimensions: [("node", node), ("number", String(number))], factory: factory).set(1)
    }

    func connectionOpened(_ transport: Transport) { openConnections[transport]?.increment() }
    func connectionClosed(_ transport: Transport) { openConnections[transport]?.decrement() }

    /// A timer for one event loop's lag (`EventLoopLagProbe`).
    func eventLoopLag(loop index: Int) -> CoreMetrics.Timer {
        CoreMetrics.Timer(label: Self.eventLoopLagLabel, dimensions: [("loop", String(index))], factory: factory)
    }

    /// What the shell and the domain look like now, as a Prometheus text exposition.
    func exposition(counters: ChatCounters, linesQueued: UInt64, storageQueue: Int, passwordChecks: Int) -> [UInt8] {
        reported.withLockedValue { reported in
            for (field, counter) in domainCounters where counters[keyPath: field] > reported.counters[keyPath: field] {
                counter.increment(by: Int64(clamping: counters[keyPath: field] - reported.counters[keyPath: field]))
            }
            if linesQueued > reported.linesOut { linesOut.increment(by: Int64(clamping: linesQueued - reported.linesOut)) }
            reported = (counters, linesQueued)
        }
        storageQueueDepth.set(storageQueue)
        passwordChecksInFlight.set(passwordChecks)
        return registry.emitToBuffer()
    }
}

/// Measures how late each event loop runs a timer: a loop busy with one long task (or starved of
/// CPU) answers every connection on it late by as much.
final class EventLoopLagProbe: Sendable {
    static let interval = TimeAmount.milliseconds(500)
    private let tasks = NIOLockedValueBox<[RepeatedTask]>([])

    init(group: any EventLoopGroup, metrics: ServerMetrics) {
        var started: [RepeatedTask] = []
        for (index, loop) in group.makeIterator().enumerated() {
            let lag = metrics.eventLoopLag(loop: index)
            let expected = NIOLockedValueBox(NIODeadline.now() + Self.interval)
            started.append(loop.scheduleRepeatedTask(initialDelay: Self.interval, delay: Self.interval) { _ in
                let now = NIODeadline.now()
                // A repeated task's next run is `interval` after this one ends, which is now.
                let deadline = expected.withLockedValue { deadline in
                    defer { deadline = now + Self.interval }
                    return deadline
                }
                lag.recordNanoseconds(max(0, (now - deadline).nanoseconds))
            })
        }
        tasks.withLockedValue { $0 = started }
    }

    func stop() {
        for task in tasks.withLockedValue({ $0 }) { task.cancel() }
    }
}
