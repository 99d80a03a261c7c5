import Foundation
import ParleyClient

/// Draws the screen model on the terminal. The model and the interpreter live here under one
/// lock, and every change redraws before the lock is released, so what the key thread, the
/// event task and the resize handler draw never interleaves. Only rows that changed are
/// rewritten.
final class Screen: @unchecked Sendable {
    struct State {
        var model: ChatScreen
        var interpreter = CommandInterpreter()
        var keys = KeyDecoder()

        /// Shows `name` (nil: the home view) and sends plain text there.
        mutating func open(_ name: String?) -> [ScreenEffect] {
            let effects = model.open(name)
            interpreter.open(name)
            model.prompt = interpreter.prompt
            return effects
        }
    }

    // Guarded by `lock`: the key thread, the event task and the SIGWINCH handler all draw.
    private let lock = NSLock()
    private var state: State
    private var drawn: [String] = []
    private var active = false
    private let style: TextStyle

    init(ownNick: String, style: TextStyle) {
        let (rows, columns) = Terminal.size()
        self.style = style
        state = State(model: ChatScreen(ownNick: ownNick, style: style, rows: rows, columns: columns))
        state.model.prompt = state.interpreter.prompt
    }

    /// Changes the state and redraws, in one step.
    func update<Result>(_ body: (inout State) -> Result) -> Result {
        lock.lock()
        defer { lock.unlock() }
        let result = body(&state)
        if active { draw() }
        return result
    }

    /// Takes the alternate screen, so the shell's screen comes back untouched on exit.
    func start() {
        lock.lock()
        defer { lock.unlock() }
        active = true
        Terminal.write("\u{1B}[?1049h\u{1B}[2J")
        drawn = []
        draw()
    }

    func stop() {
        lock.lock()
        defer { lock.unlock() }
        guard active else { return }
        active = false
        Terminal.write("\u{1B}[0m\u{1B}[?1049l")
    }

    /// SIGWINCH: lay everything out again for the new size.
    func resize() {
        lock.lock()
        defer { lock.unlock() }
        (state.model.rows, state.model.columns) = Terminal.size()
        guard active else { return }
        Terminal.write("\u{1B}[2J")
        drawn = []
        draw()
    }

    private func draw() {
        let frame = state.model.frame()
        let rows = frame.rows.map { $0.rendered(style) }
        var output = ""
        for (index, row) in rows.enumerated() where index >= drawn.count || drawn[index] != row {
            output += "\u{1B}[\(index + 1);1H\u{1B}[2K" + row
        }
        drawn = rows
        output += "\u{1B}[\(frame.cursorRow + 1);\(frame.cursorColumn + 1)H"
        Terminal.write(output)
    }
}
