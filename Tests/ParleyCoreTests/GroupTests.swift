import IRCWire
@testable import ParleyCore
import Testing

@Suite("Groups and channels, without sockets")
struct GroupTests {
    static let people = [("alice", "password-a"), ("bob", "password-b"), ("carol", "password-c"), ("dave", "password-d")]

    /// alice owns #team; bob is a member; carol has an account but is not a member.
    func teamHarness() -> (CoreHarness, alice: ConnectionID, bob: ConnectionID, carol: ConnectionID) {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        let bob = harness.register("bob", password: "password-b")
        let carol = harness.register("carol", password: "password-c")
        harness.send(alice, "JOIN #team")
        harness.send(alice, "INVITE bob #team")
        _ = harness.inbox(bob)
        return (harness, alice, bob, carol)
    }

    @Test func creatorOwnsANewInviteOnlyGroup() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["multi-prefix"])
        let join = harness.send(alice, "JOIN #team")
        #expect(join == [
            ":alice!~alice@127.0.0.1 JOIN #team",
            ":parley.local 353 alice = #team :~@alice",
            ":parley.local 366 alice #team :End of /NAMES list",
        ])
        let modes = harness.send(alice, "MODE #team")
        #expect(modes.first == ":parley.local 324 alice #team :+int")
        let saved = try #require(harness.savedGroups["#team"])
        #expect(saved.owner == "alice")
        #expect(saved.members == ["alice": .owner])
        #expect(saved.modes == "int")
    }

    @Test func aLargeChannelShowsEachJoinOnceAndListsEveryoneOnceInNamesLinesThatFit() {
        var harness = CoreHarness(accounts: Self.people)
        // alice owns a group on two devices; 150 guests join it one after another once it is open.
        let laptop = harness.register("alice", password: "password-a")
        harness.send(laptop, "JOIN #big", "MODE #big -i")
        let phone = harness.register("alice", password: "password-a")
        _ = harness.inbox(laptop)
        let guests = (0..<150).map { harness.register("guest\($0)") }
        for (index, guest) in guests.enumerated() {
            let reply = harness.send(guest, "JOIN #big")
            #expect(reply.first == ":guest\(index)!~guest\(index)@127.0.0.1 JOIN #big")
        }
        let expectedJoins = (0..<150).map { ":guest\($0)!~guest\($0)@127.0.0.1 JOIN #big" }
        #expect(harness.inbox(laptop) == expectedJoins, "each JOIN once, in order")
        #expect(harness.inbox(phone).filter { $0.hasPrefix(":guest") } == expectedJoins, "the account's other device too")
        #expect(harness.inbox(guests[0]) == Array(expectedJoins.dropFirst()))

        let names = harness.send(guests[0], "NAMES #big")
        #expect(names.last == ":parley.local 366 guest0 #big :End of /NAMES list")
        let replies = names.dropLast()
        #expect(replies.count > 1, "split over several lines")
        #expect(replies.allSatisfy { $0.utf8.count + 2 <= 512 && $0.hasPrefix(":parley.local 353 guest0 = #big :") })
        let listed = replies.flatMap { $0.split(separator: ":", maxSplits: 2).last!.split(separator: " ").map(String.init) }
        #expect(listed == ["~alice"] + (0..<150).map { "guest\($0)" }, "alice once for her two devices, everyone in the order they joined")
    }

    @Test func guestsMakeTransientChannelsThatEndWhenEmpty() {
        var harness = CoreHarness()
        let guest = harness.register("guest")
        let other = harness.register("other")
        #expect(harness.send(guest, "JOIN #lobby").contains(":parley.local 353 guest = #lobby :@guest"))
        #expect(harness.send(other, "JOIN #lobby").contains(":parley.local 353 other = #lobby :@guest other"))
        #expect(harness.inbox(guest) == [":other!~other@127.0.0.1 JOIN #lobby"])
        harness.send(guest, "PART #lobby :bye")
        harness.send(other, "QUIT")
        #expect(harness.server.channelCount == 0)
        #expect(harness.savedGroups.isEmpty, "nothing about transient channels is stored")
    }

    @Test func ownerInvitesOnlineMemberWhoIsJoinedAtOnce() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        let bob = harness.register("bob", password: "password-b", caps: ["extended-join"])
        harness.send(alice, "JOIN #team", "TOPIC #team :Plans")
        let invited = harness.send(alice, "INVITE bob #team")
        #expect(invited.first == ":parley.local 341 alice bob :#team")
        #expect(invited.contains(":bob!~bob@127.0.0.1 JOIN #team"), "the owner sees bob arrive")
        let atBob = harness.inbox(bob)
        #expect(atBob.first == ":bob!~bob@127.0.0.1 JOIN #team bob :bob Example")
        #expect(atBob.contains(":parley.local 332 bob #team :Plans"))
        #expect(atBob.contains(":parley.local 353 bob = #team :~alice bob"))
        #expect(harness.savedGroups["#team"]?.members == ["alice": .owner, "bob": .member])
    }

    @Test func aGroupMembersVoiceIsKeptWithTheGroupBesideTheirRole() throws {
        var (harness, alice, bob, _) = teamHarness()
        harness.send(alice, "MODE #team +v bob", "MODE #team +o bob")
        var saved = try #require(harness.savedGroups["#team"])
        #expect(saved.members == ["alice": .owner, "bob": .op])
        #expect(saved.voiced == ["bob"], "an operator keeps the voice given before")
        harness.send(alice, "MODE #team -o bob")
        saved = try #require(harness.savedGroups["#team"])
        #expect(saved.members["bob"] == .member && saved.voiced == ["bob"])
        // A group loaded from storage shows the voice again.
        var restarted = CoreHarness(accounts: Self.people)
        restarted.server = ChatServer(configuration: restarted.server.configuration, accounts: restarted.server.accounts.map(\.value),
                                      groups: [saved], startedAt: restarted.now)
        let bobAgain = restarted.register("bob", password: "password-b")
        #expect(restarted.send(bobAgain, "NAMES #team").first == ":parley.local 353 bob = #team :+bob")
        _ = bob
    }

    @Test func invitingSomeoneOfflineJoinsThemAtLogin() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        harness.send(alice, "JOIN #team")
        let reply = harness.send(alice, "INVITE dave #team")
        #expect(reply.commands == ["341", "NOTE"])
        let dave = harness.register("dave", password: "password-d")
        _ = dave
        #expect(harness.inbox(alice) == [":dave!~dave@127.0.0.1 JOIN #team"])
        #expect(harness.send(alice, "INVITE nobody #team").commands == ["401"])
    }

    @Test func aGuestInvitedToAClosedGroupMayJoinForThisConnectionOnly() throws {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        harness.send(alice, "JOIN #team")
        let guest = harness.register("guest", caps: ["account-tag"])
        #expect(harness.send(guest, "JOIN #team").commands == ["473"])
        #expect(harness.send(alice, "INVITE guest #team") == [":parley.local 341 alice guest :#team"])
        #expect(harness.inbox(guest) == ["@account=alice :alice!~alice@127.0.0.1 INVITE guest #team"])
        #expect(harness.send(guest, "JOIN #team").first == ":guest!~guest@127.0.0.1 JOIN #team")
        #expect(try #require(harness.savedGroups["#team"]).members == ["alice": .owner], "a guest is no member")
        // The invitation was used up, and belongs to that connection, not to the nick.
        harness.send(guest, "PART #team")
        #expect(harness.send(guest, "JOIN #team").commands == ["473"])
        harness.send(alice, "INVITE guest #team")
        harness.send(guest, "QUIT")
        let sameNick = harness.register("guest")
        #expect(harness.send(sameNick, "JOIN #team").commands == ["473"])
    }

    @Test func autoJoinShowsTheWholeJoinBurstAfterTheWelcome() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a")
        harness.send(alice, "JOIN #team", "INVITE bob #team")
        let bob = harness.connect()
        let burst = harness.send(bob, "PASS :bob:password-b", "NICK bob", "USER bob 0 * :Bob")
        let welcome = burst.firstIndex { $0.contains(" 001 ") }
        let join = burst.firstIndex { $0 == ":bob!~bob@127.0.0.1 JOIN #team" }
        #expect(welcome != nil && join != nil && welcome! < join!)
    }

    @Test func onlyTheOwnerManagesMembers() {
        var (harness, alice, bob, carol) = teamHarness()
        // A member cannot add, remove, change access modes, rename or delete.
        #expect(harness.send(bob, "INVITE carol #team") == [":parley.local 482 bob #team :Only the group's owner can do that"])
        #expect(harness.send(bob, "KICK #team alice").commands == ["482"])
        #expect(harness.send(bob, "MODE #team -i").commands == ["482"])
        #expect(harness.send(bob, "MODE #team +o bob").commands == ["482"])
        #expect(harness.send(bob, "RENAME #team #mine").commands == ["482"])
        #expect(harness.send(bob, "PRIVMSG ChanServ :DROP #team").commands == ["482"])
        // An outsider cannot even get in.
        #expect(harness.send(carol, "JOIN #team").commands == ["473"])
        #expect(harness.send(carol, "INVITE carol #team").commands == ["442"])
        #expect(harness.send(carol, "PRIVMSG #team :let me in").commands == ["404"])
        #expect(harness.inbox(alice).isEmpty, "nothing changed, nobody was told anything")
        #expect(harness.savedGroups["#team"]?.members == ["alice": .owner, "bob": .member])
    }

    @Test func kickRemovesAMemberUntilInvitedAgain() {
        var (harness, alice, bob, _) = teamHarness()
        let kick = harness.send(alice, "KICK #team bob :not today")
        #expect(kick == [":alice!~alice@127.0.0.1 KICK #team bob :not today"])
        #expect(harness.inbox(bob) == [":alice!~alice@127.0.0.1 KICK #team bob :not today"])
        #expect(harness.savedGroups["#team"]?.members == ["alice": .owner])
        #expect(harness.send(bob, "JOIN #team").commands == ["473"])
        harness.send(alice, "INVITE bob #team")
        #expect(harness.inbox(bob).first == ":bob!~bob@127.0.0.1 JOIN #team")
    }

    @Test func partLeavesTheGroupButTheOwnerMustHandItOver() {
        var (harness, alice, bob, _) = teamHarness()
        let savesBeforePart = harness.wholeGroupSaves
        #expect(harness.send(bob, "PART #team :moving on") == [":bob!~bob@127.0.0.1 PART #team :moving on"])
        #expect(harness.inbox(alice) == [":bob!~bob@127.0.0.1 PART #team :moving on"])
        #expect(harness.savedGroups["#team"]?.members == ["alice": .owner])
        #expect(harness.wholeGroupSaves == savesBeforePart, "leaving removes one row")
        #expect(harness.send(alice, "PART #team").first?.contains("FAIL PART OWNER_CANNOT_LEAVE #team") == true)
    }

    @Test func ownerOpensTheGroupGrantsOperatorAndHandsOverOwnership() {
        var (harness, alice, bob, carol) = teamHarness()
        #expect(harness.send(alice, "MODE #team -i") == [":alice!~alice@127.0.0.1 MODE #team -i"])
        #expect(harness.inbox(bob) == [":alice!~alice@127.0.0.1 MODE #team -i"])
        let savesBeforeJoin = harness.wholeGroupSaves
        #expect(harness.send(carol, "JOIN #team").first == ":carol!~carol@127.0.0.1 JOIN #team")
        #expect(harness.savedGroups["#team"]?.members["carol"] == .member, "joining an open group makes you a member")
        #expect(harness.wholeGroupSaves == savesBeforeJoin, "a join stores the joiner's row, not the whole member list")
        harness.send(alice, "MODE #team +o bob")
        #expect(harness.send(bob, "TOPIC #team :Helpers may set the topic").first == ":bob!~bob@127.0.0.1 TOPIC #team :Helpers may set the topic")
        #expect(harness.send(bob, "MODE #team +i").commands == ["482"], "operators do not manage membership")
        let handover = harness.send(alice, "MODE #team +q carol")
        #expect(handover == [":alice!~alice@127.0.0.1 MODE #team +q-q+o carol alice alice"])
        #expect(harness.savedGroups["#team"]?.owner == "carol")
        #expect(harness.savedGroups["#team"]?.members == ["alice": .op, "bob": .op, "carol": .owner])
        #expect(harness.wholeGroupSaves == savesBeforeJoin, "MODE and TOPIC save the settings and the changed members' rows only")
        #expect(harness.send(alice, "KICK #team bob").commands == ["482"], "the former owner lost the owner's rights")
        harness.send(carol, "PRIVMSG ChanServ :DROP #team")
        #expect(harness.savedGroups["#team"] == nil)
        #expect(harness.inbox(bob).last == ":ChanServ!ChanServ@services.parley KICK #team bob :Group deleted by carol")
        #expect(harness.server.channelCount == 0)
    }

    @Test func groupMessagesReachExactlyTheMembersAndAreStored() throws {
        var (harness, alice, bob, carol) = teamHarness()
        let aliceLaptop = harness.register("alice", password: "password-a")
        _ = harness.inbox(aliceLaptop)
        harness.send(bob, "PRIVMSG #team :hello team")
        #expect(harness.inbox(alice) == [":bob!~bob@127.0.0.1 PRIVMSG #team :hello team"])
        #expect(harness.inbox(aliceLaptop) == [":bob!~bob@127.0.0.1 PRIVMSG #team :hello team"])
        #expect(harness.inbox(carol).isEmpty)
        #expect(harness.inbox(bob).isEmpty, "no echo without echo-message")
        let stored = try #require(harness.storedMessages.last)
        #expect(stored.targetKind == .group)
        #expect(stored.target == "#team")
        #expect(stored.text == "hello team")
        #expect(stored.senderAccount == "bob")
    }

    @Test func renameIsSeenAsRenameOrAsPartAndJoin() {
        var harness = CoreHarness(accounts: Self.people)
        let alice = harness.register("alice", password: "password-a", caps: ["draft/channel-rename"])
        let bob = harness.register("bob", password: "password-b")
        harness.send(alice, "JOIN #team", "TOPIC #team :Plans", "INVITE bob #team")
        _ = harness.inbox(bob)
        #expect(harness.send(bob, "RENAME #team #crew").commands == ["482"])
        let renamed = harness.send(alice, "RENAME #team #crew :better name")
        #expect(renamed == [":alice!~alice@127.0.0.1 RENAME #team #crew :better name"])
        #expect(harness.inbox(bob) == [
            ":bob!~bob@127.0.0.1 PART #team :better name",
            ":bob!~bob@127.0.0.1 JOIN #crew",
            ":parley.local 332 bob #crew :Plans",
            ":parley.local 333 bob #crew alice!~alice@127.0.0.1 :\(harness.now.millisecondsSince1970 / 1000)",
            ":parley.local 353 bob = #crew :~alice bob",
            ":parley.local 366 bob #crew :End of /NAMES list",
        ])
        #expect(harness.savedGroups["#team"] == nil)
        #expect(harness.savedGroups["#crew"]?.members == ["alice": .owner, "bob": .member])
        let guest = harness.register("guest")
        #expect(harness.send(guest, "JOIN #team") == [":parley.local FAIL JOIN CHANNEL_RENAMED #team #crew :The channel has been renamed: better name"])
        harness.send(guest, "JOIN #other")
        #expect(harness.send(alice, "RENAME #crew #other").first == ":parley.local FAIL RENAME CHANNEL_NAME_IN_USE #crew #other :The channel name is already taken")
        #expect(harness.send(alice, "RENAME #crew nohash").first?.contains("FAIL RENAME CANNOT_RENAME #crew nohash") == true)
        harness.send(bob, "PRIVMSG #crew :still here")
        #expect(harness.inbox(alice) == [":bob!~bob@127.0.0.1 PRIVMSG #crew :still here"])
    }

    @Test func keysLimitsAndBansGuardTransientChannels() {
        var harness = CoreHarness()
        let op = harness.register("op")
        let one = harness.register("one")
        let two = harness.register("two", host: "10.0.0.2")
        harness.send(op, "JOIN #room", "MODE #room +kl secret 2")
        #expect(harness.send(one, "JOIN #room").commands == ["475"])
        #expect(harness.send(one, "JOIN #room,#elsewhere wrong").commands.first == "475")
        #expect(harness.send(one, "JOIN #room secret").first == ":one!~one@127.0.0.1 JOIN #room")
        #expect(harness.send(two, "JOIN #room secret").commands == ["471"])
        harness.send(op, "MODE #room -l", "MODE #room +b *!*@10.0.0.*")
        #expect(harness.send(two, "JOIN #room secret").commands == ["474"])
        let bans = harness.send(op, "MODE #room b")
        #expect(bans.commands == ["367", "368"])
        #expect(bans.first?.contains("#room *!*@10.0.0.*") == true)
        harness.send(op, "MODE #room +m")
        #expect(harness.send(one, "PRIVMSG #room :can I talk?").commands == ["404"])
        harness.send(op, "MODE #room +v one")
        #expect(harness.send(one, "PRIVMSG #room :now I can").isEmpty)
    }

    @Test func quitAndNickChangesReachChannelMembersOnce() {
        var harness = CoreHarness()
        let one = harness.register("one")
        let two = harness.register("two")
        harness.send(one, "JOIN #a", "JOIN #b")
        harness.send(two, "JOIN #a", "JOIN #b")
        _ = harness.inbox(one)
        harness.send(two, "NICK deux")
        #expect(harness.inbox(one) == [":two!~two@127.0.0.1 NICK deux"])
        harness.send(two, "QUIT :gone")
        #expect(harness.inbox(one) == [":deux!~two@127.0.0.1 QUIT :Quit: gone"])
    }

    @Test func whoWhoisNamesAndListShowChannels() {
        var (harness, alice, bob, carol) = teamHarness()
        let who = harness.send(bob, "WHO #team")
        #expect(who.contains(":parley.local 352 bob #team ~alice 127.0.0.1 parley.local alice H~ :0 alice Example"))
        #expect(harness.send(bob, "WHOIS alice").contains(":parley.local 319 bob alice :~#team"))
        #expect(!harness.send(carol, "WHOIS alice").contains { $0.contains(" 319 ") }, "closed groups are private")
        #expect(!harness.send(carol, "LIST").contains { $0.contains("#team") })
        #expect(harness.send(bob, "LIST").contains(":parley.local 322 bob #team 2 :[+int] "))
        _ = alice
    }
}

