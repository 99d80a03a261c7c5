import NIOCore

/// Runs a task's jobs on one NIO event loop. A transaction's thread blocks while it waits for a
/// statement; PostgresNIO's COPY is only async, and a task on Swift's shared pool could wait
/// forever when the pool's few threads are themselves blocked in such waits (seen in the test
/// suite: transactions left "idle in transaction"). The connection's own event loop is never
/// one of the waiting threads.
final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: the only stored property is an immutable EventLoop, itself Sendable.
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { [self] in
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
