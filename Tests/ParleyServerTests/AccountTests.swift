import Crypto
import CryptoExtras
import Foundation
import IRCWire
import NIOSSL
import Testing

@Suite("Accounts over real sockets")
struct AccountTests {
    static func plain(_ account: String, _ password: String) -> String {
        Data("\0\(account)\0\(password)".utf8).base64EncodedString()
    }

    /// Registers `name` with REGISTER and waits for success.
    static func createAccount(_ name: String, password: String, port: Int) async throws {
        let client = try await TestClient.registered(name, port: port, caps: ["draft/account-registration"])
        client.send("REGISTER * \(password)")
        let success = try await client.expect(command: "REGISTER")
        #expect(success.parameters.prefix(2) == ["SUCCESS", name])
        client.send("QUIT :done")
        _ = try await client.expectClosed()
    }

    @Test func accountsSurviveARestartAndSaslPlainLogsIn() async throws {
        let server = try await TestServer()
        try await Self.createAccount("alice", password: "correct-horse-battery", port: server.ipv4Port)
        try await server.restart()

        // The nick is reserved: a guest cannot take it.
        let impostor = try await TestClient.connect(port: server.ipv4Port)
        impostor.send("NICK alice")
        impostor.send("USER x 0 * :x")
        let refused = try await impostor.expect(numeric: "433")
        #expect(refused.parameters.last?.contains("reserved") == true)

        // SASL PLAIN with the right password logs in; a wrong one fails.
        let client = try await TestClient.connect(host: "::1", port: server.ipv6Port)
        client.send("CAP LS 302")
        client.send("CAP REQ :sasl")
        try await client.expect { $0.command == "CAP" && $0.parameters.contains("ACK") }
        client.send("NICK alice")
        client.send("USER alice 0 * :Alice")
        client.send("AUTHENTICATE PLAIN")
        try await client.expect { $0.command == "AUTHENTICATE" && $0.parameters == ["+"] }
        client.send("AUTHENTICATE \(Self.plain("alice", "wrong password"))")
        try await client.expect(numeric: "904")
        client.send("AUTHENTICATE PLAIN")
        try await client.expect { $0.command == "AUTHENTICATE" }
        client.send("AUTHENTICATE \(Self.plain("alice", "correct-horse-battery"))")
        let loggedIn = try await client.expect(numeric: "900")
        #expect(loggedIn.parameters[2] == "alice")
        try await client.expect(numeric: "903")
        client.send("CAP END")
        let welcome = try await client.expect(numeric: "001")
        #expect(welcome.parameters.first == "alice")
        await impostor.close(); await client.close()
        try await server.shutdownAndRemove()
    }

