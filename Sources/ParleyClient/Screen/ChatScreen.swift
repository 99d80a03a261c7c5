import Foundation

/// What the screen asks the client to do (the model itself sends nothing).
public enum ScreenEffect: Sendable, Equatable {
    /// Messages up to `time` in `conversation` are on the screen: mark them read.
    case markRead(conversation: String, time: String)
    /// The user scrolled past the oldest message: fetch older ones (`before` the oldest shown,
    /// or the latest when nothing with a time is shown yet).
    case loadOlder(conversation: String, before: HistoryAnchor?)
}

/// The oldest message on screen, from which older history is asked for: by its id when known,
/// which is exact even among messages of the same millisecond (by time alone, the ones sent in
/// the same millisecond before it would be skipped), else by its server time.
public struct HistoryAnchor: Sendable, Equatable {
    public var time: String
    public var msgid: String?

    public init(time: String, msgid: String? = nil) {
        self.time = time
        self.msgid = msgid
    }
}

/// The terminal client's screen as a value: conversations with their messages and states,
/// unread counts, the scroll position and the input line go in; rows of text come out
/// (`frame()`). No terminal I/O here, so every rule of the layout is testable with plain values.
///
/// Every string from the network enters through `apply(_:now:)`, which passes the event through
/// `ClientEvent.visibleOnTerminal` first: control characters are shown, never obeyed.
public struct ChatScreen: Sendable {
    public struct Entry: Sendable, Equatable {
        public enum Kind: Sendable, Equatable {
            case message
            /// A line from the interface (info, errors, group events), in a tone.
            case line(TextStyle.Tone)
            /// One row about another conversation's new message.
            case notice
            /// "new since you left", before the first missed message.
            case divider
        }

        public var kind: Kind
        public var text: String
        /// HH:mm as shown.
        public var clock = ""
        /// The server's time (ISO 8601), for ordering history and read markers.
        public var time: String?
        public var author: String?
        public var own = false
        public var isNotice = false
        public var localID: String?
        public var msgid: String?
        public var state: DeliveryState?
        public var failure: String?
        public var recipients: Set<String> = []
        public var deliveredTo: Set<String> = []
        public var readBy: Set<String> = []
        public var missed = false

        public init(kind: Kind, text: String) {
            self.kind = kind
            self.text = text
        }
    }

    public struct Conversation: Sendable, Equatable {
        public fileprivate(set) var name: String
        public fileprivate(set) var entries: [Entry] = []
        public fileprivate(set) var unread = 0
        /// The server has nothing older than the first message shown.
        public fileprivate(set) var reachedStart = false
        public fileprivate(set) var loadingOlder = false
        fileprivate var loadedSinceRequest = 0
        fileprivate var hasDivider = false

        public var isGroup: Bool { name.hasPrefix("#") }
    }

    /// A whole screen: `rows` top to bottom, and where the cursor goes (0-based).
    public struct Frame: Sendable, Equatable {
        public var rows: [Row]
        public var cursorRow: Int
        public var cursorColumn: Int
    }

    /// Entries kept per conversation; older ones are dropped (and fetched again on scrolling).
    public static let maxEntries = 5000
    /// Messages fetched per scroll past the start.
    public static let olderPageSize = 50

    public let ownNick: String
    public let style: TextStyle
    public var rows: Int
    public var columns: Int
    public private(set) var conversations: [Conversation] = []
    /// The open conversation; nil before any is opened (the home view).
    public private(set) var current: Int?
    public private(set) var home: [Entry] = []
    /// How far up the view is scrolled, in rows from the bottom.
    public private(set) var scrollOffset = 0
    public var input = InputLine()
    public var prompt = "> "

    public init(ownNick: String, style: TextStyle, rows: Int, columns: Int) {
        self.ownNick = ownNick
        self.style = style
        self.rows = rows
        self.columns = columns
    }

    public var currentName: String? { current.map { conversations[$0].name } }

    public func conversation(named name: String) -> Conversation? {
        index(of: name).map { conversations[$0] }
    }

    private func index(of name: String) -> Int? {
        let key = name.lowercased()
        return conversations.firstIndex { $0.name.lowercased() == key }
    }

    private mutating func indexCreating(_ name: String) -> Int {
        if let found = index(of: name) { return found }
        conversations.append(Conversation(name: name))
        return conversations.count - 1
    }

    // MARK: Switching

