import IRCWire
import Testing
@testable import ParleyCore

/// Sessions are found by the slot their connection id carries; ids that share a slot (a slot
/// given out again while its earlier id is still known, or a made-up id) must still be told apart.
@Suite("Sessions found by connection id")
struct SessionTableTests {
    @Test func twoConnectionsWhoseIdsShareASlotAreToldApart() {
        var harness = CoreHarness()
        let first = harness.connect(slot: 7, serial: 1)
        let second = harness.connect(slot: 7, serial: 2)
        #expect(harness.send(first, "NICK ann", "USER ann 0 * :Ann").contains { $0.contains(" 001 ann ") })
        #expect(harness.send(second, "NICK bea", "USER bea 0 * :Bea").contains { $0.contains(" 001 bea ") })

        harness.send(first, "PRIVMSG bea :hello from ann")
        #expect(harness.inbox(second) == [":ann!~ann@127.0.0.1 PRIVMSG bea :hello from ann"])
        harness.send(second, "PRIVMSG ann :hello from bea")
        #expect(harness.inbox(first) == [":bea!~bea@127.0.0.1 PRIVMSG ann :hello from bea"])
        #expect(harness.server.connectionCount == 2)

        harness.close(first)
        #expect(harness.server.connectionCount == 1)
        #expect(harness.send(second, "PRIVMSG ann :still there?").contains { $0.contains(" 401 bea ann ") })
        // The slot is free again: a third connection takes it while the second keeps its own.
        let third = harness.connect(slot: 7, serial: 3)
        harness.send(third, "NICK cid", "USER cid 0 * :Cid")
        harness.send(third, "PRIVMSG bea :hi")
        #expect(harness.inbox(second) == [":cid!~cid@127.0.0.1 PRIVMSG bea :hi"])
        #expect(harness.server.connectionCount == 2)
        harness.close(second)
        harness.close(third)
        #expect(harness.server.connectionCount == 0)
    }

    @Test func connectionsInManySlotsAreAllFound() {
        var harness = CoreHarness()
        let people = (0..<300).map { harness.connect(slot: $0 * 3, serial: UInt64($0 + 1)) }
        for (index, person) in people.enumerated() { harness.send(person, "NICK p\(index)", "USER p 0 * :P") }
        #expect(harness.server.connectionCount == 300)
        for index in stride(from: 0, to: 300, by: 37) {
            harness.send(people[index], "PRIVMSG p\(299 - index) :ping \(index)")
            #expect(harness.inbox(people[299 - index]).last == ":p\(index)!~p@127.0.0.1 PRIVMSG p\(299 - index) :ping \(index)")
        }
    }
}