@Suite("ChanServ INFO of a large group")
struct LargeGroupInfoTests {
    @Test func theMemberListIsSplitIntoLinesThatFit() throws {
        // Twenty members with 30-character names: one line would be about 650 bytes.
        let names = (1...20).map { "member" + String(repeating: "x", count: 22) + String(format: "%02d", $0) }
        var harness = CoreHarness(accounts: [("alice", "password-a")] + names.map { ($0, "password-m") })
        let alice = harness.register("alice", password: "password-a")
        harness.send(alice, "JOIN #big")
        for name in names { harness.send(alice, "INVITE \(name) #big") }
        let info = harness.send(alice, "PRIVMSG ChanServ :INFO #big")
        for line in info { #expect(line.utf8.count + 2 <= 512, "\(line.utf8.count + 2) bytes: \(line)") }
        let memberLines = info.compactMap { $0.components(separatedBy: " :").dropFirst().joined(separator: " :") as String? }
            .filter { $0.hasPrefix("Members (21") }
        #expect(memberLines.count >= 2)
        #expect(memberLines.first?.hasPrefix("Members (21): ~alice, ") == true)
        #expect(memberLines.dropFirst().allSatisfy { $0.hasPrefix("Members (21, continued): ") })
        let listed = memberLines.flatMap { $0.split(separator: ":", maxSplits: 1)[1].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        #expect(listed == ["~alice"] + names.map { $0 + " (offline)" })
    }
}