    /// Opens a conversation (creating it) or, with nil, the home view; what it holds counts as read.
    public mutating func open(_ name: String?) -> [ScreenEffect] {
        guard let name else {
            current = nil
            scrollOffset = 0
            return []
        }
        let index = indexCreating(name)
        if current != index { scrollOffset = 0 }
        current = index
        conversations[index].unread = 0
        let latest = conversations[index].entries.last { $0.kind == .message && !$0.own && $0.time != nil }
        return latest.flatMap(\.time).map { [.markRead(conversation: conversations[index].name, time: $0)] } ?? []
    }

    /// The conversation at `number` (1-based, as the status line shows), if there is one.
    public func conversationName(at number: Int) -> String? {
        conversations.indices.contains(number - 1) ? conversations[number - 1].name : nil
    }

    /// The next (or previous) conversation in the status line, wrapping around.
    public func conversationName(after step: Int) -> String? {
        guard !conversations.isEmpty else { return nil }
        let from = current ?? (step > 0 ? -1 : 0)
        let count = conversations.count
        return conversations[((from + step) % count + count) % count].name
    }

    // MARK: Events

    public mutating func apply(_ remoteEvent: ClientEvent, now: Date = Date()) -> [ScreenEffect] {
        let event = remoteEvent.visibleOnTerminal
        switch event.type {
        case .message:
            return applyMessage(event, now: now)
        case .state:
            applyState(event, now: now)
        case .historyEnd:
            if let name = event.conversation, let index = index(of: name) {
                conversations[index].loadingOlder = false
                if conversations[index].loadedSinceRequest == 0 { conversations[index].reachedStart = true }
            }
        case .recipientOffline:
            let who = event.conversation ?? "?"
            addLine("\(who) is offline, \(Self.describeLastSeen(event.lastSeen, now: now)); they get it when they come back", .yellow, to: event.conversation)
        case .joined:
            addLine("You are in \(event.conversation ?? "?").", .dim, to: event.conversation)
        case .parted:
            addLine("You left \(event.conversation ?? "?").", .dim, to: event.conversation.flatMap { index(of: $0) == nil ? nil : $0 })
        case .kicked:
            addLine("\(event.from ?? "The owner") removed you from \(event.conversation ?? "?"): \(event.reason ?? "")", .yellow, to: event.conversation)
        case .memberJoined:
            addLine("\(event.user ?? "?") joined \(event.conversation ?? "?")", .dim, to: event.conversation)
        case .memberLeft:
            addLine("\(event.user ?? "?") left \(event.conversation ?? "?")", .dim, to: event.conversation)
        case .members:
            addLine("In \(event.conversation ?? "?") now: \((event.members ?? []).joined(separator: " "))", .dim, to: event.conversation)
        case .topic:
            addLine("Topic of \(event.conversation ?? "?"): \(event.text ?? "")", .dim, to: event.conversation)
        case .renamed:
            if let old = event.from, let new = event.conversation, let index = index(of: old) {
                if let existing = self.index(of: new), existing != index {
                    conversations[index].entries += conversations[existing].entries
                    conversations.remove(at: existing)
                    if current == existing { current = nil }
                }
                if let moved = self.index(of: old) { conversations[moved].name = new }
            }
            addLine("\(event.from ?? "?") is now \(event.conversation ?? "?")", .yellow, to: event.conversation)
        case .seen:
            if event.online == true {
                addLine("\(event.user ?? "?") is online now", .plain, to: nil)
            } else {
                addLine("\(event.user ?? "?") is offline, \(Self.describeLastSeen(event.lastSeen, now: now))", .plain, to: nil)
            }
        case .notice:
            addLine("-\(event.from ?? "server")- \(event.text ?? "")", .dim, to: nil)
        case .error:
            addLine("! \(event.text ?? "error")", .red, to: nil)
            // A refused history request ends it too.
            if event.reason?.hasPrefix("CHATHISTORY") == true || event.reason == "INVALID_TARGET" {
                for index in conversations.indices { conversations[index].loadingOlder = false }
            }
        case .connected:
            addLine("Connected as \(event.nick ?? ownNick). Type /help for commands.", .green, to: nil)
        case .accountCreated:
            addLine("Account \(event.account ?? ownNick) created.", .green, to: nil)
        case .loginFailed:
            addLine("Login failed: \(event.reason ?? "refused")", .red, to: nil)
        case .disconnected:
            addLine("Disconnected: \(event.reason ?? "connection lost")", .yellow, to: nil)
        case .reconnecting:
            addLine("Reconnecting in \(String(format: "%.1f", event.delay ?? 0)) s… (messages you send now go out when connected)", .yellow, to: nil)
        case .info:
            for line in (event.text ?? "").split(separator: "\n", omittingEmptySubsequences: false) {
                addLine(String(line), .dim, to: nil)
            }
        }
        return []
    }

