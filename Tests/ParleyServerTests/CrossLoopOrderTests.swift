import IRCWire
import NIOPosix
import Testing

/// Clients use PING as a barrier: every line the server decided for a client before handling
/// its PING arrives before the PONG. The sender and receivers below land on different event
/// loops (connections are spread over them), where a line for a receiver is handed from the
/// sender's loop to the receiver's.
@Suite("Order of lines between event loops, over real sockets")
struct CrossLoopOrderTests {
    @Test func aMessageDecidedBeforeAReceiversPingArrivesBeforeItsPong() async throws {
        // Flood control off: it would pace the rounds, not change their order.
        let server = try await TestServer { $0.limits.floodCommandsPerSecond = 0 }
        // The clients on a thread of their own: on the server's threads they would take turns
        // with the server and hide the race.
        let clientThread = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let sender = try await TestClient.connect(port: server.ipv4Port, on: clientThread)
        try await sender.register("sender")
        // Several receivers, so that some are on another loop than the sender's whatever the
        // order in which the shared loops are handed out.
        var receivers: [TestClient] = []
        for index in 0..<4 {
            let receiver = try await TestClient.connect(port: server.ipv4Port, on: clientThread)
            try await receiver.register("receiver\(index)")
            receivers.append(receiver)
        }
        for round in 0..<100 {
            // The server has handled the messages when the sender gets its PONG: each receiver
            // then sends a PING at once (the race is in microseconds), which must come back after them.
            sender.whenReceived({ $0.hasSuffix("PONG parley.local :sent\(round)") }) { [receivers] in
                for receiver in receivers { receiver.send("PING seen\(round)") }
            }
            for index in receivers.indices { sender.send("PRIVMSG receiver\(index) :round \(round)") }
            sender.send("PING sent\(round)")
            _ = try await sender.lines(through: AuthAbuseTests.isPong("sent\(round)"), "the sender's PONG")
            for (index, receiver) in receivers.enumerated() {
                let lines = try await receiver.lines(through: AuthAbuseTests.isPong("seen\(round)"), "receiver\(index)'s PONG")
                #expect(lines.contains { $0.command == "PRIVMSG" && $0.parameters.last == "round \(round)" },
                        "receiver\(index), round \(round): PONG before the message: \(lines.map(\.wireString))")
            }
        }
        await sender.close()
        for receiver in receivers { await receiver.close() }
        try await server.shutdownAndRemove()
        try await clientThread.shutdownGracefully()
    }
}
