import IRCWire
import Testing

/// Clients use PING as a barrier: every line the server decided for a client before handling
/// its PING arrives before the PONG. The sender and receivers below land on different event
/// loops (connections are spread over them), where a line for a receiver is handed from the
/// sender's loop to the receiver's.
@Suite("Order of lines between event loops, over real sockets")
struct CrossLoopOrderTests {
    @Test func aMessageDecidedBeforeAReceiversPingArrivesBeforeItsPong() async throws {
        let server = try await TestServer()
        let sender = try await TestClient.registered("sender", port: server.ipv4Port)
        // Several receivers, so that some are on another loop than the sender's whatever the
        // order in which the shared loops are handed out.
        var receivers: [TestClient] = []
        for index in 0..<4 { receivers.append(try await TestClient.registered("receiver\(index)", port: server.ipv4Port)) }
        for round in 0..<20 {
            for index in receivers.indices { sender.send("PRIVMSG receiver\(index) :round \(round)") }
            sender.send("PING sent\(round)")
            _ = try await sender.lines(through: AuthAbuseTests.isPong("sent\(round)"), "the sender's PONG")
            // The server has handled the messages: each receiver's PING must come back after them.
            for (index, receiver) in receivers.enumerated() {
                receiver.send("PING seen\(round)")
                let lines = try await receiver.lines(through: AuthAbuseTests.isPong("seen\(round)"), "receiver\(index)'s PONG")
                #expect(lines.contains { $0.command == "PRIVMSG" && $0.parameters.last == "round \(round)" },
                        "receiver\(index), round \(round): PONG before the message: \(lines.map(\.wireString))")
            }
        }
        await sender.close()
        for receiver in receivers { await receiver.close() }
        try await server.shutdownAndRemove()
    }
}
