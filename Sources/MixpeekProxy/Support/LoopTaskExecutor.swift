import NIOCore

/// A task executor (SE-0417) that runs every job of a task on one event loop: a mutation's task
/// starts on the loop that read its request, and each of its awaits (the audit log's append,
/// the upstream's answer on that loop's own connection, the cache's delete) resumes there. It
/// has no thread of its own to wake: a mutation's only hops are to the audit log's writer and
/// back, instead of from the loop to the concurrency pool and back at every step (issue 28,
/// docs/BENCHMARKS.md).
///
/// What runs on it must not block, as anything on a loop: a mutation waits only by awaiting.
final class LoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
