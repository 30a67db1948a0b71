import NIOConcurrencyHelpers

/// The one group commit of an audit chain's appends, for both backends (audit.sqlite's
/// `AuditLog`, a group's `GroupAuditLog`). Appends that arrive while a batch is being written
/// wait for the next one, which writes them all in one transaction (one fsync, one round
/// trip); batches never overlap, so the one being written owns the chain's head.
///
/// The backend runs the loop, where it writes: `append` starts it (`flush`) when no batch is
/// being written; `flush` takes `nextBatch()` (nil: nothing is pending, and the loop ends),
/// writes its items chained with `AuditRecord.chain` (the one chaining loop) after the head it
/// knows, hands the result to `finish` (one output per item, in order, or one error for them
/// all) and flushes again. audit.sqlite's loop runs on GRDB's writer queue, with no task; a
/// group's in a task on postgres-nio's connection.
///
/// (A version that handed the backend a completion closure through this generic type made
/// a lone proxy's creates a third slower: `perf` showed long chains of closure contexts, each
/// a reabstraction thunk around the last, released one by one. Batches are values here, and
/// no closure passes through; docs/BENCHMARKS.md has the figures.)
final class ChainWriter<Item: Sendable, Output: Sendable>: Sendable {
    /// A batch being written: its items and, kept from the backend, who waits for them.
    struct Batch: Sendable {
        let items: [Item]
        fileprivate let waiting: [CheckedContinuation<Output, any Error>]
    }

    private struct Pending {
        var items: [Item] = []
        var waiting: [CheckedContinuation<Output, any Error>] = []
        var flushing = false
    }

    private let pending = NIOLockedValueBox(Pending())
    private let limit: Int

    /// - Parameter limit: the most items a batch holds.
    init(limit: Int = .max) {
        self.limit = limit
    }

    /// Returns `item`'s output once its batch is written; calls `flush` when no batch is being
    /// written.
    @inline(__always)
    func append(_ item: Item, flush: () -> Void) async throws -> Output {
        try await withCheckedThrowingContinuation { continuation in
            let start = pending.withLockedValue { pending -> Bool in
                pending.items.append(item)
                pending.waiting.append(continuation)
                defer { pending.flushing = true }
                return !pending.flushing
            }
            if start { flush() }
        }
    }

    /// Everything pending (at most `limit` items), or nil when nothing is: the loop then ends,
    /// and the next append starts it again.
    func nextBatch() -> Batch? {
        pending.withLockedValue { pending in
            if pending.items.isEmpty {
                pending.flushing = false
                return nil
            }
            if pending.items.count <= limit {
                defer {
                    pending.items = []
                    pending.waiting = []
                }
                return Batch(items: pending.items, waiting: pending.waiting)
            }
            defer {
                pending.items.removeFirst(limit)
                pending.waiting.removeFirst(limit)
            }
            return Batch(items: Array(pending.items.prefix(limit)), waiting: Array(pending.waiting.prefix(limit)))
        }
    }

    /// Gives each waiting append its output, or every one the error.
    func finish(_ batch: Batch, _ result: Result<[Output], any Error>) {
        switch result {
        case .success(let outputs) where outputs.count == batch.waiting.count:
            for (waiting, output) in zip(batch.waiting, outputs) { waiting.resume(returning: output) }
        case .success:
            for waiting in batch.waiting { waiting.resume(throwing: ChainWriterError.outputsMissing) }
        case .failure(let error):
            for waiting in batch.waiting { waiting.resume(throwing: error) }
        }
    }
}

enum ChainWriterError: Error, CustomStringConvertible {
    case outputsMissing
    var description: String { "the audit writer did not return a record for every append of its batch" }
}
