/// Flood control: a token bucket that refills at `ratePerSecond` up to `burst` tokens. Each
/// command costs one token; when none is left the caller delays the command (fake lag).
public struct TokenBucket: Sendable {
    public let ratePerSecond: Double
    public let burst: Double
    private var tokens: Double
    private var updatedAt: Timestamp

    /// A rate of zero or less disables the bucket: every command is allowed at once.
    public init(ratePerSecond: Double, burst: Int, now: Timestamp) {
        self.ratePerSecond = ratePerSecond
        self.burst = Double(max(1, burst))
        self.tokens = Double(max(1, burst))
        self.updatedAt = now
    }

    public var isUnlimited: Bool { ratePerSecond <= 0 }

    /// Takes a token if one is available now.
    public mutating func take(now: Timestamp) -> Bool {
        guard !isUnlimited else { return true }
        refill(now: now)
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }

    /// Milliseconds until the next token is available (0 if one is available now).
    public mutating func millisecondsUntilNextToken(now: Timestamp) -> Int64 {
        guard !isUnlimited else { return 0 }
        refill(now: now)
        if tokens >= 1 { return 0 }
        return Int64(((1 - tokens) / ratePerSecond * 1000).rounded(.up))
    }

    private mutating func refill(now: Timestamp) {
        let elapsed = Double(max(0, now.milliseconds(since: updatedAt))) / 1000
        tokens = min(burst, tokens + elapsed * ratePerSecond)
        updatedAt = now
    }
}
