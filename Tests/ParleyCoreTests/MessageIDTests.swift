import ParleyCore
import Testing

@Suite("Message ids")
struct MessageIDTests {
    @Test func idsCountUpInBase36AfterTheStartAndNode() {
        let start = Timestamp(millisecondsSince1970: 1_796_000_000_000)
        let startPart = String(UInt64(1_796_000_000_000), radix: 36)
        var plain = MessageIDGenerator(startedAt: start)
        var clustered = MessageIDGenerator(startedAt: start, node: "n2")
        var seen = Set<String>()
        for count in 1...1_300 {
            let id = plain.next()
            #expect(id == "\(startPart)-\(String(count, radix: 36))")
            #expect(clustered.next() == "n2.\(startPart)-\(String(count, radix: 36))")
            seen.insert(id)
        }
        #expect(seen.count == 1_300)
    }
}
