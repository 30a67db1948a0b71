import NIOConcurrencyHelpers

/// Group commit, for both audit backends (audit.sqlite's writer, a group's appender): appends
/// that arrive while a batch is being written wait for the next one, which writes them all in
/// one transaction (one fsync); batches never overlap, so the one being written owns the
/// chain's head. `write` is handed each batch (at most `limit` items) and calls back once,
/// with one output per item in order, or an error that every item of the batch is given.
final class GroupCommit<Item: Sendable, Output: Sendable>: Sendable {
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
            let batch = Array(pending.items.prefix(limit))
            pending.items.removeFirst(batch.count)
            if batch.isEmpty { pending.flushing = false }
            return batch
        }
        guard !batch.isEmpty else { return }
        guard let write = write.withLockedValue({ $0 }) else {
            preconditionFailure("GroupCommit: append before start(writing:)")
        }
        write(batch.map(\.item)) { result in
            switch result {
            case .success(let outputs) where outputs.count == batch.count:
                for (entry, output) in zip(batch, outputs) { entry.waiting.resume(returning: output) }
            case .success:
                for entry in batch { entry.waiting.resume(throwing: GroupCommitError.outputsMissing) }
            case .failure(let error):
                for entry in batch { entry.waiting.resume(throwing: error) }
            }
            self.flush()
        }
    }
}

enum GroupCommitError: Error, CustomStringConvertible {
    case outputsMissing
    var description: String { "the audit writer did not return a record for every append of its batch" }
}
