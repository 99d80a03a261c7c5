import Foundation

/// The terminal: raw input mode, its size, and putting everything back as it was. The
/// original settings are restored on every exit path (normal quit, Ctrl-C, signals).
final class Terminal: @unchecked Sendable {
    // Only touched from the main thread and the signal handlers' queue, guarded by `lock`.
    private var original = termios()
    private var isRaw = false
    private let lock = NSLock()

    static let isInteractive = isatty(STDIN_FILENO) == 1 && isatty(STDOUT_FILENO) == 1

    func enterRawMode() {
        lock.lock()
        defer { lock.unlock() }
        guard !isRaw, tcgetattr(STDIN_FILENO, &original) == 0 else { return }
        var raw = original
        // No echo, no line buffering, no signals from keys (Ctrl-C arrives as a byte we handle),
        // no CR/LF translation on input. Output processing stays on so "\n" still works.
        raw.c_lflag &= ~tcflag_t(ECHO | ICANON | ISIG | IEXTEN)
        raw.c_iflag &= ~tcflag_t(IXON | ICRNL | BRKINT | INPCK | ISTRIP)
        raw.c_cflag |= tcflag_t(CS8)
        withUnsafeMutableBytes(of: &raw.c_cc) { bytes in
            bytes[Int(VMIN)] = 1
            bytes[Int(VTIME)] = 0
        }
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw)
        isRaw = true
    }

    func restore() {
        lock.lock()
        defer { lock.unlock() }
        guard isRaw else { return }
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &original)
        isRaw = false
    }

    static func size() -> (rows: Int, columns: Int) {
        var size = winsize()
        if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_row > 2, size.ws_col > 10 {
            return (Int(size.ws_row), Int(size.ws_col))
        }
        return (24, 80)
    }

    static func write(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { buffer in
                Foundation.write(STDOUT_FILENO, buffer.baseAddress! + offset, buffer.count - offset)
            }
            if written <= 0 {
                if errno == EINTR { continue }
                return
            }
            offset += written
        }
        bytes.removeAll()
    }

    /// Reads a line without echo (for passwords), from the terminal.
    static func readSecret(prompt: String) -> String? {
        FileHandle.standardError.write(Data(prompt.utf8))
        var original = termios()
        let interactive = tcgetattr(STDIN_FILENO, &original) == 0
        if interactive {
            var silent = original
            silent.c_lflag &= ~tcflag_t(ECHO)
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &silent)
        }
        let line = readLine(strippingNewline: true)
        if interactive {
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &original)
            FileHandle.standardError.write(Data("\n".utf8))
        }
        return line
    }
}

/// ANSI styles, or nothing when colour is off (NO_COLOR, or not a terminal).
struct Style: Sendable {
    let enabled: Bool

    init(enabled: Bool) {
        self.enabled = enabled
    }

    static let fromEnvironment = Style(enabled: Terminal.isInteractive && ProcessInfo.processInfo.environment["NO_COLOR"] == nil)

    func apply(_ code: String, _ text: String) -> String { enabled ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }
    func dim(_ text: String) -> String { apply("2", text) }
    func bold(_ text: String) -> String { apply("1", text) }
    func red(_ text: String) -> String { apply("31", text) }
    func green(_ text: String) -> String { apply("32", text) }
    func yellow(_ text: String) -> String { apply("33", text) }
    func cyan(_ text: String) -> String { apply("36", text) }

    /// A stable colour per nick, so senders are told apart at a glance.
    func nick(_ name: String) -> String {
        let palette = ["31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96"]
        let index = name.lowercased().unicodeScalars.reduce(0) { ($0 &* 31 &+ Int($1.value)) & 0xFFFF } % palette.count
        return apply("1;" + palette[index], name)
    }
}
