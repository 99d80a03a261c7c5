import Foundation
import IRCWire
import ParleyServer
import Testing

/// `/metrics` over real loopback sockets: what an operator's Prometheus would scrape.
@Suite("Metrics")
struct MetricsTests {
    static let passwords = ["alice": "alice-password-1", "bob": "bob-password-22"]

    static func makeServer(_ configure: @escaping (inout ServerConfiguration) -> Void = { _ in }) async throws -> TestServer {
        try await TestServer { configuration in
            configuration.listeners.append(.init(address: "127.0.0.1", port: 0, http: true))
            configure(&configuration)
        }
    }

    static func scrape(port: Int, headers: [String: String] = [:]) async throws -> PrometheusText {
        let answer = try await HTTPFetch.get("/metrics", port: port, headers: headers)
        try #require(answer.status == 200, "GET /metrics answered \(answer.status): \(answer.text)")
        #expect(answer.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8")
        return try PrometheusText(parsing: answer.text)
    }

    static func logIn(_ name: String, port: Int, caps: [String] = []) async throws -> TestClient {
        try await TestClient.registered(name, port: port, caps: caps, password: passwords[name]!)
    }

    @Test func countersMoveWithLoginsMessagesAndFailures() async throws {
        let server = try await Self.makeServer()
        let web = server.port(2)
        let before = try await Self.scrape(port: web)
        #expect(before["parley_logins_total"] == 0)
        #expect(before["parley_connections_open", ["transport": "tcp"]] == 0)

        for name in ["alice", "bob"] {
            try await AccountTests.createAccount(name, password: Self.passwords[name]!, port: server.ipv4Port)
        }
        let alice = try await Self.logIn("alice", port: server.ipv4Port, caps: ["echo-message", "batch", "server-time", "message-tags", "draft/chathistory"])
        // bob is offline: this one waits for him.
        alice.send("PRIVMSG bob :while you were away")
        try await alice.expect(command: "NOTE")
        let bob = try await Self.logIn("bob", port: server.ipv4Port)
        try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.last?.hasSuffix("while you were away") == true }
        alice.send("PRIVMSG bob :live")
        try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.last == "live" }
        alice.send("CHATHISTORY LATEST bob * 10")
        try await alice.expect { $0.command == "BATCH" && $0.parameters.first?.hasPrefix("-") == true }

        // A wrong password: refused, and the connection closed.
        let guesser = try await TestClient.connect(port: server.ipv4Port)
        guesser.send("PASS bob:not-the-password")
        guesser.send("NICK bob")
        guesser.send("USER g 0 * :G")
        try await guesser.expect(numeric: "464")
        _ = try await guesser.expectClosed()

        let after = try await Self.scrape(port: web)
        #expect(after["parley_account_registrations_total"] == 2)
        #expect(after["parley_logins_total"] == 4, "two right after creating the accounts, then alice and bob with PASS")
        #expect(after["parley_login_failures_total"] == 1)
        #expect(after["parley_connection_registrations_total"] == 4, "the guesser never finished registering")
        #expect(after["parley_messages_received_total"] == 2)
        #expect(after["parley_deliveries_total"] == 1, "the live message to bob's one connection")
        #expect(after["parley_offline_messages_stored_total"] == 1)
        #expect(after["parley_offline_messages_replayed_total"] == 1)
        #expect(after["parley_history_queries_total"] == 1)
        #expect(after["parley_connections_open", ["transport": "tcp"]] == 2, "alice and bob")
        #expect(after["parley_connections_open", ["transport": "websocket"]] == 0)
        #expect((after["parley_lines_out_total"] ?? 0) > 20, "welcome bursts, echoes, the replay and the history")
        #expect((after["parley_storage_commit_duration_seconds_count"] ?? 0) >= 2, "both messages were committed before their echoes")
        #expect(after.types["parley_storage_commit_duration_seconds"] == "histogram")
        #expect(after["parley_storage_commit_duration_seconds_bucket", ["le": "+Inf"]] == after["parley_storage_commit_duration_seconds_count"])
        #expect(after["parley_storage_queue_depth"] != nil)
        #expect(after.types["parley_event_loop_lag_seconds"] == "histogram")
        #expect(after["parley_event_loop_lag_seconds_count", ["loop": "0"]] != nil)

        // A counter never goes back: a second scrape reports the same totals, not the change.
        let again = try await Self.scrape(port: web)
        #expect(again["parley_logins_total"] == 4)
        await alice.close(); await bob.close()
        try await server.shutdownAndRemove()
    }

    @Test func webSocketConnectionsAreCountedByTransportUntilTheyClose() async throws {
        let server = try await Self.makeServer()
        let web = server.port(2)
        let socket = try await TestWebSocketClient.connect(port: web, protocols: ["text.ircv3.net"])
        try await WebSocketTests.register(socket, "webby")
        #expect(try await Self.scrape(port: web)["parley_connections_open", ["transport": "websocket"]] == 1)
        await socket.close()
        // The server sees the close a moment later: wait for that condition, not for a time.
        let deadline = ContinuousClock.now + .seconds(5)
        while try await Self.scrape(port: web)["parley_connections_open", ["transport": "websocket"]] != 0 {
            try #require(ContinuousClock.now < deadline, "the WebSocket connection was still counted as open")
        }
        try await server.shutdownAndRemove()
    }

    @Test func onWebListenersOnlyThisMachineMayReadThemByDefault() async throws {
        let server = try await Self.makeServer()
        let web = server.port(2)
        // Through a reverse proxy on this machine the request comes from loopback too, but the
        // proxy names the real client: that is the public, and the page does not exist for it.
        for header in ["X-Forwarded-For", "Forwarded", "X-Real-IP"] {
            let proxied = try await HTTPFetch.get("/metrics", port: web, headers: [header: "203.0.113.9"])
            #expect(proxied.status == 404, "\(header)")
            #expect(!proxied.text.contains("parley_"))
        }
        try await server.shutdownAndRemove()

        let open = try await Self.makeServer { $0.metrics.allowRemote = true }
        let proxied = try await HTTPFetch.get("/metrics", port: open.port(2), headers: ["X-Forwarded-For": "203.0.113.9"])
        #expect(proxied.status == 200)
        try await open.shutdownAndRemove()
    }

    @Test func offMeansNotFoundEverywhere() async throws {
        let server = try await Self.makeServer { $0.metrics.listen = "off" }
        let answer = try await HTTPFetch.get("/metrics", port: server.port(2))
        #expect(answer.status == 404)
        #expect(server.metricsPort == nil)
        #expect(try await HTTPFetch.get("/", port: server.port(2)).status == 200, "the web client is still served")
        try await server.shutdownAndRemove()
    }

    @Test func aListenerOfTheirOwnServesOnlyMetrics() async throws {
        let server = try await Self.makeServer { $0.metrics.listen = "127.0.0.1:0" }
        let metricsPort = try #require(server.metricsPort)
        let client = try await TestClient.registered("someone", port: server.ipv4Port)
        let metrics = try await Self.scrape(port: metricsPort, headers: ["X-Forwarded-For": "203.0.113.9"])
        #expect(metrics["parley_connection_registrations_total"] == 1, "whoever reaches the metrics listener may read it")
        #expect(try await HTTPFetch.get("/", port: metricsPort).status == 404, "no web client there")
        #expect(try await HTTPFetch.get("/irc", port: metricsPort).status == 404, "no IRC there")
        #expect(try await HTTPFetch.get("/metrics", port: server.port(2)).status == 404, "and no metrics on the web listener")
        await client.close()
        try await server.shutdownAndRemove()
    }

    @Test func aBadMetricsListenerIsAClearConfigurationError() throws {
        var configuration = ServerConfiguration()
        configuration.metrics.listen = "everywhere"
        #expect(throws: ConfigurationError.invalidMetricsListen("everywhere")) { try configuration.metricsExposure() }
        configuration.metrics.listen = "tls://127.0.0.1:9100"
        #expect(throws: ConfigurationError.invalidMetricsListen("tls://127.0.0.1:9100")) { try configuration.metricsExposure() }
        configuration.metrics.listen = "[::1]:9100"
        #expect(try configuration.metricsExposure() == .listener(.init(address: "::1", port: 9100, http: true)))
        #expect(try ServerConfiguration().metricsExposure() == .web(allowRemote: false))
        let decoded = try JSONDecoder().decode(ServerConfiguration.self, from: Data(#"{"metrics": {"listen": "off"}}"#.utf8))
        #expect(try decoded.metricsExposure() == .off)
    }
}

/// Reads the Prometheus text exposition format (version 0.0.4) strictly enough to catch what a
/// scraper would reject: every sample belongs to a family declared by a `# TYPE` line before it,
/// names and labels are well formed, and every value is a number.
struct PrometheusText {
    struct Malformed: Error, CustomStringConvertible {
        let line: String
        let reason: String
        var description: String { "\(reason): \(line)" }
    }

    /// Family name -> type.
    var types: [String: String] = [:]
    /// Sample name -> (labels, value).
    var samples: [String: [([String: String], Double)]] = [:]

    init(parsing text: String) throws {
        guard text.isEmpty || text.hasSuffix("\n") else { throw Malformed(line: String(text.suffix(40)), reason: "no newline at the end") }
        let name = #"[a-zA-Z_:][a-zA-Z0-9_:]*"#
        let sample = try NSRegularExpression(pattern: "^(\(name))(\\{(.*)\\})? (\\S+)( -?[0-9]+)?$")
        let label = try NSRegularExpression(pattern: #"^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"$"#)
        for line in text.split(separator: "\n").map(String.init) {
            if line.hasPrefix("#") {
                let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
                if parts.count >= 2 && parts[1] == "TYPE" {
                    guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(parts[3]) else {
                        throw Malformed(line: line, reason: "a TYPE line names a family and a known type")
                    }
                    guard types[parts[2]] == nil else { throw Malformed(line: line, reason: "a family is declared once") }
                    types[parts[2]] = parts[3]
                }
                continue
            }
            let range = NSRange(line.startIndex..., in: line)
            guard let match = sample.firstMatch(in: line, range: range),
                  let nameRange = Range(match.range(at: 1), in: line), let valueRange = Range(match.range(at: 4), in: line) else {
                throw Malformed(line: line, reason: "not a sample line")
            }
            let sampleName = String(line[nameRange])
            let valueText = String(line[valueRange])
            guard let value = Double(valueText) ?? ["+Inf": .infinity, "-Inf": -.infinity, "NaN": .nan][valueText] else {
                throw Malformed(line: line, reason: "the value is not a number")
            }
            var labels: [String: String] = [:]
            if let labelsRange = Range(match.range(at: 3), in: line), !line[labelsRange].isEmpty {
                // Label values here hold no commas; a value with one would need a real tokenizer.
                for pair in line[labelsRange].split(separator: ",").map(String.init) {
                    let pairRange = NSRange(pair.startIndex..., in: pair)
                    guard let labelMatch = label.firstMatch(in: pair, range: pairRange),
                          let key = Range(labelMatch.range(at: 1), in: pair), let labelValue = Range(labelMatch.range(at: 2), in: pair) else {
                        throw Malformed(line: line, reason: "a malformed label")
                    }
                    labels[String(pair[key])] = String(pair[labelValue])
                }
            }
            let family = types[sampleName] != nil ? sampleName
                : ["_bucket", "_sum", "_count"].first { sampleName.hasSuffix($0) && types[String(sampleName.dropLast($0.count))] != nil }
                    .map { String(sampleName.dropLast($0.count)) }
            guard family != nil else { throw Malformed(line: line, reason: "a sample before its family's TYPE line") }
            samples[sampleName, default: []].append((labels, value))
        }
    }

    /// The value of the sample with exactly these labels (a histogram's `le` included).
    subscript(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples[name]?.first { $0.0 == labels }?.1
    }
}
