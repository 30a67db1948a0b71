import Crypto
import Foundation
import GRDB
import MixpeekAPI
@testable import MixpeekProxy
import Testing

/// The fast formatters behind each record must write exactly what the Foundation formatters
/// they replaced wrote: hashes of logs already on disk were computed over those bytes.
@Suite("Audit record encoding")
struct AuditEncodingTests {
    @Test("record times are byte for byte what Foundation's ISO 8601 style writes")
    func timestampMatchesFoundation() {
        var dates: [Date] = [
            Date(), Date(timeIntervalSince1970: 0), Date(timeIntervalSinceReferenceDate: 0),
            Date(timeIntervalSinceReferenceDate: -0.0005), Date(timeIntervalSinceReferenceDate: 0.9999999),
            Date(timeIntervalSince1970: 951_782_400.999),  // 2000-02-29
            Date(timeIntervalSince1970: 4_107_542_399.9995),  // 2100-02-28, the last millisecond
            Date(timeIntervalSince1970: 253_402_300_799.999),  // 9999-12-31
            Date(timeIntervalSince1970: -2_208_988_800),  // 1900-01-01
            Date(timeIntervalSince1970: -12_219_292_800),  // 1582-10-15: Foundation's Julian cutover
            Date(timeIntervalSince1970: -62_135_596_800),  // year 1
            Date(timeIntervalSince1970: 253_402_300_800.5),  // year 10000
        ]
        for _ in 0..<3_000 {
            dates.append(Date(timeIntervalSince1970: .random(in: -2_300_000_000..<4_200_000_000)))
            dates.append(Date(timeIntervalSinceNow: .random(in: -10_000_000..<10_000_000)))
            let second = Double(Int.random(in: 1_700_000_000..<2_000_000_000))
            dates.append(Date(timeIntervalSince1970: second + Double(Int.random(in: 0..<1000)) / 1000))
            dates.append(Date(timeIntervalSince1970: second + .random(in: 0.9990..<1)))
        }
        for _ in 0..<500 {
            dates.append(Date())
        }
        var mismatches: [String] = []
        for date in dates {
            let expected = date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
            let written = Timestamp.string(date)
            if written != expected {
                mismatches.append("\(date.timeIntervalSinceReferenceDate): \(written), Foundation \(expected)")
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) of \(dates.count), e.g. \(mismatches.prefix(5))")
        #expect(Timestamp.string(Date(timeIntervalSince1970: 1_795_805_643.343_9)) == "2026-11-27T18:54:03.343Z")
    }

    @Test("durations encode as %.3f did, for rounded durations and for any other number a tampered row may hold")
    func durationMatchesPrintf() {
        var values: [Double] = [
            0, -0.0, 0.0005, 0.0015, 2.675, 1.0625, 0.1875, 999.9995, -1.5, -0.0004, 1e12, 1e15, 1e20,
            .nan, .infinity, -.infinity, .leastNonzeroMagnitude, .greatestFiniteMagnitude, 123_456_789.012,
        ]
        values += (0..<2_000).map { Double($0) / 1000 }
        values += (0..<64).map { Double(2 * $0 + 1) / 16 }  // exact ties of the third decimal
        for _ in 0..<5_000 {
            values.append((Double.random(in: 0..<100_000) * 1000).rounded() / 1000)  // what outcome(of:) writes
            values.append(Double.random(in: 0..<10_000))
            values.append(Double.random(in: -1_000..<0))
        }
        let mismatches = values.filter { AuditRecord.threeDecimals($0) != String(format: "%.3f", $0) }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(5).map { "\($0): \(AuditRecord.threeDecimals($0))" })")
    }

    @Test("hex is two lowercase digits a byte, as %02x wrote them")
    func hexMatchesPrintf() {
        let everyByte = (0...255).map { UInt8($0) }
        #expect(everyByte.hex == everyByte.map { String(format: "%02x", $0) }.joined())
        let digest = SHA256.hash(data: Data("mixpeek".utf8))
        #expect(digest.hex == Array(digest).map { String(format: "%02x", $0) }.joined())
        #expect([UInt8]().hex == "")
    }

    @Test("the canonical encoding is the one existing chains were hashed with")
    func canonicalEncodingUnchanged() {
        let intent = AuditRecord(
            seq: 41, kind: .intent, intent_seq: nil, time: "2026-11-27T18:54:03.343Z", action: .rotate,
            user_email: "zoë@example.com", key_name: #"build "nightly" | 3:x"#, caller: "sk_test_01…0123abcd",
            client: "::1", request_id: "req-7", upstream_status: nil, outcome: nil, duration_ms: nil,
            key_id: nil, key_prefix: nil, key_hash: nil, prev_hash: AuditRecord.genesis, hash: "")
        var outcome = AuditLog.outcome(
            of: intent, AuditResult(outcome: .ok, upstreamStatus: 200, durationMS: 12.345_678, keyID: "key_1",
                                    keyPrefix: "sk_live_ab", keyHash: String(repeating: "c", count: 64)),
            time: "2026-11-27T18:54:03.400Z")
        outcome.seq = 42
        outcome.prev_hash = String(repeating: "e", count: 64)
        var odd = outcome
        odd.duration_ms = -3.0625
        odd.key_name = "🔑"
        for record in [intent, outcome, odd] {
            #expect(record.canonicalEncoding == Self.encodingBefore(record))
            #expect(record.computeHash(key: nil) == SHA256.hash(data: Self.encodingBefore(record)).map { String(format: "%02x", $0) }.joined())
        }
    }