    /// A line of the interface's own (help, hints) in the open view.
    public mutating func showInfo(_ text: String) {
        _ = apply(.info(text))
    }

    private mutating func applyMessage(_ event: ClientEvent, now: Date) -> [ScreenEffect] {
        guard let name = event.conversation else { return [] }
        let index = indexCreating(name)
        var entry = Entry(kind: .message, text: event.text ?? "")
        entry.author = event.from
        entry.time = event.time
        entry.clock = Self.clock(event.time, now: now)
        entry.own = event.own == true
        entry.isNotice = event.reason == "notice"
        entry.msgid = event.msgid
        entry.missed = event.missed == true
        let earlier = event.history == true || event.missed == true
        if let msgid = entry.msgid, conversations[index].entries.contains(where: { $0.msgid == msgid }) { return [] }
        if earlier {
            insertInTimeOrder(entry, into: index)
            conversations[index].loadedSinceRequest += 1
        } else {
            append(entry, to: index)
        }
        guard !entry.own, event.history != true else { return [] }
        if current == index {
            return entry.time.map { [.markRead(conversation: conversations[index].name, time: $0)] } ?? []
        }
        conversations[index].unread += 1
        if !entry.missed {
            let author = entry.isNotice ? "-\(entry.author ?? "?")-" : (entry.author ?? "?")
            let place = conversations[index].isGroup ? "\(conversations[index].name) \(author)" : author
            var notice = Entry(kind: .notice, text: "▸ \(place): \(entry.text)")
            notice.clock = entry.clock
            notice.text += "  (Alt+\(index + 1))"
            appendToView(notice)
        }
        return []
    }

    private mutating func applyState(_ event: ClientEvent, now: Date) {
        guard let id = event.id, let name = event.conversation, let state = event.state else { return }
        let index = indexCreating(name)
        if let position = conversations[index].entries.lastIndex(where: { $0.localID == id }) {
            var entry = conversations[index].entries[position]
            switch state {
            case .failed:
                entry.state = .failed
                entry.failure = event.reason
            case .delivered, .read:
                if let reader = event.reader {
                    entry.deliveredTo.insert(reader)
                    if state == .read { entry.readBy.insert(reader) }
                }
                if entry.state.map({ $0 < state }) ?? true { entry.state = state }
            case .sent, .pending:
                if entry.state.map({ $0 < state }) ?? true { entry.state = state }
            }
            if let msgid = event.msgid { entry.msgid = msgid }
            if state == .sent, let time = event.time {
                entry.time = time
                entry.clock = Self.clock(time, now: now)
            }
            entry.recipients.formUnion(event.members ?? [])
            conversations[index].entries[position] = entry
        } else if state == .pending {
            var entry = Entry(kind: .message, text: event.text ?? "")
            entry.own = true
            entry.author = ownNick
            entry.localID = id
            entry.state = .pending
            entry.clock = Self.clock(nil, now: now)
            append(entry, to: index)
        }
    }

    private mutating func append(_ entry: Entry, to index: Int) {
        conversations[index].entries.append(entry)
        if conversations[index].entries.count > Self.maxEntries {
            conversations[index].entries.removeFirst(conversations[index].entries.count - Self.maxEntries)
            conversations[index].reachedStart = false
        }
    }

    /// History and missed messages go where their time puts them; the first missed message of a
    /// conversation gets the "new since you left" divider before it.
    private mutating func insertInTimeOrder(_ entry: Entry, into index: Int) {
        var entries = conversations[index].entries
        var position = entries.count
        if let time = entry.time {
            position = entries.firstIndex { other in other.time.map { $0 > time } ?? false } ?? entries.count
            if position > 0, entries[position - 1].kind == .divider, !entry.missed { position -= 1 }
        }
        if entry.missed && !conversations[index].hasDivider {
            conversations[index].hasDivider = true
            entries.insert(Entry(kind: .divider, text: "new since you left"), at: position)
            position += 1
        }
        entries.insert(entry, at: position)
        conversations[index].entries = entries
    }

