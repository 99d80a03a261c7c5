import Foundation
import ParleyClient

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

extension TextStyle {
    /// Colours on a terminal, unless `NO_COLOR` is set (https://no-color.org).
    static let fromEnvironment = TextStyle(colors: Terminal.isInteractive && ProcessInfo.processInfo.environment["NO_COLOR"] == nil)
}