    @Test("a trace id is hashed after the fields records had before it; a record without one encodes byte for byte as before")
    func traceIDEncoding() {
        var record = AuditLog.intent(AuditIntent(action: .create, user: "a@b.c", key: "k", caller: "c", client: "h", requestID: "r"),
                                     time: "2026-11-27T18:54:04.000Z")
        record.seq = 3
        record.prev_hash = String(repeating: "d", count: 64)
        #expect(record.trace_id == nil)
        #expect(record.canonicalEncoding == Self.encodingBefore(record))
        var traced = record
        traced.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        let before = String(decoding: Self.encodingBefore(record), as: UTF8.self)
        let expected = before.replacingOccurrences(of: "|64:" + record.prev_hash, with: "|32:4bf92f3577b34da6a3ce929d0e0e4736|64:" + record.prev_hash)
        #expect(traced.canonicalEncoding == Data(expected.utf8))
        #expect(traced.computeHash(key: nil) != record.computeHash(key: nil), "the trace id is covered by the hash")
        // The outcome carries its intent's trace id.
        let outcome = AuditLog.outcome(of: traced, AuditResult(outcome: .ok, upstreamStatus: 200, durationMS: 1), time: record.time)
        #expect(outcome.trace_id == traced.trace_id)
    }

    @Test("an audit file written before trace ids: migrated at open, its old records still verify beside new ones that carry a trace id")
    func oldFileStillVerifies() async throws {
        let dataDir = TestProxy.makeDataDir()
        try FileManager.default.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let path = dataDir + "/audit.sqlite"
        // The file as the previous version left it: schema v1, records chained without the field.
        do {
            let queue = try DatabaseQueue(path: path)
            try AuditLog.migrator.migrate(queue, upTo: "v1")
            var head = (seq: Int64(0), hash: AuditRecord.genesis)
            for index in 1...3 {
                let draft = AuditLog.intent(AuditIntent(action: .delete, user: "old@example.com", key: "k\(index)", caller: "c",
                                                        client: "::1", requestID: "old-\(index)"), time: "2026-01-01T00:00:0\(index).000Z")
                let record = draft.chained(after: head, key: nil)
                try await queue.write { db in
                    try db.execute(sql: """
                        INSERT INTO audit_records (seq, kind, time, action, user_email, key_name, caller, client, request_id, prev_hash, hash)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """, arguments: [record.seq, record.kind.rawValue, record.time, record.action.rawValue, record.user_email,
                                         record.key_name, record.caller, record.client, record.request_id, record.prev_hash, record.hash])
                }
                head = (record.seq, record.hash)
            }
        }
        let log = try AuditLog(path: path, logger: .init(label: "audit-test"))
        let intent = try await log.recordIntent(AuditIntent(
            action: .create, user: "new@example.com", key: "n", caller: "c", client: "::1", requestID: "new-1",
            traceID: "4bf92f3577b34da6a3ce929d0e0e4736"))
        try await log.recordOutcome(of: intent, AuditResult(outcome: .ok, upstreamStatus: 200, durationMS: 2))
        let verification = try log.verify()
        #expect(verification.problem == nil && verification.records == 5, "\(verification)")
        var entries: [AuditEntry] = []
        try log.query(AuditFilter()) { entries.append($0) }
        #expect(entries.sorted { $0.seq < $1.seq }.map(\.trace_id) == [nil, nil, nil, "4bf92f3577b34da6a3ce929d0e0e4736"])
    }

