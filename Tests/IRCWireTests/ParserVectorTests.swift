import Foundation
import IRCWire
import NIOCore
import Testing

/// The shared irc-parser-tests vectors (CC0), read from `../shared/testdata/irc-parser-tests/`
/// beside the repository (or /work/shared), or from `$PARLEY_PARSER_TESTS` if set.
enum ParserVectors {
    static let directory: URL = {
        if let override = ProcessInfo.processInfo.environment["PARLEY_PARSER_TESTS"] {
            return URL(fileURLWithPath: override)
        }
        let besideRepository = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("shared/testdata/irc-parser-tests")
        // A clone elsewhere (a CI checkout) finds the workplace's shared folder.
        let candidates = [besideRepository, URL(fileURLWithPath: "/work/shared/testdata/irc-parser-tests")]
        return candidates.first { FileManager.default.fileExists(atPath: $0.path) } ?? besideRepository
    }()

    static func load(_ name: String) throws -> [[String: Any]] {
        let url = directory.appendingPathComponent(name)
        guard let data = FileManager.default.contents(atPath: url.path) else {
            Issue.record("missing test vectors at \(url.path): set PARLEY_PARSER_TESTS to the irc-parser-tests folder")
            return []
        }
        let root = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        let tests = root?["tests"] as? [[String: Any]] ?? []
        #expect(!tests.isEmpty, "\(name) has vectors")
        return tests
    }
}

@Suite("irc-parser-tests vectors")
struct ParserVectorTests {
    @Test func msgSplit() throws {
        let tests = try ParserVectors.load("msg-split.json")
        for test in tests {
            let input = try #require(test["input"] as? String)
            let atoms = try #require(test["atoms"] as? [String: Any])
            for message in [try IRCMessage(parsing: input), try IRCMessage(parsing: ByteBuffer(string: input))] {
                #expect(message.command == atoms["verb"] as? String, "verb of \(input)")
                #expect(message.source == atoms["source"] as? String, "source of \(input)")
                #expect(message.parameters == (atoms["params"] as? [String] ?? []), "params of \(input)")
                let expectedTags = atoms["tags"] as? [String: Any] ?? [:]
                var actualTags: [String: String] = [:]
                for tag in message.tags { actualTags[tag.key] = tag.value }
                #expect(actualTags.count == expectedTags.count, "tag count of \(input)")
                for (key, value) in expectedTags {
                    // A tag without a value is `true` or "" in the vectors; Parley stores "".
                    let expected = value as? String ?? ""
                    #expect(actualTags[key] == expected, "tag \(key) of \(input)")
                }
            }
        }
    }

    @Test func msgJoin() throws {
        let tests = try ParserVectors.load("msg-join.json")
        for test in tests {
            let atoms = try #require(test["atoms"] as? [String: Any])
            let matches = try #require(test["matches"] as? [String])
            let tags = (atoms["tags"] as? [String: Any] ?? [:]).map { IRCTag($0.key, $0.value as? String ?? "") }
            let message = IRCMessage(
                tags: tags.sorted { $0.key < $1.key }, source: atoms["source"] as? String,
                command: atoms["verb"] as? String ?? "", parameters: atoms["params"] as? [String] ?? [])
            let line = message.wireString
            // Tag order in the vectors comes from an unordered map; accept any order of the tags.
            let matched = matches.contains { candidate in
                candidate == line || Self.sameIgnoringTagOrder(candidate, line)
            }
            #expect(matched, "\(line) is not one of \(matches)")
        }
    }

    static func sameIgnoringTagOrder(_ lhs: String, _ rhs: String) -> Bool {
        guard lhs.hasPrefix("@"), rhs.hasPrefix("@"),
              let lhsSpace = lhs.firstIndex(of: " "), let rhsSpace = rhs.firstIndex(of: " ") else { return false }
        let lhsTags = Set(lhs[lhs.index(after: lhs.startIndex)..<lhsSpace].split(separator: ";"))
        let rhsTags = Set(rhs[rhs.index(after: rhs.startIndex)..<rhsSpace].split(separator: ";"))
        return lhsTags == rhsTags && lhs[lhsSpace...] == rhs[rhsSpace...]
    }

    @Test func userhostSplit() throws {
        for test in try ParserVectors.load("userhost-split.json") {
            let source = try #require(test["source"] as? String)
            let atoms = try #require(test["atoms"] as? [String: Any])
            let parsed = IRCSource(parsing: source)
            #expect(parsed.nick == atoms["nick"] as? String ?? "", "nick of \(source)")
            #expect(parsed.user == atoms["user"] as? String, "user of \(source)")
            #expect(parsed.host == atoms["host"] as? String, "host of \(source)")
        }
    }

    @Test func validateHostname() throws {
        for test in try ParserVectors.load("validate-hostname.json") {
            let host = try #require(test["host"] as? String)
            let valid = try #require(test["valid"] as? Bool)
            #expect(Hostname.isValid(host) == valid, "\(host) should be \(valid ? "valid" : "invalid")")
        }
    }

    @Test func maskMatch() throws {
        for test in try ParserVectors.load("mask-match.json") {
            let mask = IRCMask(try #require(test["mask"] as? String))
            for candidate in test["matches"] as? [String] ?? [] {
                #expect(mask.matches(candidate), "\(mask) should match \(candidate)")
            }
            for candidate in test["fails"] as? [String] ?? [] {
                #expect(!mask.matches(candidate), "\(mask) should not match \(candidate)")
            }
        }
    }
}
