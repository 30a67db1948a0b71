import NIOConcurrencyHelpers

/// The one writer of an audit chain's appends, for both backends (audit.sqlite's `AuditLog`,
/// a group's `GroupAuditLog`): group commit. Appends that arrive while a batch is being
/// written wait for the next one, which writes them all in one transaction (one fsync, one
/// round trip); batches never overlap, so the one being written owns the chain's head.
///
/// `write`, the backend's, is handed each batch (at most `limit` items) and calls back once:
/// one output per item, in order, or one error that every item of the batch is given. It
/// chains the batch with `AuditRecord.chain` (the one chaining loop) after the head it knows,
/// and again after the store's head when another writer moved it. It runs where the backend
/// runs it: audit.sqlite's on GRDB's writer queue (no task), a group's in a task on
/// postgres-nio's connection.
final class ChainWriter<Item: Sendable, Output: Sendable>: Sendable {
    typealias Write = @Sendable (_ batch: [Item], _ done: @escaping @Sendable (Result<[Output], any Error>) -> Void) -> Void

    private struct Pending {
        var items: [(item: Item, waiting: CheckedContinuation<Output, any Error>)] = []
        var flushing = false
    }

    private let pending = NIOLockedValueBox(Pending())
    private let limit: Int
    private let write: NIOLockedValueBox<Write?>

    /// `write` is set once, by `start(writing:)`, by the owner that the writing needs.
    init(limit: Int = .max) {
        self.limit = limit
        write = NIOLockedValueBox(nil)
    }

    func start(writing: @escaping Write) {
        write.withLockedValue { $0 = writing }
    }

    /// Returns `item`'s output once its batch is written.
    func append(_ item: Item) async throws -> Output {
        try await withCheckedThrowingContinuation { continuation in
            let start = pending.withLockedValue { pending -> Bool in
                pending.items.append((item, continuation))
                defer { pending.flushing = true }
                return !pending.flushing
            }
            if start { flush() }
        }
    }

    /// Writes everything pending as one batch, then starts over while anything came in.
    private func flush() {
        let batch = pending.withLockedValue { pending in
            let batch: [(item: Item, waiting: CheckedContinuation<Output, any Error>)]
            if pending.items.count <= limit {
                batch = pending.items
                pending.items = []
            } else {
                batch = Array(pending.items.prefix(limit))
                pending.items.removeFirst(limit)
            }
            if batch.isEmpty { pending.flushing = false }
            return batch
        }
        guard !batch.isEmpty else { return }
        guard let write = write.withLockedValue({ $0 }) else {
            preconditionFailure("ChainWriter: append before start(writing:)")
        }
        write(batch.map(\.item)) { result in
            switch result {
            case .success(let outputs) where outputs.count == batch.count:
                for (entry, output) in zip(batch, outputs) { entry.waiting.resume(returning: output) }
            case .success:
                for entry in batch { entry.waiting.resume(throwing: ChainWriterError.outputsMissing) }
            case .failure(let error):
                for entry in batch { entry.waiting.resume(throwing: error) }
            }
            self.flush()
        }
    }
}

enum ChainWriterError: Error, CustomStringConvertible {
    case outputsMissing
    var description: String { "the audit writer did not return a record for every append of its batch" }
}
