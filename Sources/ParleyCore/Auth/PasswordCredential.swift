import Crypto
import CryptoExtras
import Foundation

/// A SCRAM-SHA-256 verifier (RFC 5802, RFC 7677): what the server keeps instead of a password.
/// The same verifier serves SASL PLAIN / PASS / NickServ (recompute and compare) and
/// SCRAM-SHA-256 (the client proves knowledge without sending the password).
///
/// Passwords are used as their UTF-8 bytes, without SASLprep normalisation.
public struct PasswordCredential: Sendable, Hashable, Codable {
    public var salt: [UInt8]
    public var iterations: Int
    public var storedKey: [UInt8]
    public var serverKey: [UInt8]

    public init(salt: [UInt8], iterations: Int, storedKey: [UInt8], serverKey: [UInt8]) {
        self.salt = salt
        self.iterations = iterations
        self.storedKey = storedKey
        self.serverKey = serverKey
    }

    /// Derives a verifier: SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations),
    /// StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key")), ServerKey = HMAC(SaltedPassword,
    /// "Server Key"). Deliberately slow: callers run it off the event loop.
    public static func derive(password: String, iterations: Int, salt: [UInt8]? = nil) -> PasswordCredential {
        let salt = salt ?? randomBytes(16)
        let keys = ScramKeys(password: password, salt: salt, iterations: iterations)
        return PasswordCredential(salt: salt, iterations: iterations, storedKey: keys.storedKey, serverKey: keys.serverKey)
    }

    /// Recomputes the stored key from `password` and compares in constant time.
    public func verify(password: String) -> Bool {
        let keys = ScramKeys(password: password, salt: salt, iterations: iterations)
        return constantTimeEqual(keys.storedKey, storedKey)
    }
}

/// The keys derived from a password in SCRAM-SHA-256.
struct ScramKeys {
    let clientKey: [UInt8]
    let storedKey: [UInt8]
    let serverKey: [UInt8]

    init(password: String, salt: [UInt8], iterations: Int) {
        // PBKDF2 only throws for an unknown hash function; SHA-256 is always available.
        let salted = try! KDF.Insecure.PBKDF2.deriveKey(
            from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: 32,
            unsafeUncheckedRounds: max(1, iterations))
        clientKey = Array(HMAC<SHA256>.authenticationCode(for: Array("Client Key".utf8), using: salted))
        storedKey = Array(SHA256.hash(data: clientKey))
        serverKey = Array(HMAC<SHA256>.authenticationCode(for: Array("Server Key".utf8), using: salted))
    }
}

/// Compares without an early exit, so timing does not reveal how many leading bytes matched.
func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
    guard lhs.count == rhs.count else { return false }
    var difference: UInt8 = 0
    for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
    return difference == 0
}

func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
}

/// A registered account as the domain sees it.
public struct AccountRecord: Sendable, Hashable {
    /// The name as registered (its display form); also the account's nick.
    public var name: String
    /// The case-folded name: the unique key.
    public var key: String
    public var credential: PasswordCredential
    public var createdAt: Date
    public var lastSeen: Date?
    public var email: String?
    /// Small per-account preferences (for example whether read receipts are sent).
    public var settings: [String: String]

    public init(name: String, key: String, credential: PasswordCredential, createdAt: Date, lastSeen: Date? = nil, email: String? = nil, settings: [String: String] = [:]) {
        self.name = name
        self.key = key
        self.credential = credential
        self.createdAt = createdAt
        self.lastSeen = lastSeen
        self.email = email
        self.settings = settings
    }
}
