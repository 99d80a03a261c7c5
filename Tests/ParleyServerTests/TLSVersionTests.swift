import Foundation
import NIOCore
import NIOPosix
import NIOSSL
@testable import ParleyServer
import Testing

/// Which TLS versions the TLS listener accepts: real handshakes over loopback, by clients that
/// speak exactly one version.
@Suite("TLS protocol versions")
struct TLSVersionTests {
    /// A server with one plain and one TLS listener on 127.0.0.1, and a throwaway certificate.
    struct SecureServer {
        let server: TestServer
        let directory: URL
        let certificate: String

        init(minimumVersion: ServerConfiguration.TLSVersion? = nil) async throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-tls-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let certificate = directory.appendingPathComponent("cert.pem").path
            let key = directory.appendingPathComponent("key.pem").path
            try TLSFixture.makeSelfSignedCertificate(certificate: certificate, key: key)
            self.certificate = certificate
            server = try await TestServer { configuration in
                configuration.listeners = [.init(address: "127.0.0.1", port: 0), .init(address: "127.0.0.1", port: 0, tls: true)]
                configuration.tls = .init(certificateFile: certificate, privateKeyFile: key)
                if let minimumVersion { configuration.tls?.minimumVersion = minimumVersion }
            }
        }

        var tlsPort: Int { server.port(1) }

        /// A client context that offers `version` and nothing else.
        func clientContext(speaking version: TLSVersion) throws -> NIOSSLContext {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(certificate))
            tls.minimumTLSVersion = version
            tls.maximumTLSVersion = version
            return try NIOSSLContext(configuration: tls)
        }

        /// Connects and registers `nick` over TLS `version`; returns the client and the version
        /// the connection negotiated.
        func register(_ nick: String, speaking version: TLSVersion) async throws -> (TestClient, TLSVersion?) {
            let client = try await TestClient.connect(port: tlsPort, tls: try clientContext(speaking: version), serverHostname: "localhost")
            try await client.register(nick)
            return (client, try await client.channel.nioSSL_tlsVersion().get())
        }

        /// Whether a client speaking only `version` gets an answer to a PING, or the error that
        /// ended its connection.
        func handshake(speaking version: TLSVersion) async throws -> Result<Void, any Error> {
            let context = try clientContext(speaking: version)
            let outcome = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Void.self)
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                        try channel.pipeline.syncOperations.addHandler(FirstReplyObserver(outcome: outcome))
                    }
                }
                .connect(host: "127.0.0.1", port: tlsPort).get()
            defer { channel.close(promise: nil) }
            do {
                try await outcome.futureResult.get()
                return .success(())
            } catch {
                return .failure(error)
            }
        }

        func finish() async throws {
            try await server.shutdownAndRemove()
            try? FileManager.default.removeItem(at: directory)
        }
    }

    @Test(arguments: [TLSVersion.tlsv1, .tlsv11])
    func deprecatedVersionsAreRefusedByDefault(version: TLSVersion) async throws {
        let secure = try await SecureServer()
        let outcome = try await secure.handshake(speaking: version)
        switch outcome {
        case .success:
            Issue.record("a client limited to \(version) completed its handshake")
        case .failure(let error):
            #expect(error is BoringSSLError || error is NIOSSLError, "the handshake itself failed: \(error)")
        }
        // The listener still serves modern clients after refusing one.
        let (client, negotiated) = try await secure.register("modern", speaking: .tlsv13)
        #expect(negotiated == .tlsv13)
        await client.close()
        try await secure.finish()
    }

    @Test(arguments: [TLSVersion.tlsv12, .tlsv13])
    func currentVersionsConnectAndChat(version: TLSVersion) async throws {
        let secure = try await SecureServer()
        let (sender, negotiated) = try await secure.register("sender", speaking: version)
        #expect(negotiated == version)
        let plain = try await TestClient.registered("plain", port: secure.server.ipv4Port)
        sender.send("PRIVMSG plain :over TLS \(version)")
        #expect(try await plain.expect(command: "PRIVMSG").parameters.last == "over TLS \(version)")
        for client in [sender, plain] { await client.close() }
        try await secure.finish()
    }

    @Test func aLegacyNetworkCanAllowTLS1_0() async throws {
        let secure = try await SecureServer(minimumVersion: .v1_0)
        let (old, negotiated) = try await secure.register("old", speaking: .tlsv1)
        #expect(negotiated == .tlsv1)
        old.send("PING :still-here")
        #expect(try await old.expect(command: "PONG").parameters.last == "still-here")
        await old.close()
        try await secure.finish()
    }

    // MARK: The configuration field

    func load(_ json: String) throws -> ServerConfiguration {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("parley-config-\(UUID().uuidString).json")
        try Data(json.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        return try ServerConfiguration.load(from: file.path)
    }

    @Test func minimumVersionIsReadFromTheConfigurationFile() throws {
        let files = #""certificateFile": "c.pem", "privateKeyFile": "k.pem""#
        #expect(try load(#"{ "tls": { \#(files) } }"#).tls?.minimumVersion == .v1_2, "TLS 1.2 unless told otherwise")
        #expect(try load(#"{ "tls": { \#(files), "minimumVersion": "1.0" } }"#).tls?.minimumVersion == .v1_0)
        #expect(try load(#"{ "tls": { \#(files), "minimumVersion": "1.3" } }"#).tls?.minimumVersion == .v1_3)
        let error = #expect(throws: ConfigurationError.self) { try load(#"{ "tls": { \#(files), "minimumVersion": "TLSv1.2" } }"#) }
        #expect(error.map { "\($0)" }?.contains(#"tls.minimumVersion should be one of "1.0", "1.1", "1.2", "1.3""#) == true, "\(String(describing: error))")
        let typo = #expect(throws: ConfigurationError.self) { try load(#"{ "tls": { \#(files), "minVersion": "1.2" } }"#) }
        #expect(typo.map { "\($0)" }?.contains(#"unknown configuration key "minVersion" in tls"#) == true, "\(String(describing: typo))")
    }
}

/// Sends a PING as soon as the connection is up (NIOSSL holds it until the handshake is done)
/// and completes `outcome` when the server answers, or fails it with what ended the connection.
private final class FirstReplyObserver: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let outcome: EventLoopPromise<Void>

    init(outcome: EventLoopPromise<Void>) {
        self.outcome = outcome
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: "PING :tls\r\n")), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        outcome.succeed(())
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        outcome.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        outcome.fail(ConnectionEnded.withoutReply)
        context.fireChannelInactive()
    }
}

private enum ConnectionEnded: Error {
    case withoutReply
}
