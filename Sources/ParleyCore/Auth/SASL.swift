import Crypto
import Foundation

/// SASL PLAIN (RFC 4616): `authzid NUL authcid NUL password`.
public enum SASLPlain {
    public static func decode(_ payload: [UInt8]) -> (authorizationID: String, authenticationID: String, password: String)? {
        let parts = payload.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3,
              let authorization = String(validating: parts[0], as: UTF8.self),
              let authentication = String(validating: parts[1], as: UTF8.self),
              let password = String(validating: parts[2], as: UTF8.self),
              !authentication.isEmpty, !password.isEmpty
        else { return nil }
        return (authorization, authentication, password)
    }
}

public enum ScramError: Error, Sendable, Hashable {
    case malformed
    case channelBindingNotSupported
    case extensionsNotSupported
    case nonceMismatch
    case channelBindingMismatch
    case authenticationFailed
    case outOfOrder
}

/// The server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) without channel binding, as a value
/// with no I/O: the IRC layer does base64 and AUTHENTICATE chunking around it.
public struct ScramSHA256ServerExchange: Sendable {
    private enum State: Sendable {
        case start
        case sentServerFirst(clientFirstBare: String, serverFirst: String, nonce: String, gs2Header: String, credential: PasswordCredential, isReal: Bool)
        case done
    }

    private let nonceGenerator: @Sendable () -> String
    private var state = State.start
    private var clientFirstBare = ""
    private var clientNonce = ""
    private var gs2Header = ""
    public private(set) var requestedUsername: String?
    public private(set) var authenticatedUsername: String?

    public init(nonceGenerator: (@Sendable () -> String)? = nil) {
        self.nonceGenerator = nonceGenerator ?? { Data(randomBytes(18)).base64EncodedString() }
    }

    /// Reads `gs2-header client-first-bare`; returns the requested username.
    public mutating func receiveClientFirst(_ message: String) throws(ScramError) -> String {
        guard case .start = state, requestedUsername == nil else { throw .outOfOrder }
        let parts = message.split(separator: ",", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .malformed }
        switch parts[0] {
        case "n", "y": break
        default:
            if parts[0].hasPrefix("p=") { throw .channelBindingNotSupported }
            throw .malformed
        }
        let authorization = parts[1]
        let bare = String(parts[2])
        var username: String?
        var nonce: String?
        for attribute in bare.split(separator: ",", omittingEmptySubsequences: false) {
            if attribute.hasPrefix("m=") { throw .extensionsNotSupported }
            if attribute.hasPrefix("n=") { username = Self.decodeName(attribute.dropFirst(2)) }
            if attribute.hasPrefix("r=") { nonce = String(attribute.dropFirst(2)) }
        }
        guard let username, !username.isEmpty, let nonce, !nonce.isEmpty, !nonce.contains(",") else { throw .malformed }
        if !authorization.isEmpty {
            guard authorization.hasPrefix("a="), Self.decodeName(authorization.dropFirst(2)) == username else { throw .malformed }
        }
        gs2Header = "\(parts[0]),\(authorization),"
        clientFirstBare = bare
        clientNonce = nonce
        requestedUsername = username
        return username
    }

    /// Returns `r=<nonce>,s=<salt>,i=<iterations>`. For an unknown user a made-up credential is
    /// used (a salt of the same length, `decoyIterations`: pass the iterations real accounts get),
    /// so the exchange fails only at the end and does not reveal which accounts exist.
    public mutating func serverFirst(credential: PasswordCredential?, decoyIterations: Int) -> String {
        let isReal = credential != nil
        let effective = credential ?? Self.decoyCredential(for: requestedUsername ?? "", iterations: decoyIterations)
        let nonce = clientNonce + nonceGenerator()
        let message = "r=\(nonce),s=\(Data(effective.salt).base64EncodedString()),i=\(effective.iterations)"
        state = .sentServerFirst(clientFirstBare: clientFirstBare, serverFirst: message, nonce: nonce, gs2Header: gs2Header, credential: effective, isReal: isReal)
        return message
    }

    /// Checks `c=...,r=...,p=...`; returns `v=<server signature>` on success.
    public mutating func receiveClientFinal(_ message: String) throws(ScramError) -> String {
        guard case .sentServerFirst(let bare, let serverFirst, let nonce, let header, let credential, let isReal) = state else { throw .outOfOrder }
        state = .done
        guard let proofRange = message.range(of: ",p=") else { throw .malformed }
        let withoutProof = String(message[..<proofRange.lowerBound])
        guard let proof = Data(base64Encoded: String(message[proofRange.upperBound...])), proof.count == 32 else { throw .malformed }
        var channelBinding: String?
        var finalNonce: String?
        for attribute in withoutProof.split(separator: ",") {
            if attribute.hasPrefix("c=") { channelBinding = String(attribute.dropFirst(2)) }
            if attribute.hasPrefix("r=") { finalNonce = String(attribute.dropFirst(2)) }
        }
        guard channelBinding == Data(header.utf8).base64EncodedString() else { throw .channelBindingMismatch }
        guard finalNonce == nonce else { throw .nonceMismatch }
        let authMessage = Array("\(bare),\(serverFirst),\(withoutProof)".utf8)
        let clientSignature = Array(HMAC<SHA256>.authenticationCode(for: authMessage, using: SymmetricKey(data: credential.storedKey)))
        let clientKey = zip(Array(proof), clientSignature).map { $0 ^ $1 }
        let candidateStoredKey = Array(SHA256.hash(data: clientKey))
        guard constantTimeEqual(candidateStoredKey, credential.storedKey), isReal else { throw .authenticationFailed }
        authenticatedUsername = requestedUsername
        let serverSignature = HMAC<SHA256>.authenticationCode(for: authMessage, using: SymmetricKey(data: credential.serverKey))
        return "v=" + Data(serverSignature).base64EncodedString()
    }

    static func decodeName<S: StringProtocol>(_ encoded: S) -> String? {
        var result = ""
        var rest = Substring(encoded)
        while let equals = rest.firstIndex(of: "=") {
            result += rest[..<equals]
            let code = rest[rest.index(after: equals)...].prefix(2)
            switch code {
            case "2C": result += ","
            case "3D": result += "="
            default: return nil
            }
            rest = rest[rest.index(equals, offsetBy: 3)...]
        }
        return result + rest
    }

    /// A stable fake verifier per username (so repeated probes look identical), keyed by a
    /// per-process secret so it cannot be computed offline.
    static func decoyCredential(for username: String, iterations: Int) -> PasswordCredential {
        let salt = Array(HMAC<SHA256>.authenticationCode(for: Array(username.utf8), using: decoySecret).prefix(16))
        return PasswordCredential(salt: salt, iterations: iterations, storedKey: randomBytes(32), serverKey: randomBytes(32))
    }

    private static let decoySecret = SymmetricKey(size: .bits256)
}