    @Test("the group's JSON rows read back as the records, with user_fold, whatever the text holds")
    func chainRowsReadBack() throws {
        var odd = AuditLog.outcome(
            of: AuditLog.intent(AuditIntent(action: .update, user: "Zoë@Example.com", key: "q\"uote\\back\u{1}\n\ttab/🔑",
                                            caller: "sk_…", client: "::1", requestID: "r-1"), time: "2026-11-27T18:54:03.343Z"),
            AuditResult(outcome: .rejected, upstreamStatus: 409, durationMS: 12.5), time: "2026-11-27T18:54:03.400Z")
        odd.seq = 7
        odd.prev_hash = String(repeating: "a", count: 64)
        odd.hash = String(repeating: "b", count: 64)
        let plain = AuditLog.intent(AuditIntent(action: .create, user: "a@b.c", key: nil, caller: "c", client: "1.2.3.4",
                                                requestID: "r-2"), time: "2026-11-27T18:54:04.000Z")
        for placed in [true, false] {
            let json = ChainRows.json([odd, plain], placed: placed)
            let rows = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]])
            #expect(rows.count == 2)
            for (row, record) in zip(rows, [odd, plain]) {
                let encoded = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(record)) as? [String: Any])
                for (field, value) in encoded where placed || !["seq", "prev_hash", "hash"].contains(field) {
                    if let number = value as? NSNumber, !(value is String) {
                        #expect((row[field] as? NSNumber)?.doubleValue == number.doubleValue, "\(field)")
                    } else {
                        #expect(row[field] as? String == value as? String, "\(field)")
                    }
                }
                #expect(row["user_fold"] as? String == UserIdentity.folded(record.user_email))
                #expect(placed == (row["seq"] != nil) && placed == (row["hash"] != nil))
                #expect(row["log_middle"] as? String == String(decoding: record.logEntryMiddle, as: UTF8.self))
                #expect(Set(row.keys).subtracting(encoded.keys) == ["user_fold", "log_middle"], "no field that the record lacks")
            }
        }
    }

    @Test("a log entry is its middle between seq and prev_hash, as the group's mixpeek_log_append puts it together")
    func logEntryIsTheMiddle() {
        for actor in [nil, "key_1"] {
            var record = AuditLog.intent(AuditIntent(action: .rotate, user: "ünï@x.y", key: "k \"q\"", caller: "c", client: "h",
                                                     requestID: "r"), time: "2026-11-27T18:54:04.000Z")
            record.actor_key_id = actor
            record.seq = 98_765
            record.prev_hash = String(repeating: "a", count: 64)
            record.hash = String(repeating: "b", count: 64)
            let assembled = "{\"seq\":98765," + String(decoding: record.logEntryMiddle, as: UTF8.self)
                + ",\"prev_hash\":\"" + record.prev_hash + "\",\"hash\":\"" + record.hash + "\"}"
            #expect(Array(assembled.utf8) == record.logEntry)
        }
    }

    @Test("the canonical body is the encoding between seq and prev_hash, which the group's SQL puts together")
    func canonicalBodyIsTheMiddle() {
        var record = AuditLog.intent(AuditIntent(action: .delete, user: "ünï@x.y", key: "k", caller: "c", client: "h",
                                                 requestID: "r"), time: "2026-11-27T18:54:04.000Z")
        record.seq = 12_345
        record.prev_hash = String(repeating: "f", count: 64)
        let assembled = "mixpeek-proxy-audit-v1|5:12345" + String(decoding: record.canonicalBody, as: UTF8.self) + "|64:" + record.prev_hash
        #expect(record.canonicalEncoding == Data(assembled.utf8))
    }

    @Test("the memoised caller fingerprint is the one computed afresh, before and after the memo fills")
    func callerMemoMatchesFreshHash() {
        let callers = CallerFingerprints()
        let values = ["Bearer sk_test_0123456789abcdef", "bearer sk_test_0123456789abcdefghij", "Bearer short",
                      "Basic dXNlcjpwYXNz", "sk_live_0123456789abcdefghijk", "Bearer  sk_test_0123456789abcdefghij"]
        for value in values {
            #expect(callers.of(authorization: value) == CallerFingerprints.compute(authorization: value))
            #expect(callers.of(authorization: value) == CallerFingerprints.compute(authorization: value))
        }
        #expect(callers.of(authorization: nil) == "anonymous")
        #expect(callers.of(authorization: "") == "anonymous")
        for index in 0..<2_500 {
            let value = "Bearer sk_test_memo_\(index)_0123456789abcdef"
            #expect(callers.of(authorization: value) == CallerFingerprints.compute(authorization: value))
        }
        for value in values {
            #expect(callers.of(authorization: value) == CallerFingerprints.compute(authorization: value))
        }
    }

    /// The encoding as first written, with string interpolation and `String(format:)`.
    static func encodingBefore(_ record: AuditRecord) -> Data {
        let fields: [String?] = [
            String(record.seq), record.kind.rawValue, record.intent_seq.map(String.init), record.time, record.action.rawValue,
            record.user_email, record.key_name, record.caller, record.client, record.request_id,
            record.upstream_status.map(String.init), record.outcome?.rawValue, record.duration_ms.map { String(format: "%.3f", $0) },
            record.key_id, record.key_prefix, record.key_hash, record.prev_hash,
        ]
        var text = "mixpeek-proxy-audit-v1"
        for field in fields {
            if let field {
                text += "|\(field.utf8.count):\(field)"
            } else {
                text += "|-"
            }
        }
        return Data(text.utf8)
    }
}
