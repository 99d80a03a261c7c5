import IRCWire
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

@Suite("Wire format")
struct WireTests {
    @Test func roundTripPreservesTagsSourceAndParameters() throws {
        let original = IRCMessage(
            tags: [IRCTag("time", "2026-11-25T04:20:26.123Z"), IRCTag("+draft/reply", "a;b c\\d")],
            source: "alice!~alice@127.0.0.1", command: "PRIVMSG", parameters: ["bob", ":) hello there"])
        var buffer = ByteBuffer()
        original.write(to: &buffer)
        let text = String(buffer: buffer)
        #expect(text == "@time=2026-11-25T04:20:26.123Z;+draft/reply=a\\:b\\sc\\\\d :alice!~alice@127.0.0.1 PRIVMSG bob ::) hello there\r\n")
        let parsed = try IRCMessage(parsing: buffer.getSlice(at: 0, length: buffer.readableBytes - 2)!)
        #expect(parsed == original)
    }

    @Test func aReceiverGetsOnlyTheTagsItTakesHoweverManyThereAre() {
        // More tags than the serializer's bit per tag: the rest are asked for while writing.
        let tags = (0..<70).map { IRCTag("+k\($0)", $0 % 3 == 0 ? "" : "v \($0);") }
        let message = IRCMessage(tags: tags, source: "a!b@c", command: "TAGMSG", parameters: ["#room"])
        var buffer = ByteBuffer()
        message.write(to: &buffer, includingTag: { tag in Int(tag.key.dropFirst(2))! % 2 == 0 })
        let kept = (0..<70).filter { $0 % 2 == 0 }.map { $0 % 3 == 0 ? "+k\($0)" : "+k\($0)=v\\s\($0)\\:" }
        #expect(String(buffer: buffer) == "@" + kept.joined(separator: ";") + " :a!b@c TAGMSG #room\r\n")
        var none = ByteBuffer()
        message.write(to: &none, includingTag: { _ in false })
        #expect(String(buffer: none) == ":a!b@c TAGMSG #room\r\n")
        #expect(IRCMessage(command: "PING").wireString == "PING")
        #expect(IRCMessage(command: "NOTICE", parameters: ["*", ""]).wireString == "NOTICE * :")
        #expect(IRCMessage(command: "MODE", parameters: ["#a", "+k", ":key"]).wireString == "MODE #a +k ::key")
    }

    @Test func serializerNeverInjectsASecondLine() {
        let hostile = IRCMessage(command: "PRIVMSG", parameters: ["bob", "hi\r\nQUIT :gotcha\0"])
        #expect(hostile.wireString == "PRIVMSG bob :hi  QUIT :gotcha ")
        let taggy = IRCMessage(tags: [IRCTag("+x", "a\r\nb")], command: "TAGMSG", parameters: ["bob"])
        #expect(taggy.wireString == "@+x=a\\r\\nb TAGMSG bob")
        // Appending to a buffer that was partly read must clean only the new line, wherever it is.
        var buffer = ByteBuffer(string: "earlier\r\n")
        buffer.moveReaderIndex(forwardBy: 3)
        IRCMessage(tags: [IRCTag("+t", "x\0y")], source: "a\nb", command: "NOTICE", parameters: ["c", "d\re"]).write(to: &buffer)
        #expect(String(buffer: buffer) == "lier\r\n@+t=xy :a b NOTICE c :d e\r\n")
        // The untagged relay, with each of the three bytes alone (each is looked for on its own).
        for (text, safe) in [("hi\r\nQUIT :x", "hi  QUIT :x"), ("a\rb", "a b"), ("a\nb", "a b"), ("a\0b", "a b"), ("fine", "fine")] {
            var relayed = ByteBuffer(string: "earlier\r\n")
            IRCMessage.writeUntagged(source: "a!b@c", command: "PRIVMSG", target: "bob", text: text, to: &relayed)
            #expect(String(buffer: relayed) == "earlier\r\n:a!b@c PRIVMSG bob :\(safe)\r\n")
        }
    }

    @Test func limitsAreEnforced() {
        let body = "PRIVMSG bob :" + String(repeating: "x", count: 510)
        #expect(throws: IRCParseError.bodyTooLong) { try IRCMessage(parsing: ByteBuffer(string: body)) }
        let okay = "PRIVMSG bob :" + String(repeating: "x", count: 510 - 13)
        #expect((try? IRCMessage(parsing: ByteBuffer(string: okay))) != nil)
        let tags = "@+big=" + String(repeating: "t", count: 8200) + " PRIVMSG bob :hi"
        #expect(throws: IRCParseError.tagsTooLong) { try IRCMessage(parsing: ByteBuffer(string: tags)) }
        #expect(throws: IRCParseError.empty) { try IRCMessage(parsing: ByteBuffer(string: "   ")) }
        #expect(throws: IRCParseError.missingCommand) { try IRCMessage(parsing: ByteBuffer(string: ":source")) }
    }

