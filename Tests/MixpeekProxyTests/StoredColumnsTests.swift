import Foundation
import GRDB
import Testing
@testable import MixpeekProxy

/// The one declaration of the audit columns (`AuditRecord.columns`, `AuditEntry.storedColumns`):
/// what the SQLite insert, the group's select list and decoding, and the CSV are made from.
@Suite("Stored columns")
struct StoredColumnsTests {
    /// A record with every field set, each to a value of its own.
    static let full = AuditRecord(
        seq: 7, kind: .outcome, intent_seq: 6, time: "2026-12-07T12:00:00.000Z", action: .rotate,
        user_email: "Alice@Example.com", key_name: "ci-key", caller: "sk_abcdefg…0a1b2c3d", client: "127.0.0.1",
        request_id: "req-7", upstream_status: 200, outcome: .ok, duration_ms: 12.5, key_id: "key_1",
        key_prefix: "sk_abcdefg", key_hash: String(repeating: "a", count: 64), prev_hash: String(repeating: "b", count: 64),
        hash: String(repeating: "c", count: 64), trace_id: String(repeating: "d", count: 32), actor_key_id: "key_0",
        actor_key_prefix: "sk_0000000", actor_key_name: "admin", actor_user: "root@example.com", upstream_audit_id: "aud_9")

    @Test("every column of audit.sqlite is in the table, and nothing else")
    func sqliteColumnsAreTheTable() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("mixpeek-columns-\(UUID().uuidString).sqlite").path
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let log = try AuditLog(path: path, logger: .init(label: "columns-test"))
        let stored = try log.queue.read { db in try db.columns(in: "audit_records").map(\.name) }
        #expect(Set(stored) == Set(AuditRecord.columns.map(\.label)))
        #expect(AuditRecord.columns.count == stored.count)
    }

    @Test("a record read into stored values and back is the same record; a missing or foreign value is refused")
    func recordRoundTrips() throws {
        let values = AuditRecord.columns.map { $0.read(Self.full) }
        var index = 0
        let back = try AuditRecord.columns.decode(into: .blank) { _ in defer { index += 1 }; return values[index] }
        #expect(back == Self.full)
        // Every field of the record is in the table: the blank one differs in each.
        #expect(AuditRecord.columns.allSatisfy { $0.read(.blank) != $0.read(Self.full) })

        func refused(_ name: String, _ value: StoredValue) -> Bool {
            (try? AuditRecord.columns.decode(into: .blank) { $0.label == name ? value : $0.read(Self.full) }) == nil
        }
        #expect(refused("time", .null))
        #expect(refused("kind", .text("rumour")))
        #expect(refused("seq", .text("7")))
        #expect(!refused("key_name", .null))
        // The refusal names the record, the column and what it held.
        let error = #expect(throws: StoredColumnError.self) {
            try AuditRecord.columns.decode(into: .blank) { $0.label == "kind" ? .text("rumour") : $0.read(Self.full) }
        }
        #expect(error?.description == "record 7: audit column kind holds 'rumour', which its record cannot hold")
    }

    @Test("the CSV header is the contract's, in its order")
    func csvHeader() {
        #expect(AuditEntry.columns == [
            "seq", "time", "action", "user_email", "key_name", "caller", "client", "request_id", "outcome",
            "upstream_status", "duration_ms", "key_id", "key_prefix", "key_hash", "finished_at", "trace_id",
            "actor_key_id", "actor_key_prefix", "actor_key_name", "actor_user", "resolution_seq", "upstream_audit_id",
        ])
        var entry = AuditEntry.blank
        entry.duration_ms = 3
        entry.upstream_status = 201
        let values = entry.values
        #expect(values[AuditEntry.columns.firstIndex(of: "duration_ms")!] == "3.000")
        #expect(values[AuditEntry.columns.firstIndex(of: "upstream_status")!] == "201")
        #expect(values[AuditEntry.columns.firstIndex(of: "key_name")!] == nil)
    }

    @Test("a reconcile finding's JSON line has every key, null where it has no value, and its seq as a number")
    func findingLineHasEveryKey() throws {
        let finding = ReconcileFinding(finding: .resolved_unknown, action: "rotate", key_id: nil, key_name: "ci-key", user_email: nil,
                                       time: "2026-12-07T12:00:00.000Z", audit_id: nil, record_seq: 12, resolution: "not_applied")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let line = String(decoding: try encoder.encode(finding), as: UTF8.self)
        #expect(line == #"{"action":"rotate","audit_id":null,"finding":"resolved_unknown","key_id":null,"key_name":"ci-key","#
            + #""record_seq":12,"resolution":"not_applied","time":"2026-12-07T12:00:00.000Z","user_email":null}"#)
        #expect(try JSONDecoder().decode(ReconcileFinding.self, from: Data(line.utf8)) == finding)
        #expect(ReconcileFinding.columns == ["finding", "action", "key_id", "key_name", "user_email", "time", "audit_id", "record_seq", "resolution"])
        #expect(finding.values == ["resolved_unknown", "rotate", nil, "ci-key", nil, "2026-12-07T12:00:00.000Z", nil, "12", "not_applied"])
    }
}