    private mutating func addLine(_ text: String, _ tone: TextStyle.Tone, to name: String?) {
        let entry = Entry(kind: .line(tone), text: text)
        if let name {
            append(entry, to: indexCreating(name))
        } else {
            appendToView(entry)
        }
    }

    private mutating func appendToView(_ entry: Entry) {
        if let current {
            append(entry, to: current)
        } else {
            home.append(entry)
            if home.count > Self.maxEntries { home.removeFirst(home.count - Self.maxEntries) }
        }
    }

    // MARK: Scrolling

    private var messageAreaHeight: Int { max(1, rows - 2) }

    /// Scrolls by whole pages (positive: back in time). Reaching the start of what is loaded asks
    /// for older messages.
    public mutating func scroll(pages: Int) -> [ScreenEffect] {
        let area = messageAreaHeight
        let total = layoutRows().count
        let maxOffset = max(0, total - area)
        scrollOffset = min(max(0, scrollOffset + pages * max(1, area - 1)), maxOffset)
        guard pages > 0, scrollOffset == maxOffset, let current, !conversations[current].reachedStart,
              !conversations[current].loadingOlder else { return [] }
        conversations[current].loadingOlder = true
        conversations[current].loadedSinceRequest = 0
        // Keep the top in view: it now starts with the "loading" row.
        scrollOffset = max(0, layoutRows().count - area)
        let oldest = conversations[current].entries.first { $0.kind == .message && $0.time != nil }
        return [.loadOlder(conversation: conversations[current].name, before: oldest.map { HistoryAnchor(time: $0.time!, msgid: $0.msgid) })]
    }

    // MARK: Receipts

    /// Who has and has not read one of our messages in the open conversation: the latest whose
    /// text contains `query` (the latest of all when empty).
    public func receipts(matching query: String) -> String {
        guard let current else { return "Open a conversation first (/query user or /join #group)." }
        let needle = query.lowercased()
        guard let entry = conversations[current].entries.last(where: {
            $0.kind == .message && $0.own && $0.localID != nil && (needle.isEmpty || $0.text.lowercased().contains(needle))
        }) else {
            return needle.isEmpty ? "You have sent nothing here yet." : "No message of yours here contains \"\(query)\"."
        }
        let everyone = entry.recipients.union(entry.deliveredTo).union(conversations[current].isGroup ? [] : [conversations[current].name])
        let read = entry.readBy.sorted()
        let deliveredOnly = entry.deliveredTo.subtracting(entry.readBy).sorted()
        let waiting = everyone.subtracting(entry.deliveredTo).sorted()
        func list(_ names: [String]) -> String { names.isEmpty ? "nobody" : names.joined(separator: ", ") }
        return "\"\(Self.shorten(entry.text))\": read by \(list(read)); delivered, not read: \(list(deliveredOnly)); not delivered yet: \(list(waiting))"
    }

    // MARK: Layout

    /// The rows of the open view, oldest first, wrapped to the width.
    func layoutRows() -> [Row] {
        let entries = current.map { conversations[$0].entries } ?? home
        let inGroup = current.map { conversations[$0].isGroup } ?? false
        var rows: [Row] = []
        if let current, conversations[current].reachedStart {
            rows.append(Row([Span("── start of the conversation with \(conversations[current].name) ──", .dim)]))
        } else if let current, conversations[current].loadingOlder {
            rows.append(Row([Span("loading older messages…", .dim)]))
        }
        for entry in entries { rows += layout(entry, inGroup: inGroup) }
        return rows
    }

    func layout(_ entry: Entry, inGroup: Bool) -> [Row] {
        switch entry.kind {
        case .divider:
            let label = " \(entry.text) "
            let side = max(2, (columns - DisplayWidth.of(label)) / 2)
            return [Row([Span(String(repeating: "─", count: side) + label + String(repeating: "─", count: side), .yellow)]).truncated(to: columns)]
        case .notice:
            return [Row([Span(entry.clock + " ", .dim), Span(entry.text, .yellow)]).truncated(to: columns)]
        case .line(let tone):
            return Layout.wrap(head: [], body: [Span(entry.text, tone)], columns: columns)
        case .message:
            let name = entry.own ? "you" : (entry.author ?? "?")
            let shownName = entry.isNotice ? "-\(name)-" : name
            let head = [Span(entry.clock + " ", .dim), Span(shownName, entry.own ? TextStyle.Tone.bold.rawValue : TextStyle.nickCode(name)), Span(": ")]
            var body = [Span(entry.text)]
            if let mark = mark(for: entry, inGroup: inGroup) { body += [Span("  ")] + mark }
            return Layout.wrap(head: head, body: body, columns: columns)
        }
    }

