import Foundation
import GRDB
import MixpeekProxy
import Testing

/// The log keeps the chain's head in memory between batches; these protect what that must not
/// change: a failed batch leaves nothing behind and the next one links to what is on disk.
@Suite("Audit appends")
struct AuditAppendTests {
    typealias AuditFile = AuditTests.AuditFile

    @Test("a batch that fails midway is rolled back whole, and the next append links to the last committed record")
    func failedBatchKeepsTheChain() async throws {
        let path = AuditFile.scratchPath()
        defer { AuditFile.remove(path) }
        let log = try AuditFile.open(scratchFile: path)
        _ = try await log.recordIntent(Self.intent(user: "first@example.com"))
        // The file refuses one user's records, as a full disk or an I/O error would refuse a batch.
        let other = try DatabaseQueue(path: path)
        try await other.write { db in
            try db.execute(sql: """
                CREATE TRIGGER refuse_boom BEFORE INSERT ON audit_records WHEN NEW.user_email = 'boom@example.com'
                BEGIN SELECT RAISE(ABORT, 'refused'); END
                """)
        }
        // Hold the write lock so that every append below waits and lands in one batch.
        let blocker = try AuditFile.lock(path: path)
        let results = await withTaskGroup(of: Result<AuditRecord, any Error>.self) { group in
            for index in 0..<30 {
                group.addTask {
                    do {
                        return .success(try await log.recordIntent(Self.intent(user: index == 15 ? "boom@example.com" : "u\(index)@example.com")))
                    } catch {
                        return .failure(error)
                    }
                }
            }
            group.addTask {
                try? await Task.sleep(for: .milliseconds(300))
                try? blocker.inDatabase { try $0.execute(sql: "ROLLBACK") }
                return .failure(CancellationError())
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let appended = results.compactMap { try? $0.get() }
        #expect(appended.count < 30, "the refused record's batch failed")
        #expect(results.contains { if case .failure(let error) = $0 { error is DatabaseError } else { false } })

        try await other.write { db in try db.execute(sql: "DROP TRIGGER refuse_boom") }
        let next = try await log.recordIntent(Self.intent(user: "next@example.com"))
        let records = try AuditFile.records(at: path)
        #expect(records.map(\.seq) == Array(1...Int64(appended.count + 2)))
        #expect(Set(appended.map(\.seq)) == Set(records.dropFirst().dropLast().map(\.seq)))
        #expect(!records.contains { $0.user_email == "boom@example.com" })
        #expect(next.seq == records.last?.seq)
        #expect(next.prev_hash == records.dropLast().last?.hash)
        #expect(try log.verify().isIntact)
    }

    @Test("a second writer on the same file (audit reconcile appending a resolution) never forks the chain: the next batch chains after the file's head")
    func secondWriterCannotFork() async throws {
        let path = AuditFile.scratchPath()
        defer { AuditFile.remove(path) }
        let first = try AuditFile.open(scratchFile: path)
        let second = try AuditFile.open(scratchFile: path)
        #expect(try await first.recordIntent(Self.intent(user: "a@example.com")).seq == 1)
        #expect(try await second.recordIntent(Self.intent(user: "b@example.com")).seq == 2)
        // `first` still holds seq 1 as its head: seq 2 is taken, so the batch is chained again
        // after the record the file ends with, and nothing is refused.
        let appended = try await first.recordIntent(Self.intent(user: "c@example.com"))
        #expect(appended.seq == 3)
        #expect(try await first.recordIntent(Self.intent(user: "d@example.com")).seq == 4)
        let records = try AuditFile.records(at: path)
        #expect(records.map(\.user_email) == ["a@example.com", "b@example.com", "c@example.com", "d@example.com"])
        #expect(appended.prev_hash == records[1].hash)
        #expect(try first.verify().isIntact)
    }

    @Test("every field of an appended record reads back as the append returned it")
    func recordsReadBackEqual() async throws {
        let path = AuditFile.scratchPath()
        defer { AuditFile.remove(path) }
        let log = try AuditFile.open(scratchFile: path)
        let intent = try await log.recordIntent(Self.intent(user: "zoë@example.com"))
        let outcome = try await log.recordOutcome(of: intent, AuditResult(
            outcome: .ok, upstreamStatus: 201, durationMS: 3.25, keyID: "key_1", keyPrefix: "sk_live_ab", keyHash: String(repeating: "c", count: 64)))
        let unanswered = try await log.recordOutcome(of: intent, AuditResult(outcome: .timeout, upstreamStatus: nil, durationMS: 1000))
        #expect(try AuditFile.records(at: path) == [intent, outcome, unanswered])
    }

    @Test("at start, an intent left without an outcome anywhere in the log is closed as unknown, and a log without one is left alone")
    func orphansFoundAnywhere() async throws {
        let path = AuditFile.scratchPath()
        defer { AuditFile.remove(path) }
        let log = try AuditFile.open(scratchFile: path)
        let answered = AuditResult(outcome: .rejected, upstreamStatus: 404, durationMS: 2)
        let first = try await log.recordIntent(Self.intent(user: "a@example.com"))
        try await log.recordOutcome(of: first, answered)
        #expect(try await log.closeOrphans() == 0)
        #expect(try log.count() == 2)

        // An outcome whose write failed leaves its intent open in the middle of the log.
        let open = try await log.recordIntent(Self.intent(user: "b@example.com"))
        let later = try await log.recordIntent(Self.intent(user: "c@example.com"))
        try await log.recordOutcome(of: later, answered)
        #expect(try await log.closeOrphans() == 1)
        let records = try AuditFile.records(at: path)
        #expect(records.last?.intent_seq == open.seq)
        #expect(records.last?.outcome == .unknown)
        #expect(try await log.closeOrphans() == 0)
        #expect(try log.verify().isIntact)
    }

    static func intent(user: String) -> AuditIntent {
        AuditIntent(action: .update, user: user, key: "ci-key", caller: "sk_test_aa…0123abcd", client: "127.0.0.1", requestID: "req-\(user)")
    }
}
