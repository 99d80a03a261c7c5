import Foundation

/// The network a connection comes from, as login and registration throttles count it: an IPv4
/// address on its own, an IPv6 address by its /64 (one customer's share of addresses; counting
/// single IPv6 addresses would give an attacker 2^64 fresh counters).
enum SourceNetwork {
    /// A stable key for the network of `host` (a connection's address as the shell reports it).
    /// Text that is not an IPv6 address (an IPv4 address, or "unknown") is its own key.
    static func key(forHost host: String) -> String {
        guard host.contains(":"), let groups = ipv6Groups(host) else { return host }
        return groups.prefix(4).map { String($0, radix: 16) }.joined(separator: ":") + "::/64"
    }

    /// The eight 16-bit groups of an IPv6 address in text form (RFC 4291 section 2.2), or nil.
    static func ipv6Groups(_ text: String) -> [UInt16]? {
        // The shell writes addresses starting with ':' with a leading '0' (see ChatHost.displayHost).
        var text = Substring(text)
        if let percent = text.firstIndex(of: "%") { text = text[..<percent] }  // zone index
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func parse(_ part: String) -> [UInt16]? {
            if part.isEmpty { return [] }
            var groups: [UInt16] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if index == pieces.count - 1, piece.contains(".") {
                    // An embedded IPv4 address fills the last two groups.
                    let octets = piece.split(separator: ".", omittingEmptySubsequences: false).compactMap { UInt8($0) }
                    guard octets.count == 4 else { return nil }
                    groups.append(UInt16(octets[0]) << 8 | UInt16(octets[1]))
                    groups.append(UInt16(octets[2]) << 8 | UInt16(octets[3]))
                } else {
                    guard (1...4).contains(piece.count), let value = UInt16(piece, radix: 16) else { return nil }
                    groups.append(value)
                }
            }
            return groups
        }
        guard let head = parse(halves[0]) else { return nil }
        if halves.count == 1 { return head.count == 8 ? head : nil }
        guard let tail = parse(halves[1]), head.count + tail.count < 8 else { return nil }
        return head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
    }
}

/// Attempts counted per key in fixed windows: a key that reached `limit` attempts within
/// `windowMilliseconds` of its window's first attempt is refused until the window ends.
/// Attempts are recorded when they start and refunded when they turn out legitimate, so
/// attempts still in flight count too.
struct AttemptCounter: Sendable {
    private struct Window: Sendable {
        var count: Int
        var start: Timestamp
    }

    /// 0 (or less) means no limit.
    let limit: Int
    let windowMilliseconds: Int64
    private var windows: [String: Window] = [:]

    init(limit: Int, windowMilliseconds: Int64) {
        self.limit = limit
        self.windowMilliseconds = windowMilliseconds
    }

    /// Seconds until `key` may try again, or nil when it may now.
    func secondsUntilAllowed(_ key: String, now: Timestamp) -> Int64? {
        guard limit > 0, let window = windows[key] else { return nil }
        let elapsed = now.milliseconds(since: window.start)
        guard elapsed < windowMilliseconds, window.count >= limit else { return nil }
        return (windowMilliseconds - elapsed + 999) / 1000
    }

    mutating func record(_ key: String, now: Timestamp) {
        guard limit > 0 else { return }
        if var window = windows[key], now.milliseconds(since: window.start) < windowMilliseconds {
            window.count += 1
            windows[key] = window
        } else {
            windows[key] = Window(count: 1, start: now)
        }
        if windows.count > 100_000 {
            windows = windows.filter { now.milliseconds(since: $0.value.start) < windowMilliseconds }
        }
    }

    /// Takes back one attempt of the current window (one that succeeded, or never ran).
    mutating func refund(_ key: String, now: Timestamp) {
        guard var window = windows[key], now.milliseconds(since: window.start) < windowMilliseconds else { return }
        window.count -= 1
        windows[key] = window.count > 0 ? window : nil
    }
}
