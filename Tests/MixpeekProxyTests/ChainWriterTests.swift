import Dispatch
import NIOConcurrencyHelpers
import Testing
@testable import MixpeekProxy

/// The one group commit of both audit backends: what a backend's loop relies on.
@Suite("ChainWriter")
struct ChainWriterTests {
    /// A backend whose writes take a moment (so that appends pile up behind one), answer each
    /// item with its double, and fail every batch that holds a negative item.
    final class Backend: Sendable {
        let writer: ChainWriter<Int, Int>
        let batches = NIOLockedValueBox<[[Int]]>([])
        let writing = NIOLockedValueBox(0)
        let overlapped = NIOLockedValueBox(false)

        init(limit: Int) { writer = ChainWriter(limit: limit) }

        func append(_ item: Int) async throws -> Int { try await writer.append(item, flush: flush) }

        func flush() {
            guard let batch = writer.nextBatch() else { return }
            writing.withLockedValue { writing in
                if writing != 0 { overlapped.withLockedValue { $0 = true } }
                writing += 1
            }
            batches.withLockedValue { $0.append(batch.items) }
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(20)) {
                self.writing.withLockedValue { $0 -= 1 }
                if batch.items.contains(where: { $0 < 0 }) {
                    self.writer.finish(batch, .failure(Refused()))
                } else {
                    self.writer.finish(batch, .success(batch.items.map { $0 * 2 }))
                }
                self.flush()
            }
        }
    }

    struct Refused: Error {}

    @Test("appends made during a write share the next batch, at most `limit` each, never two at once, each answered its own output")
    func batchesShareAndNeverOverlap() async throws {
        let backend = Backend(limit: 4)
        let outputs = try await withThrowingTaskGroup(of: (Int, Int).self) { group in
            for item in 1...10 { group.addTask { (item, try await backend.append(item)) } }
            return try await group.reduce(into: [Int: Int]()) { $0[$1.0] = $1.1 }
        }
        #expect(outputs == Dictionary(uniqueKeysWithValues: (1...10).map { ($0, $0 * 2) }))
        let batches = backend.batches.withLockedValue { $0 }
        #expect(batches.flatMap { $0 }.sorted() == Array(1...10))
        #expect(batches.allSatisfy { $0.count <= 4 })
        #expect(batches.count < 10, "appends made while a batch was written should have shared one: \(batches)")
        #expect(!backend.overlapped.withLockedValue { $0 })
        // The loop ended with nothing pending; the next append starts it again.
        #expect(try await backend.append(21) == 42)
    }

    @Test("a failed batch fails each of its appends, and the next batch is written")
    func failureReachesTheWholeBatchOnly() async throws {
        let backend = Backend(limit: .max)
        // One append alone in the first batch, so that the next ones queue behind it together.
        async let first = backend.append(1)
        try await Task.sleep(for: .milliseconds(5))
        async let bad = Result { try await backend.append(-1) }
        async let beside = Result { try await backend.append(2) }
        #expect(try await first == 2)
        let (badResult, besideResult) = await (bad, beside)
        let batches = backend.batches.withLockedValue { $0 }
        if batches.contains([-1, 2]) || batches.contains([2, -1]) {
            #expect(throws: Refused.self) { try besideResult.get() }
        }
        #expect(throws: Refused.self) { try badResult.get() }
        #expect(try await backend.append(3) == 6)
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
