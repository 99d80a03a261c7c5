import Foundation
@testable import ParleyServer
import Testing

@Suite("Configuration file and listener flags")
struct ConfigurationTests {
    func load(_ json: String) throws -> ServerConfiguration {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("parley-config-\(UUID().uuidString).json")
        try Data(json.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        return try ServerConfiguration.load(from: file.path)
    }

    @Test func historyLimitsReachTheChatDomain() throws {
        let configuration = try load(#"{ "history": { "maxUndeliveredPerAccount": 20, "maxTrackedRecipients": 1234, "maxPendingReceiptsPerAuthor": 7, "storedBytesPerAccountPerDay": 99, "transientChannelMessages": 3, "transientChannelBytes": 1000 } }"#)
        let chat = try configuration.chatConfiguration()
        #expect(chat.maxUndeliveredPerAccount == 20)
        #expect(chat.maxTrackedRecipients == 1234)
        #expect(chat.maxPendingReceiptsPerAuthor == 7)
        #expect(chat.storedBytesPerAccountPerDay == 99)
        #expect(chat.transientChannelHistoryLength == 3)
        #expect(chat.transientChannelHistoryBytes == 1000)
        #expect(try ServerConfiguration().chatConfiguration().maxTrackedRecipients == 200_000)
    }

    @Test func missingFieldsKeepTheirDefaults() throws {
        let configuration = try load(#"{ "serverName": "chat.example.org", "limits": { "floodBurst": 5 } }"#)
        #expect(configuration.serverName == "chat.example.org")
        #expect(configuration.limits.floodBurst == 5)
        #expect(configuration.limits.floodCommandsPerSecond == ServerConfiguration.Limits().floodCommandsPerSecond)
        #expect(configuration.listeners == ServerConfiguration().listeners)
        #expect(configuration.accounts.passwordIterations == 210_000)
    }

    @Test(arguments: [
        (#"{ "limits": { "floodBrust": 5 } }"#, #"unknown configuration key "floodBrust" in limits"#),
        (#"{ "serverName": 12 }"#, "serverName should be a string"),
        (#"{ "listeners": [ { "address": "::" } ] }"#, "port is required"),
        ("not json", "not valid JSON"),
    ])
    func mistakesAreNamed(json: String, explanation: String) throws {
        let error = #expect(throws: ConfigurationError.self) { try load(json) }
        #expect(error.map { "\($0)" }?.contains(explanation) == true, "\(String(describing: error))")
    }

    @Test func listenerFlagsCoverBothFamiliesAndTLS() {
        #expect(ServerConfiguration.Listener(parsing: "127.0.0.1:6667") == .init(address: "127.0.0.1", port: 6667))
        #expect(ServerConfiguration.Listener(parsing: "[::1]:6667") == .init(address: "::1", port: 6667))
        #expect(ServerConfiguration.Listener(parsing: "tls://[::]:6697") == .init(address: "::", port: 6697, tls: true))
        #expect(ServerConfiguration.Listener(parsing: "tls://0.0.0.0:6697") == .init(address: "0.0.0.0", port: 6697, tls: true))
        #expect(ServerConfiguration.Listener(parsing: "::1:6667") == nil, "IPv6 needs brackets")
        #expect(ServerConfiguration.Listener(parsing: "localhost") == nil)
        #expect(ServerConfiguration.Listener(parsing: "127.0.0.1:99999") == nil)
    }
}