    @Test func invalidUTF8IsRefused() {
        var bytes = ByteBuffer(string: "PRIVMSG bob :caf")
        bytes.writeBytes([0xC3, 0x28])
        #expect(throws: IRCParseError.invalidUTF8) { try IRCMessage(parsing: bytes) }
        var tagged = ByteBuffer(string: "@+x=")
        tagged.writeBytes([0xFF])
        tagged.writeString(" TAGMSG bob")
        #expect(throws: IRCParseError.invalidUTF8) { try IRCMessage(parsing: tagged) }
        #expect((try? IRCMessage(parsing: ByteBuffer(string: "PRIVMSG bob :café ☕"))) != nil)
    }

    @Test func namesValidateAndCompareCaseInsensitively() throws {
        #expect(try Nickname("Alice") == Nickname("alice"))
        #expect(try Nickname("[bot]|x-1").folded == "[bot]|x-1")
        #expect(throws: NameError.invalidCharacter) { try Nickname("1alice") }
        #expect(throws: NameError.invalidCharacter) { try Nickname("al ice") }
        #expect(throws: NameError.invalidCharacter) { try Nickname("alice!") }
        #expect(throws: NameError.tooLong) { try Nickname(String(repeating: "a", count: 31)) }
        #expect(throws: NameError.empty) { try Nickname("") }
        #expect(try Nickname("Bob[1]", caseMapping: .rfc1459) == Nickname("bob{1}", caseMapping: .rfc1459))
        #expect(try Nickname("Bob[1]", caseMapping: .ascii) != Nickname("bob{1}", caseMapping: .ascii))
        #expect(try ChannelName("#Parley") == ChannelName("#parley"))
        #expect(throws: NameError.missingPrefix) { try ChannelName("parley") }
        #expect(throws: NameError.invalidCharacter) { try ChannelName("#a,b") }
        #expect(throws: NameError.invalidCharacter) { try ChannelName("#a b") }
        #expect(throws: NameError.invalidCharacter) { try ChannelName("#a\u{07}") }
        #expect(throws: NameError.empty) { try ChannelName("#") }
    }

    @Test func masksNormalizeAndResistPathologicalPatterns() {
        #expect(IRCMask.normalized("bob") == "bob!*@*")
        #expect(IRCMask.normalized("*@host") == "*!*@host")
        #expect(IRCMask.normalized("bob!x") == "bob!x@*")
        #expect(IRCMask("BOB!*@*").matches("bob!~b@127.0.0.1"))
        let pattern = IRCMask(String(repeating: "*a", count: 30) + "*b")
        let candidate = String(repeating: "a", count: 5000)
        let start = ContinuousClock.now
        #expect(!pattern.matches(candidate))
        #expect(ContinuousClock.now - start < .seconds(2))
    }

    @Test func decoderFramesLinesByteByByteAndInBulk() throws {
        let input = ByteBuffer(string: "NICK alice\r\nUSER a 0 * :A\nPING x\r\n\r\n")
        let expected: [(ByteBuffer, [IRCLineFrame])] = [(input, [
            .line(ByteBuffer(string: "NICK alice")), .line(ByteBuffer(string: "USER a 0 * :A")), .line(ByteBuffer(string: "PING x")),
        ])]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: expected) { IRCLineDecoder() }
    }

    @Test func decoderReportsOversizedLinesOnceAndRecovers() throws {
        var decoder = IRCLineDecoder(maximumLineBytes: 16)
        var buffer = ByteBuffer(string: "short\r\n" + String(repeating: "x", count: 40))
        #expect(decoder.nextFrame(&buffer) == .line(ByteBuffer(string: "short")))
        #expect(decoder.nextFrame(&buffer) == .tooLong)
        #expect(buffer.readableBytes == 0, "oversized bytes are not buffered")
        buffer.writeString(String(repeating: "y", count: 100))
        #expect(decoder.nextFrame(&buffer) == nil, "still discarding, no second report")
        #expect(buffer.readableBytes == 0)
        buffer.writeString("yyy\r\nafter\r\n")
        #expect(decoder.nextFrame(&buffer) == .line(ByteBuffer(string: "after")))
        // A complete over-long line in one piece is reported too.
        buffer.writeString(String(repeating: "z", count: 20) + "\r\nok\r\n")
        #expect(decoder.nextFrame(&buffer) == .tooLong)
        #expect(decoder.nextFrame(&buffer) == .line(ByteBuffer(string: "ok")))
    }

    @Test func caseMappingFolds() {
        #expect(IRCCaseMapping.ascii.fold("Hello[]~") == "hello[]~")
        #expect(IRCCaseMapping.rfc1459.fold("Hello[]\\~") == "hello{}|^")
        #expect(IRCCaseMapping.strictRFC1459.fold("Hello[]\\~") == "hello{}|~")
    }
}