    @Test func scramSha256LogsIn() async throws {
        let server = try await TestServer()
        try await Self.createAccount("scrammy", password: "salted-and-hashed", port: server.ipv4Port)
        let client = try await TestClient.connect(port: server.ipv4Port)
        client.send("CAP LS 302")
        client.send("CAP REQ :sasl")
        try await client.expect { $0.command == "CAP" && $0.parameters.contains("ACK") }
        client.send("NICK scrammy")
        client.send("USER s 0 * :S")
        client.send("AUTHENTICATE SCRAM-SHA-256")
        try await client.expect { $0.command == "AUTHENTICATE" && $0.parameters == ["+"] }

        let clientNonce = "fyko+d2lbbFgONRv9qkxdawL"
        let clientFirstBare = "n=scrammy,r=\(clientNonce)"
        client.send("AUTHENTICATE " + Data("n,,\(clientFirstBare)".utf8).base64EncodedString())
        let challenge = try await client.expect(command: "AUTHENTICATE")
        let serverFirst = String(decoding: try #require(Data(base64Encoded: challenge.parameters[0])), as: UTF8.self)
        var fields: [String: String] = [:]
        for part in serverFirst.split(separator: ",") { fields[String(part.prefix(1))] = String(part.dropFirst(2)) }
        let nonce = try #require(fields["r"])
        #expect(nonce.hasPrefix(clientNonce))
        let salt = try #require(fields["s"].flatMap { Data(base64Encoded: $0) })
        let iterations = try #require(fields["i"].flatMap { Int($0) })

        let saltedPassword = try KDF.Insecure.PBKDF2.deriveKey(
            from: Data("salted-and-hashed".utf8), salt: salt, using: .sha256, outputByteCount: 32,
            unsafeUncheckedRounds: iterations)
        let clientKey = Data(HMAC<SHA256>.authenticationCode(for: Data("Client Key".utf8), using: saltedPassword))
        let storedKey = Data(SHA256.hash(data: clientKey))
        let clientFinalWithoutProof = "c=biws,r=\(nonce)"
        let authMessage = "\(clientFirstBare),\(serverFirst),\(clientFinalWithoutProof)"
        let signature = Data(HMAC<SHA256>.authenticationCode(for: Data(authMessage.utf8), using: SymmetricKey(data: storedKey)))
        let proof = Data(zip(clientKey, signature).map { $0 ^ $1 })
        client.send("AUTHENTICATE " + Data("\(clientFinalWithoutProof),p=\(proof.base64EncodedString())".utf8).base64EncodedString())

        let final = try await client.expect(command: "AUTHENTICATE")
        let serverFinal = String(decoding: try #require(Data(base64Encoded: final.parameters[0])), as: UTF8.self)
        let serverKey = Data(HMAC<SHA256>.authenticationCode(for: Data("Server Key".utf8), using: saltedPassword))
        let expectedServerSignature = Data(HMAC<SHA256>.authenticationCode(for: Data(authMessage.utf8), using: SymmetricKey(data: serverKey)))
        #expect(serverFinal == "v=" + expectedServerSignature.base64EncodedString(), "the server proves it knows the verifier")
        client.send("AUTHENTICATE +")
        try await client.expect(numeric: "900")
        try await client.expect(numeric: "903")
        client.send("CAP END")
        try await client.expect(numeric: "001")
        await client.close()
        try await server.shutdownAndRemove()
    }

    @Test func accountOnTwoConnectionsReceivesOnBothAndSeesItsOwnMessages() async throws {
        let server = try await TestServer()
        try await Self.createAccount("dana", password: "two-devices-here", port: server.ipv4Port)
        let laptop = try await TestClient.registered("dana", port: server.ipv4Port, caps: ["echo-message"], password: "two-devices-here")
        let phone = try await TestClient.registered("dana", port: server.ipv6Port, host: "::1", password: "two-devices-here")
        let eve = try await TestClient.registered("eve", port: server.ipv4Port)
        eve.send("PRIVMSG dana :hello dana")
        for device in [laptop, phone] {
            let message = try await device.expect(command: "PRIVMSG")
            #expect(message.parameters == ["dana", "hello dana"])
        }
        laptop.send("PRIVMSG eve :hi eve, from the laptop")
        try await laptop.expect { $0.command == "PRIVMSG" && $0.parameters.first == "eve" }
        let copy = try await phone.expect(command: "PRIVMSG")
        #expect(copy.parameters == ["eve", "hi eve, from the laptop"])
        #expect(copy.source?.hasPrefix("dana!") == true)
        let atEve = try await eve.expect(command: "PRIVMSG")
        #expect(atEve.parameters.last == "hi eve, from the laptop")
        let extra = try await eve.settle().filter { (try? IRCMessage(parsing: $0))?.command == "PRIVMSG" }
        #expect(extra.isEmpty, "eve gets it once")
        for client in [laptop, phone, eve] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func tlsListenersOnIPv4AndIPv6() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let certificate = directory.appendingPathComponent("cert.pem").path
        let key = directory.appendingPathComponent("key.pem").path
        try TLSFixture.makeSelfSignedCertificate(certificate: certificate, key: key)

        let server = try await TestServer { configuration in
            configuration.listeners += [.init(address: "127.0.0.1", port: 0, tls: true), .init(address: "::1", port: 0, tls: true)]
            configuration.tls = .init(certificateFile: certificate, privateKeyFile: key)
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(certificate))
        let context = try NIOSSLContext(configuration: tls)

        let secure4 = try await TestClient.connect(host: "127.0.0.1", port: server.port(2), tls: context, serverHostname: "localhost")
        try await secure4.register("secure4")
        let secure6 = try await TestClient.connect(host: "::1", port: server.port(3), tls: context, serverHostname: "localhost")
        try await secure6.register("secure6")
        let plain = try await TestClient.registered("plain", port: server.ipv4Port)
        secure4.send("PRIVMSG secure6 :over TLS")
        #expect(try await secure6.expect(command: "PRIVMSG").parameters.last == "over TLS")
        secure6.send("PRIVMSG plain :from TLS to plain")
        #expect(try await plain.expect(command: "PRIVMSG").parameters.last == "from TLS to plain")
        plain.send("WHOIS secure4")
        try await plain.expect(numeric: "671")
        for client in [secure4, secure6, plain] { await client.close() }
        try await server.shutdownAndRemove()
    }
}

enum TLSFixture {
    /// A P-256 self-signed certificate for localhost, 127.0.0.1 and ::1, made with the openssl CLI.
    static func makeSelfSignedCertificate(certificate: String, key: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", certificate, "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "openssl failed"])
        }
    }
}