    /// The state mark at the end of one of our messages. With colours: `…`, `✓`, `✓✓`, and
    /// `✓✓` in blue once read; without, the same marks followed by the state in words.
    func mark(for entry: Entry, inGroup: Bool) -> [Span]? {
        guard entry.own, let state = entry.state else { return nil }
        let words = !style.colors
        let isGroup = inGroup || !entry.recipients.isEmpty
        let total = max(entry.recipients.count, entry.deliveredTo.count)
        func count(_ part: Int) -> String { total > 0 ? " \(part)/\(total)" : (part > 0 ? " \(part)" : "") }
        switch state {
        case .pending:
            return [Span(words ? "… sending" : "…", .dim)]
        case .sent:
            return [Span(words ? "✓ sent" : "✓", .dim)]
        case .delivered:
            let counted = isGroup ? count(entry.deliveredTo.count) : ""
            return [Span(words ? "✓✓ delivered\(counted)" : "✓✓\(counted)", .green)]
        case .read:
            if isGroup { return [Span("✓✓ read\(count(entry.readBy.count))", .blue)] }
            return [Span(words ? "✓✓ read" : "✓✓", .blue)]
        case .failed:
            return [Span("✗ \(entry.failure ?? "not sent")", .red)]
        }
    }

    /// The whole screen: the open view's last rows (or the scrolled-to ones), the status line,
    /// and the input line with the cursor where the user types.
    public func frame() -> Frame {
        let area = messageAreaHeight
        let laid = layoutRows()
        let offset = min(scrollOffset, max(0, laid.count - area))
        let end = laid.count - offset
        let visible = Array(laid[max(0, end - area)..<end])
        var rows = Array(repeating: Row(), count: area - visible.count) + visible
        rows.append(statusRow(scrolled: offset > 0))
        let (inputRow, cursorColumn) = input.row(prompt: prompt, columns: columns)
        rows.append(inputRow)
        return Frame(rows: rows.map { $0.truncated(to: columns) }, cursorRow: rows.count - 1, cursorColumn: min(cursorColumn, columns - 1))
    }

    /// `[1:alice] 2:bob(2) 3:#friends(5)`: the open conversation in brackets, unread counts in
    /// parentheses, numbered for Alt+number.
    func statusRow(scrolled: Bool) -> Row {
        var spans: [Span] = []
        if conversations.isEmpty {
            spans.append(Span("no conversation open: /query user or /join #group", .dim))
        }
        for (index, conversation) in conversations.enumerated() {
            if !spans.isEmpty { spans.append(Span(" ")) }
            let unread = conversation.unread > 0 ? "(\(conversation.unread))" : ""
            if index == current {
                spans.append(Span("[\(index + 1):\(conversation.name)\(unread)]", .inverse))
            } else {
                spans.append(Span("\(index + 1):\(conversation.name)", conversation.unread > 0 ? .bold : .dim))
                if !unread.isEmpty { spans.append(Span(unread, .yellow)) }
            }
        }
        if scrolled { spans.append(Span("  ↓ more below (PageDown)", .yellow)) }
        return Row(spans)
    }

    // MARK: Time

    public static func date(_ iso: String?) -> Date? {
        guard let iso else { return nil }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: iso) ?? ISO8601DateFormatter().date(from: iso)
    }

    /// Local HH:mm of a server time, or of `now`.
    public static func clock(_ iso: String?, now: Date) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "HH:mm"
        return formatter.string(from: date(iso) ?? now)
    }

    public static func describeLastSeen(_ iso: String?, now: Date) -> String {
        guard let date = date(iso) else { return "never seen online" }
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm"
        let seconds = max(0, Int(now.timeIntervalSince(date)))
        let ago = seconds < 60 ? "just now" : seconds < 3600 ? "\(seconds / 60) min ago" : seconds < 86400 ? "\(seconds / 3600) h ago" : "\(seconds / 86400) days ago"
        return "last seen \(formatter.string(from: date)) (\(ago))"
    }

    static func shorten(_ text: String) -> String {
        text.count > 30 ? String(text.prefix(29)) + "…" : text
    }
}
