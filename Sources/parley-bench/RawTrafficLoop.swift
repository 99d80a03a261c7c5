import CBenchPoll
import Foundation
import Glibc
import Histogram
import NIOConcurrencyHelpers

/// One generator loop's traffic phase on the sockets themselves: a thread of its own waits on
/// its connections with epoll, reads each ready socket into one buffer, hands the lines to the
/// connections (`BenchConnection.consume`, whose `onMessage` counts them and refills windows)
/// and writes what they gathered once per round.
///
/// Why not NIO here: in a fan-out every delivered line is a read of its own more often than not,
/// and NIO's work per read (its pipeline, a buffer per read, reference counting) made the
/// generator use more than 80 % of its core before the server was saturated (`perf`: about
/// 40 % of the generator was user space, the rest the kernel's receiving). NIO still connects,
/// registers and joins; it stops reading each socket before this thread starts.
final class RawTrafficLoop: @unchecked Sendable {
    /// What the thread publishes once per round, and what it is asked to do.
    struct Shared {
        /// Cleared to stop sending (windows stop refilling, the clock sends no more).
        var sending = true
        /// Set to end the thread once what was in flight has arrived.
        var stop = false
        var received: UInt64 = 0
        var p99: UInt64 = 0
        var disconnected = 0
        /// Messages sent by this loop's senders, once the thread has stopped sending.
        var sent: UInt64?
        var exited = false
    }

    let shared = NIOLockedValueBox(Shared())
    private let traffic: LoopTraffic
    private let clients: [BenchConnection]
    private let senders: [BenchConnection]
    /// Closed loop: messages each sender keeps in flight.
    private let window: Int?
    /// Open loop: messages per nanosecond for this loop's senders, sent about every 200 us.
    private let ratePerNanosecond: Double?

    init(traffic: LoopTraffic, clients: [BenchConnection], senders: [BenchConnection], window: Int?, ratePerNanosecond: Double?) {
        self.traffic = traffic
        self.clients = clients
        self.senders = senders
        self.window = window
        self.ratePerNanosecond = ratePerNanosecond
    }

    func start() {
        let thread = Thread { [self] in run() }
        thread.name = "parley-bench traffic"
        thread.start()
    }

    /// The thread's latencies, order count and disconnections, once it has exited.
    func results() -> (histogram: Histogram<UInt64>, reordered: UInt64, disconnected: Int)? {
        guard let disconnected = shared.withLockedValue({ $0.exited ? $0.disconnected : nil }) else { return nil }
        return (traffic.histogram, traffic.reordered, disconnected)
    }

    private func run() {
        let poll = epoll_create1(Int32(EPOLL_CLOEXEC))
        for (index, client) in clients.enumerated() {
            var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(u64: UInt64(index)))
            epoll_ctl(poll, EPOLL_CTL_ADD, client.descriptor, &event)
        }
        // Open loop: a timer wakes the loop every 200 us (epoll waits in milliseconds), so that
        // messages go out in small bursts, as from many clients.
        let ticker = ratePerNanosecond.map { _ in Ticker(intervalMicroseconds: 200) }
        if let ticker {
            var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(u64: UInt64(clients.count)))
            epoll_ctl(poll, EPOLL_CTL_ADD, ticker.descriptor, &event)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 18, alignment: 64)
        var events = [epoll_event](repeating: epoll_event(), count: 1024)
        if let window {
            for sender in senders {
                for _ in 0..<window {
                    sender.appendMessage()
                    sender.inFlight += 1
                }
                traffic.needsFlush(sender)
            }
            traffic.flushAll()
        }
        let sendingSince = monotonicNanoseconds()
        var sentByClock = 0
        var nextSender = 0
        var lastPercentile = sendingSince
        var p99: UInt64 = 0
        var disconnected = 0
        var stopped = false
        while !stopped {
            let ready = events.withUnsafeMutableBufferPointer { epoll_wait(poll, $0.baseAddress, Int32($0.count), 20) }
            let readAt = monotonicMicroseconds()
            for event in events.prefix(Int(max(0, ready))) {
                let index = Int(event.data.u64)
                if index == clients.count {
                    ticker?.drain()
                    continue
                }
                let client = clients[index]
                let count = read(client.descriptor, buffer.baseAddress, buffer.count)
                if count > 0 {
                    client.consume(UnsafeRawBufferPointer(rebasing: buffer[..<count]), readAt: readAt)
                } else if count == 0 || (errno != EAGAIN && errno != EINTR) {
                    // Closed by the server (or broken): counted, and no longer waited on.
                    epoll_ctl(poll, EPOLL_CTL_DEL, client.descriptor, nil)
                    disconnected += 1
                }
            }
            if let ratePerNanosecond, traffic.running, !senders.isEmpty {
                let dueByNow = Int(Double(monotonicNanoseconds() - sendingSince) * ratePerNanosecond)
                while sentByClock < dueByNow {
                    sentByClock += 1
                    let sender = senders[nextSender % senders.count]
                    nextSender += 1
                    sender.appendMessage()
                    traffic.needsFlush(sender)
                }
            }
            traffic.flushAll()
            let now = monotonicNanoseconds()
            if now - lastPercentile > 500_000_000 {
                lastPercentile = now
                p99 = traffic.histogram.valueAtPercentile(99)
            }
            let received = traffic.received
            let sending = shared.withLockedValue { shared in
                shared.received = received
                shared.p99 = p99
                shared.disconnected = disconnected
                stopped = shared.stop
                return shared.sending
            }
            if !sending && traffic.running {
                traffic.running = false
                let sent = senders.reduce(0) { $0 + $1.sequence }
                shared.withLockedValue { $0.sent = sent }
            }
        }
        ticker?.stop()
        close(poll)
        buffer.deallocate()
        shared.withLockedValue { $0.exited = true }
    }
}

/// A timer that makes its descriptor readable every `intervalMicroseconds`.
private struct Ticker {
    let descriptor: CInt

    init(intervalMicroseconds: Int) {
        descriptor = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        let interval = timespec(tv_sec: 0, tv_nsec: intervalMicroseconds * 1000)
        var setting = itimerspec(it_interval: interval, it_value: interval)
        timerfd_settime(descriptor, 0, &setting, nil)
    }

    /// Reads the expirations count, which makes the descriptor wait for the next one.
    func drain() {
        var expirations: UInt64 = 0
        _ = read(descriptor, &expirations, 8)
    }

    func stop() {
        close(descriptor)
    }
}
