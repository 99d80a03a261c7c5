/// Flood control: a token bucket that refills at `Rate.perSecond` up to `Rate.burst` tokens.
/// Each command costs one token; when none is left the caller delays the command (fake lag).
/// The rate is the server's and is passed in: a connection keeps only its tokens and their time
/// (16 bytes per idle connection, not 32).
public struct TokenBucket: Sendable {
    public struct Rate: Sendable {
        public let perSecond: Double
        public let burst: Double

        /// A rate of zero or less disables the bucket: every command is allowed at once.
        public init(perSecond: Double, burst: Int) {
            self.perSecond = perSecond
            self.burst = Double(max(1, burst))
        }

        public var isUnlimited: Bool { perSecond <= 0 }
    }

    private var tokens: Double
    private var updatedAt: Timestamp

    /// A full bucket.
    public init(_ rate: Rate, now: Timestamp) {
        self.tokens = rate.burst
        self.updatedAt = now
    }

    /// Takes a token if one is available now.
    public mutating func take(now: Timestamp, at rate: Rate) -> Bool {
        guard !rate.isUnlimited else { return true }
        refill(now: now, at: rate)
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }

    /// Milliseconds until the next token is available (0 if one is available now).
    public mutating func millisecondsUntilNextToken(now: Timestamp, at rate: Rate) -> Int64 {
        guard !rate.isUnlimited else { return 0 }
        refill(now: now, at: rate)
        if tokens >= 1 { return 0 }
        return Int64(((1 - tokens) / rate.perSecond * 1000).rounded(.up))
    }

    private mutating func refill(now: Timestamp, at rate: Rate) {
        let elapsed = Double(max(0, now.milliseconds(since: updatedAt))) / 1000
        tokens = min(rate.burst, tokens + elapsed * rate.perSecond)
        updatedAt = now
    }
}
