import Foundation

/// A message area above one input line. Incoming text is printed inside a scroll region that
/// ends just above the input line, and the input line is redrawn after every print, so what
/// the user is typing is never garbled.
final class Screen: @unchecked Sendable {
    // All state is guarded by `lock`: the input thread, the event task and signal handlers
    // all draw.
    private let lock = NSLock()
    private var rows: Int
    private var columns: Int
    private var input: [Character] = []
    private var cursor = 0
    private var prompt = "> "
    private var active = false

    init() {
        (rows, columns) = Terminal.size()
    }

    func start() {
        lock.lock()
        defer { lock.unlock() }
        active = true
        setUpRegion()
        drawInput()
    }

    /// Puts the terminal back: whole screen scrolls again, cursor on a fresh line.
    func stop() {
        lock.lock()
        defer { lock.unlock() }
        guard active else { return }
        active = false
        Terminal.write("\u{1B}[r\u{1B}[\(rows);1H\u{1B}[2K\r\n")
    }

    func resize() {
        lock.lock()
        defer { lock.unlock() }
        (rows, columns) = Terminal.size()
        guard active else { return }
        setUpRegion()
        drawInput()
    }

    private func setUpRegion() {
        // Region = every row but the last; start printing at its bottom.
        Terminal.write("\u{1B}[1;\(rows - 1)r\u{1B}[\(rows - 1);1H")
    }

    func print(_ lines: [String]) {
        lock.lock()
        defer { lock.unlock() }
        guard active else {
            for line in lines { Terminal.write(line + "\n") }
            return
        }
        var output = "\u{1B}[\(rows - 1);1H"
        for line in lines {
            for piece in line.split(separator: "\n", omittingEmptySubsequences: false) {
                output += "\r\n" + piece
            }
        }
        Terminal.write(output)
        drawInput()
    }

    func setPrompt(_ text: String) {
        lock.lock()
        defer { lock.unlock() }
        prompt = text
        if active { drawInput() }
    }

    /// The input line: prompt and text, scrolled so the cursor stays visible.
    private func drawInput() {
        let available = max(10, columns - prompt.count - 1)
        let start = max(0, cursor - available + 1)
        let visible = String(input[start..<min(input.count, start + available)])
        let cursorColumn = prompt.count + (cursor - start) + 1
        Terminal.write("\u{1B}[\(rows);1H\u{1B}[2K\(prompt)\(visible)\u{1B}[\(rows);\(cursorColumn)H")
    }

    // MARK: Editing

    enum KeyResult {
        case none
        case line(String)
        case interrupt
        case endOfInput
        case complete(String)
    }

    private var escape: [UInt8] = []
    private var pendingUTF8: [UInt8] = []

    /// Feeds bytes typed by the user; returns what they amount to.
    func feed(_ bytes: [UInt8]) -> [KeyResult] {
        lock.lock()
        defer { lock.unlock() }
        var results: [KeyResult] = []
        for byte in bytes {
            if !escape.isEmpty || byte == 0x1B {
                escape.append(byte)
                handleEscape()
                continue
            }
            switch byte {
            case 0x03: results.append(.interrupt)
            case 0x04: if input.isEmpty { results.append(.endOfInput) } else { deleteForward() }
            case 0x0D, 0x0A:
                let line = String(input)
                input = []
                cursor = 0
                results.append(.line(line))
            case 0x7F, 0x08:
                if cursor > 0 {
                    input.remove(at: cursor - 1)
                    cursor -= 1
                }
            case 0x01: cursor = 0
            case 0x05: cursor = input.count
            case 0x15:
                input.removeFirst(cursor)
                cursor = 0
            case 0x09: results.append(.complete(String(input)))
            case 0x00..<0x20: break
            default:
                pendingUTF8.append(byte)
                if let text = String(validating: pendingUTF8, as: UTF8.self) {
                    pendingUTF8 = []
                    for character in text {
                        input.insert(character, at: cursor)
                        cursor += 1
                    }
                } else if pendingUTF8.count >= 4 {
                    pendingUTF8 = []
                }
            }
        }
        if active { drawInput() }
        return results
    }

    func replaceInput(_ text: String) {
        lock.lock()
        defer { lock.unlock() }
        input = Array(text)
        cursor = input.count
        if active { drawInput() }
    }

    private func deleteForward() {
        if cursor < input.count { input.remove(at: cursor) }
    }

    private func handleEscape() {
        // ESC [ C / D / H / F / 3~ : right, left, home, end, delete.
        guard escape.count >= 2 else { return }
        guard escape[1] == UInt8(ascii: "[") || escape[1] == UInt8(ascii: "O") else {
            escape = []
            return
        }
        guard escape.count >= 3, let last = escape.last, (0x40...0x7E).contains(last) else {
            if escape.count > 8 { escape = [] }
            return
        }
        switch last {
        case UInt8(ascii: "C"): cursor = min(input.count, cursor + 1)
        case UInt8(ascii: "D"): cursor = max(0, cursor - 1)
        case UInt8(ascii: "H"): cursor = 0
        case UInt8(ascii: "F"): cursor = input.count
        case UInt8(ascii: "~") where escape.count == 4 && escape[2] == UInt8(ascii: "3"): deleteForward()
        default: break
        }
        escape = []
    }
}
