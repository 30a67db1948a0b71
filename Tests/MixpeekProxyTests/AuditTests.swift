import Foundation
import GRDB
import MixpeekFake
import MixpeekProxy
import NIOHTTP1
import Testing

@Suite("Audit log")
struct AuditTests {
    // MARK: What each mutation leaves behind

    @Test("each of the four mutations leaves an intent and an outcome with every field right")
    func fourActionsRecorded() async throws {
        try await withTestProxy { proxy in
            let created = try await proxy.request(.POST, TestProxy.path(), headers: ["X-Request-Id": "req-create"], json: #"{"name": "ci-key"}"#)
            let updated = try await proxy.request(.PATCH, TestProxy.path(key: "ci-key"), headers: ["X-Request-Id": "req-update"], json: #"{"description": "nightly"}"#)
            let rotated = try await proxy.request(.POST, TestProxy.path(key: "ci-key", rotate: true), headers: ["X-Request-Id": "req-rotate"])
            let deleted = try await proxy.delete(key: "ci-key")
            let responses = [created, updated, rotated, deleted]
            #expect(responses.map(\.status) == [200, 200, 200, 200])
            #expect(responses.prefix(3).map { $0.header("x-request-id") } == ["req-create", "req-update", "req-rotate"])
            let generatedID = try #require(deleted.header("x-request-id"))
            #expect(generatedID.count == 36)

            let records = try AuditFile.records(proxy.dataDir)
            #expect(records.map(\.seq) == Array(1...8))
            #expect(records.map(\.kind) == [.intent, .outcome, .intent, .outcome, .intent, .outcome, .intent, .outcome])
            #expect(records.map(\.action) == [.create, .create, .update, .update, .rotate, .rotate, .delete, .delete])
            #expect(records.map(\.request_id) == ["req-create", "req-create", "req-update", "req-update", "req-rotate", "req-rotate", generatedID, generatedID])

            let callerPattern = "^\(TestProxy.token.prefix(10))…[0-9a-f]{8}$"
            for record in records {
                #expect(matches(record.time, #"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"#), "time \(record.time) is not RFC 3339 UTC with ms")
                let instant = try #require(AuditFile.instant(record.time))
                #expect(abs(instant.timeIntervalSinceNow) < 120, "time \(record.time) is not now in UTC")
                #expect(record.user_email == "alice@example.com")
                #expect(record.key_name == "ci-key")
                #expect(matches(record.caller, callerPattern), "caller \(record.caller)")
                #expect(!record.caller.contains(TestProxy.token))
                #expect(record.client == "127.0.0.1")
            }
            #expect(Set(records.map(\.caller)).count == 1)

            for (intent, outcome) in pairs(records) {
                #expect(outcome.intent_seq == intent.seq)
                #expect(intent.intent_seq == nil && intent.outcome == nil && intent.upstream_status == nil && intent.duration_ms == nil)
                #expect(intent.key_id == nil && intent.key_prefix == nil && intent.key_hash == nil)
                #expect(outcome.outcome == .ok)
                #expect(outcome.upstream_status == 200)
                #expect((outcome.duration_ms ?? -1) >= 0)
                #expect(outcome.time >= intent.time)
            }

            for (response, outcome) in [(created, records[1]), (rotated, records[5])] {
                #expect(outcome.key_id == response.json["key_id"] as? String)
                #expect(outcome.key_prefix == response.json["key_prefix"] as? String)
                #expect(outcome.key_hash == response.json["key_hash"] as? String)
                #expect(outcome.key_id != nil && outcome.key_prefix != nil && outcome.key_hash != nil)
            }
            #expect(records[5].key_hash != records[1].key_hash, "the rotate's outcome names the new secret's hash")
            for outcome in [records[3], records[7]] {
                #expect(outcome.key_id == nil && outcome.key_prefix == nil && outcome.key_hash == nil)
            }

            let secrets = try [created, rotated].map { try #require($0.json["key"] as? String) }
            for (file, bytes) in try AuditFile.audit(proxy.dataDir) {
                for secret in secrets {
                    #expect(!bytes.contains(secret), "a plaintext key is in \(file)")
                }
                #expect(!bytes.contains(TestProxy.token), "the bearer token is in \(file)")
            }
        }
    }

    @Test("the caller fingerprint is the key's dashboard prefix plus 8 hex of its hash")
    func callerMatchesDashboard() async throws {
        try await withTestProxy { proxy in
            let created = try await proxy.create(name: "deploy")
            let key = try #require(created.json["key"] as? String)
            let prefix = try #require(created.json["key_prefix"] as? String)
            let hash = try #require(created.json["key_hash"] as? String)
            #expect(try await proxy.create(user: "bob@example.com", name: "ci", token: key).status == 200)
            #expect(try await proxy.create(user: "bob@example.com", name: "anon", token: nil).status == 401)
            let records = try AuditFile.records(proxy.dataDir)
            #expect(records.count == 6)
            #expect(records[2].caller == "\(prefix)…\(hash.prefix(8))")
            #expect(records[4].caller == "anonymous")
            #expect(records[0].caller != records[2].caller)
        }
    }

    @Test("attempts the upstream refuses are recorded as rejected with its status, 5xx as error")
    func refusedAttemptsRecorded() async throws {
        try await withTestProxy { proxy in
            #expect(try await proxy.create(name: "ci-key").status == 200)
            #expect(try await proxy.delete(key: "admin-key").status == 403)
            #expect(try await proxy.create(name: "no-token", token: nil).status == 401)
            #expect(try await proxy.rotate(key: "no-such-key").status == 404)
            #expect(try await proxy.request(.POST, TestProxy.path(), json: #"{"description": "no name"}"#).status == 422)
            proxy.controls.setFault(.status(.internalServerError), for: .update)
            #expect(try await proxy.update(key: "ci-key").status == 500)
            proxy.controls.setFault(.status(.serviceUnavailable), for: .update)
            #expect(try await proxy.update(key: "ci-key").status == 503)

            let entries = try AuditFile.entries(proxy.dataDir)
            #expect(entries.map(\.action) == ["create", "delete", "create", "rotate", "create", "update", "update"])
            #expect(entries.map(\.key_name) == ["ci-key", "admin-key", "no-token", "no-such-key", nil, "ci-key", "ci-key"])
            #expect(entries.map(\.outcome) == ["ok", "rejected", "rejected", "rejected", "rejected", "error", "error"])
            #expect(entries.map(\.upstream_status) == [200, 403, 401, 404, 422, 500, 503])
            #expect(entries.allSatisfy { $0.finished_at != nil && $0.duration_ms != nil })
            #expect(entries.allSatisfy { $0.key_id == nil || $0.outcome == "ok" }, "no key identifiers for a refused mutation")
            #expect(try AuditFile.open(proxy.dataDir).verify().isIntact)
        }
    }

    @Test("a mutation the upstream does not answer in time is recorded as timeout")
    func timeoutRecorded() async throws {
        try await withTestProxy(configure: { $0.upstreamTimeout = 0.3 }) { proxy in
            proxy.controls.setFault(.delay(.seconds(2)), for: .rotate)
            let response = try await proxy.rotate(key: "ci-key")
            #expect(response.status == 504)
            let entries = try AuditFile.entries(proxy.dataDir)
            #expect(entries.count == 1)
            #expect(entries.first?.action == "rotate")
            #expect(entries.first?.outcome == "timeout")
            #expect(entries.first?.upstream_status == nil)
            #expect((entries.first?.duration_ms ?? 0) >= 250)
        }
    }

    @Test("a mutation that cannot reach the upstream is recorded as error with no status")
    func unreachableRecorded() async throws {
        try await withTestProxy(configure: { $0.upstream = "http://127.0.0.1:1"; $0.upstreamTimeout = 1 }) { proxy in
            let response = try await proxy.delete(key: "ci-key")
            #expect(response.status == 502)
            let entries = try AuditFile.entries(proxy.dataDir)
            #expect(entries.map(\.outcome) == ["error"])
            #expect(entries.first?.upstream_status == nil)
            #expect(entries.first?.finished_at != nil)
        }
    }

    // MARK: Append-only and tamper-evident

    @Test("the database itself refuses UPDATE and DELETE on the records")
    func triggersRefuseChanges() async throws {
        try await withSampleLog { path, _ in
            let queue = try DatabaseQueue(path: path)
            let update = #expect(throws: DatabaseError.self) {
                try queue.write { try $0.execute(sql: "UPDATE audit_records SET user_email = 'mallory@example.com' WHERE seq = 1") }
            }
            #expect(update?.message?.contains("append-only") == true)
            let delete = #expect(throws: DatabaseError.self) {
                try queue.write { try $0.execute(sql: "DELETE FROM audit_records WHERE seq = 1") }
            }
            #expect(delete?.message?.contains("append-only") == true)
            let deleteAll = #expect(throws: DatabaseError.self) {
                try queue.write { try $0.execute(sql: "DELETE FROM audit_records") }
            }
            #expect(deleteAll?.message?.contains("append-only") == true)
            #expect(try AuditFile.records(at: path).count == Sample.records)
            #expect(try AuditFile.records(at: path)[0].user_email == "alice@example.com")
        }
    }

    @Test("verify names the first bad record for each kind of tampering", arguments: Tampering.allCases)
    func verifyCatchesTampering(_ tampering: Tampering) async throws {
        try await withSampleLog { path, log in
            #expect(try log.verify().isIntact)
            try await tampering.apply(to: path)
            let result = try log.verify()
            #expect(!result.isIntact)
            #expect(result.problemSeq == tampering.firstBadRecord, "\(result.problem ?? "no problem")")
            #expect(result.problem?.contains(tampering.problem) == true, "\(result.problem ?? "no problem")")
        }
    }

    @Test("records cut from the end leave a valid shorter chain, caught only by the kept head")
    func truncationNeedsKeptHead() async throws {
        try await withSampleLog { path, log in
            let before = try log.verify()
            let head = try #require(Head(before.head))
            #expect(head.seq == Int64(Sample.records))
            #expect(try log.contains(seq: head.seq, hash: head.hash))
            try AuditFile.tamper(path, "DELETE FROM audit_records WHERE seq > \(Sample.records - 2)")
            // By design the chain alone cannot tell a log cut short from one that ended there:
            // every remaining record still links to the one before. `audit verify
            // --expect-head` with a head kept elsewhere is what catches it.
            let after = try log.verify()
            #expect(after.isIntact)
            #expect(after.records == Sample.records - 2)
            #expect(try !log.contains(seq: head.seq, hash: head.hash))
            let newHead = try #require(Head(after.head))
            #expect(try log.contains(seq: newHead.seq, hash: newHead.hash))
        }
    }

    @Test("an HMAC chain verifies only with the same key")
    func hmacChain() async throws {
        try await withSampleLog(hmacKey: "audit-secret-1") { _, log in
            #expect(try log.verify(hmacKey: "audit-secret-1").isIntact)
            let unkeyed = try log.verify()
            #expect(!unkeyed.isIntact)
            #expect(unkeyed.problemSeq == 1)
            let wrongKey = try log.verify(hmacKey: "audit-secret-2")
            #expect(!wrongKey.isIntact)
            #expect(wrongKey.problemSeq == 1)
        }
    }

    // MARK: Fail closed, no gaps

    @Test("a mutation is refused with 503 and not forwarded when its intent cannot be written")
    func failsClosed() async throws {
        try await withTestProxy { proxy in
            #expect(try await proxy.create(name: "before").status == 200)
            let blocker = try AuditFile.lock(proxy.dataDir)
            let refused: TestResponse
            do {
                refused = try await proxy.create(name: "while-locked")
            } catch {
                try blocker.inDatabase { try $0.execute(sql: "ROLLBACK") }
                throw error
            }
            try blocker.inDatabase { try $0.execute(sql: "ROLLBACK") }
            #expect(refused.status == 503)
            #expect(refused.json["success"] as? Bool == false)
            #expect(refused.json["status"] as? Int == 503)
            #expect(refused.error?["type"] as? String == "audit_unavailable")
            #expect(refused.error?["code"] as? String == "mixpeek_proxy.audit_unavailable")
            #expect(proxy.controls.calls(.create) == 1, "the refused create reached the upstream")

            let after = try await proxy.create(name: "after")
            #expect(after.status == 200)
            #expect(proxy.controls.calls(.create) == 2)
            let entries = try AuditFile.entries(proxy.dataDir)
            #expect(entries.map(\.key_name) == ["before", "after"])
            #expect(try AuditFile.open(proxy.dataDir).verify().isIntact)
        }
    }

    @Test("an intent left without an outcome is closed as unknown at the next start")
    func orphanBecomesUnknown() async throws {
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        try DataFiles.createPrivateDirectory(at: dataDir)
        do {
            let log = try AuditFile.open(dataDir)
            _ = try await log.recordIntent(Sample.intent(.delete, user: "alice@example.com", key: "ci-key", requestID: "req-crashed"))
            let open = try log.verify()
            #expect(open.isIntact)
            #expect(open.unknownOutcomes == [1], "an intent with no outcome yet is listed as unknown")
        }

        let proxy = try await TestProxy.start(dataDir: dataDir)
        do {
            let records = try AuditFile.records(dataDir)
            #expect(records.count == 2)
            #expect(records.last?.kind == .outcome)
            #expect(records.last?.intent_seq == 1)
            #expect(records.last?.outcome == .unknown)
            let entries = try AuditFile.entries(dataDir)
            #expect(entries.map(\.outcome) == ["unknown"])
            #expect(entries.first?.request_id == "req-crashed")
            #expect(entries.first?.upstream_status == nil)
            let verification = try AuditFile.open(dataDir).verify()
            #expect(verification.isIntact)
            #expect(verification.unknownOutcomes == [1])

            #expect(try await proxy.create(name: "next").status == 200)
            #expect(try AuditFile.records(dataDir).map(\.seq) == [1, 2, 3, 4])
            #expect(try AuditFile.open(dataDir).verify().unknownOutcomes == [1])
        } catch {
            await proxy.stop()
            throw error
        }
        await proxy.stop()

        let restarted = try await TestProxy.start(dataDir: dataDir)
        let count = try AuditFile.records(dataDir).count
        await restarted.stop()
        #expect(count == 4, "a second start must not close the same intent again")
    }

    @Test("200 concurrent mutations give 400 contiguous records and an intact chain")
    func concurrentMutations() async throws {
        try await withTestProxy { proxy in
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<200 {
                    group.addTask {
                        try await proxy.request(.POST, TestProxy.path(), json: #"{"name": "key-\#(index)"}"#, timeout: .seconds(20)).status
                    }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(statuses.count == 200)
            #expect(statuses.allSatisfy { $0 == 200 })
            #expect(proxy.controls.calls(.create) == 200)

            let records = try AuditFile.records(proxy.dataDir)
            #expect(records.map(\.seq) == Array(1...400))
            let intents = records.filter { $0.kind == .intent }
            let outcomes = records.filter { $0.kind == .outcome }
            #expect(intents.count == 200)
            #expect(Set(intents.compactMap(\.key_name)) == Set((0..<200).map { "key-\($0)" }))
            #expect(outcomes.compactMap(\.intent_seq).sorted() == intents.map(\.seq))
            #expect(outcomes.allSatisfy { $0.outcome == .ok && $0.key_hash != nil })
            let verification = try AuditFile.open(proxy.dataDir).verify()
            #expect(verification.isIntact)
            #expect(verification.records == 400)
            #expect(verification.unknownOutcomes.isEmpty)
        }
    }

    @Test("no bearer token and no plaintext key is in any file under the data dir")
    func noSecretsOnDisk() async throws {
        let proxy = try await TestProxy.start()
        defer { proxy.removeData() }
        var secrets: [String] = [TestProxy.token, TestProxy.otherToken]
        do {
            for (name, token) in [("ci", TestProxy.token), ("deploy", TestProxy.token), ("ci", TestProxy.otherToken)] {
                let created = try await proxy.create(name: name, token: token)
                #expect(created.status == 200)
                secrets.append(try #require(created.json["key"] as? String))
                let rotated = try await proxy.rotate(key: name, token: token)
                #expect(rotated.status == 200)
                secrets.append(try #require(rotated.json["key"] as? String))
                #expect(try await proxy.list(token: token).status == 200)
            }
            let issued = try #require(secrets.last)
            #expect(try await proxy.create(user: "bob@example.com", name: "by-issued-key", token: issued).status == 200)
            #expect(try await proxy.list(user: "bob@example.com", token: issued).status == 200)
            #expect(try await proxy.rotate(key: "missing", token: TestProxy.otherToken).status == 404)

            let running = try AuditFile.everyFile(under: proxy.dataDir)
            #expect(running.keys.contains { $0.hasSuffix("audit.sqlite") })
            #expect(running.keys.contains { $0.hasSuffix("audit.sqlite-wal") })
            // The scan reads what was written: the non-secret prefix kept beside each secret is found.
            let auditBytes = try AuditFile.audit(proxy.dataDir).values
            #expect(auditBytes.contains { $0.contains(String(issued.prefix(10))) })
            expectNone(of: secrets, in: running)
        } catch {
            await proxy.stop()
            throw error
        }
        await proxy.stop()
        expectNone(of: secrets, in: try AuditFile.everyFile(under: proxy.dataDir))
    }

    // MARK: Reading the log

    @Test("every query filter selects the right mutations, oldest first")
    func queryFilters() async throws {
        try await withSampleLog { path, log in
            func seqs(_ filter: AuditFilter) throws -> [Int64] {
                var found: [Int64] = []
                try log.query(filter) { found.append($0.seq) }
                return found
            }
            let all = try AuditFile.entries(of: log)
            #expect(all.map(\.seq) == [1, 3, 5, 7, 9, 11, 13])
            #expect(all.map(\.time) == all.map(\.time).sorted())
            #expect(all.map(\.outcome) == Sample.mutations.map { $0.outcome?.rawValue ?? "unknown" })

            let records = try AuditFile.records(at: path)
            #expect(all[0].finished_at == records[1].time)
            #expect(all[0].upstream_status == 200)
            #expect(all[6].finished_at == nil && all[6].upstream_status == nil && all[6].duration_ms == nil)

            #expect(try seqs(AuditFilter(action: .rotate)) == [7, 11])
            #expect(try seqs(AuditFilter(action: .delete)) == [9, 13])
            #expect(try seqs(AuditFilter(user: "bob@example.com")) == [3, 9, 11])
            #expect(try seqs(AuditFilter(user: "nobody@example.com")) == [])
            #expect(try seqs(AuditFilter(key: "ci-key")) == [1, 5, 7, 13])
            #expect(try seqs(AuditFilter(outcome: .ok)) == [1, 3, 7])
            #expect(try seqs(AuditFilter(outcome: .rejected)) == [5])
            #expect(try seqs(AuditFilter(outcome: .error)) == [9])
            #expect(try seqs(AuditFilter(outcome: .timeout)) == [11])
            #expect(try seqs(AuditFilter(outcome: .unknown)) == [13])
            #expect(try seqs(AuditFilter(limit: 2)) == [1, 3])
            #expect(try seqs(AuditFilter(limit: 0)) == [])
            #expect(try seqs(AuditFilter(action: .rotate, user: "alice@example.com")) == [7])
            #expect(try seqs(AuditFilter(user: "bob@example.com", limit: 2)) == [3, 9])

            let middle = all[3].time
            #expect(try seqs(AuditFilter(since: middle)) == [7, 9, 11, 13], "since is inclusive")
            #expect(try seqs(AuditFilter(until: middle)) == [1, 3, 5], "until is exclusive")
            #expect(try seqs(AuditFilter(since: all[1].time, until: all[5].time)) == [3, 5, 7, 9])
            #expect(try seqs(AuditFilter(since: "2000-01-01")) == all.map(\.seq))
            #expect(try seqs(AuditFilter(until: "2000-01-01")) == [])

            // A bound to the second or the minute, with or without `Z`, is the instant it names,
            // not a string that happens to sort after every millisecond of that second.
            let second = String(middle.prefix(19))
            let minute = String(middle.prefix(16))
            for (bounds, instant) in [([second + "Z", second, second + ".0Z", second + ".000Z"], second + ".000Z"),
                                      ([minute + "Z", minute], minute + ":00.000Z")] {
                let from = all.filter { $0.time >= instant }.map(\.seq)
                let before = all.filter { $0.time < instant }.map(\.seq)
                #expect(from.contains(7))
                for bound in bounds {
                    #expect(try seqs(AuditFilter(since: bound)) == from, "since \(bound)")
                    #expect(try seqs(AuditFilter(until: bound)) == before, "until \(bound)")
                }
            }
        }
    }

    @Test("audit query prints table, json, jsonl and csv", .enabled(if: CLI.binary != nil, CLI.missing))
    func queryFormats() async throws {
        try await withSampleLog { path, log in
            let dataDir = URL(fileURLWithPath: path).deletingLastPathComponent().path
            let entries = try AuditFile.entries(of: log)

            let json = try await CLI.run(["audit", "query", "--data-dir", dataDir, "--format", "json"])
            #expect(json.status == 0, "\(json.errors)")
            let array = try #require(try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [[String: Any]])
            #expect(array.count == entries.count)
            #expect(array.compactMap { $0["seq"] as? Int } == entries.map { Int($0.seq) })
            #expect(array.compactMap { $0["outcome"] as? String } == entries.map(\.outcome))
            #expect(array.first?["user_email"] as? String == "alice@example.com")

            let jsonl = try await CLI.run(["audit", "query", "--data-dir", dataDir, "--format", "jsonl"])
            #expect(jsonl.status == 0, "\(jsonl.errors)")
            let lines = jsonl.output.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
            #expect(lines.count == entries.count)
            #expect(jsonl.output.hasSuffix("\n"))
            for (line, entry) in zip(lines, entries) {
                let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                #expect(object?["seq"] as? Int == Int(entry.seq))
                #expect(object?["key_name"] as? String == entry.key_name)
            }

            let csv = try await CLI.run(["audit", "query", "--data-dir", dataDir, "--format", "csv"])
            #expect(csv.status == 0, "\(csv.errors)")
            let rows = parseCSV(csv.output)
            #expect(rows.first == AuditEntry.columns)
            #expect(rows.count == entries.count + 1)
            #expect(rows.dropFirst().allSatisfy { $0.count == AuditEntry.columns.count })
            #expect(rows.dropFirst().map { $0[0] } == entries.map { String($0.seq) })
            let keyColumn = try #require(AuditEntry.columns.firstIndex(of: "key_name"))
            #expect(rows.dropFirst().map { $0[keyColumn] } == entries.map { CLI.spreadsheetSafe($0.key_name ?? "") })
            #expect(csv.output.contains(#""build ""nightly"", v2""#), "a field with a comma and quotes is quoted, quotes doubled")
            #expect(csv.output.contains(",'=SUM(A1),"), "a formula-like field is defused")

            let table = try await CLI.run(["audit", "query", "--data-dir", dataDir, "--format", "table"])
            #expect(table.status == 0, "\(table.errors)")
            let tableLines = table.output.split(separator: "\n").map(String.init)
            #expect(tableLines.count == entries.count + 1)
            let header = tableLines.first?.split(separator: " ").map(String.init)
            #expect(header == ["SEQ", "TIME", "ACTION", "USER", "KEY", "OUTCOME", "STATUS", "CALLER", "CLIENT", "REQUEST_ID"])
            #expect(tableLines.dropFirst().map { $0.split(separator: " ").first.map(String.init) } == entries.map { String($0.seq) })
        }
    }

    @Test("audit query applies its filters and refuses a bad time", .enabled(if: CLI.binary != nil, CLI.missing))
    func queryCommandFilters() async throws {
        try await withSampleLog { path, log in
            let dataDir = URL(fileURLWithPath: path).deletingLastPathComponent().path
            func seqs(_ options: [String]) async throws -> [Int] {
                let result = try await CLI.run(["audit", "query", "--data-dir", dataDir, "--format", "jsonl"] + options)
                #expect(result.status == 0, "\(options): \(result.errors)")
                return result.output.split(separator: "\n").compactMap {
                    (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["seq"] as? Int
                }
            }
            #expect(try await seqs(["--action", "rotate"]) == [7, 11])
            #expect(try await seqs(["--user", "bob@example.com", "--outcome", "timeout"]) == [11])
            #expect(try await seqs(["--key", "ci-key", "--limit", "2"]) == [1, 5])
            #expect(try await seqs(["--outcome", "unknown"]) == [13])
            #expect(try await seqs(["--since", "2000-01-01", "--until", "2999-01-01"]) == [1, 3, 5, 7, 9, 11, 13])
            #expect(try await seqs(["--until", "2000-01-01"]) == [])
            let all = try AuditFile.entries(of: log)
            let second = String(all[3].time.prefix(19))
            let from = all.filter { $0.time >= second + ".000Z" }.map { Int($0.seq) }
            let before = all.filter { $0.time < second + ".000Z" }.map { Int($0.seq) }
            #expect(try await seqs(["--since", second + "Z"]) == from)
            #expect(try await seqs(["--until", second + "Z"]) == before)

            let empty = try await CLI.run(["audit", "query", "--data-dir", dataDir, "--until", "2000-01-01"])
            #expect(empty.output.contains("(no matching mutations)"))
            let badTime = try await CLI.run(["audit", "query", "--data-dir", dataDir, "--since", "yesterday"])
            #expect(badTime.status != 0)
            let badAction = try await CLI.run(["audit", "query", "--data-dir", dataDir, "--action", "drop"])
            #expect(badAction.status != 0)
        }
    }

    @Test("audit verify exits 0 when intact and 1 after tampering or with a lost head", .enabled(if: CLI.binary != nil, CLI.missing))
    func verifyCommand() async throws {
        try await withSampleLog { path, _ in
            let dataDir = URL(fileURLWithPath: path).deletingLastPathComponent().path
            let intact = try await CLI.run(["audit", "verify", "--data-dir", dataDir])
            #expect(intact.status == 0, "\(intact.output)\(intact.errors)")
            #expect(intact.output.contains("intact: \(Sample.records) records"))
            #expect(intact.output.contains("unknown outcome"), "the open intent is listed")
            let head = try #require(Self.head(in: intact.output))

            let sameHead = try await CLI.run(["audit", "verify", "--data-dir", dataDir, "--expect-head", head])
            #expect(sameHead.status == 0, "\(sameHead.output)")

            try AuditFile.tamper(path, "DELETE FROM audit_records WHERE seq = \(Sample.records)")
            let shorter = try await CLI.run(["audit", "verify", "--data-dir", dataDir])
            #expect(shorter.status == 0, "a truncated chain is still a valid chain")
            let lostHead = try await CLI.run(["audit", "verify", "--data-dir", dataDir, "--expect-head", head])
            #expect(lostHead.status == 1)
            #expect(lostHead.output.contains("BROKEN"))

            try AuditFile.tamper(path, "UPDATE audit_records SET client = '10.0.0.9' WHERE seq = 3")
            let edited = try await CLI.run(["audit", "verify", "--data-dir", dataDir])
            #expect(edited.status == 1)
            #expect(edited.output.contains("BROKEN"))
            #expect(edited.output.contains("record 3"))
        }
    }

    @Test("audit verify exits 2 and says why on stderr when a record cannot be read; never 0", .enabled(if: CLI.binary != nil, CLI.missing))
    func verifyCommandUnreadable() async throws {
        try await withSampleLog { path, _ in
            let dataDir = URL(fileURLWithPath: path).deletingLastPathComponent().path
            // A kind no record can hold, past the CHECK that keeps it out.
            try AuditFile.tamper(path) { db in
                try db.execute(sql: "PRAGMA ignore_check_constraints = ON")
                try db.execute(sql: "UPDATE audit_records SET kind = 'rumour' WHERE seq = 2")
            }
            let unreadable = try await CLI.run(["audit", "verify", "--data-dir", dataDir])
            #expect(unreadable.status == 2, "\(unreadable.output)\(unreadable.errors)")
            #expect(unreadable.errors.hasPrefix("audit verify failed: "), "\(unreadable.errors)")
            #expect(!unreadable.output.contains("intact"))
        }
    }

    @Test("audit verify checks an HMAC chain with the key from the environment", .enabled(if: CLI.binary != nil, CLI.missing))
    func verifyCommandWithHMAC() async throws {
        try await withSampleLog(hmacKey: "audit-secret-1") { path, _ in
            let dataDir = URL(fileURLWithPath: path).deletingLastPathComponent().path
            let arguments = ["audit", "verify", "--data-dir", dataDir]
            let sameKey = try await CLI.run(arguments, hmacKey: "audit-secret-1")
            let noKey = try await CLI.run(arguments)
            let otherKey = try await CLI.run(arguments, hmacKey: "audit-secret-2")
            #expect(sameKey.status == 0, "\(sameKey.output)")
            #expect(noKey.status == 1, "\(noKey.output)")
            #expect(otherKey.status == 1, "\(otherKey.output)")
        }
    }

    /// The `seq:hash` head printed by `audit verify`.
    static func head(in output: String) -> String? {
        guard let range = output.range(of: "head ") else { return nil }
        return String(output[range.upperBound...].prefix { !$0.isWhitespace })
    }
}

// MARK: - Tampering

extension AuditTests {
    /// The ways someone with write access to the file could alter the log, and where verify must
    /// see the first break. The sample has 13 records: 7 intents (odd seq) and 6 outcomes.
    enum Tampering: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case fieldEdited
        case rowDeletedInTheMiddle
        case copyAppendedWithMadeUpHash
        case rowInsertedWithWrongLink
        case rowForgedIntoTheMiddle
        case rowsSwapped

        var testDescription: String { rawValue }

        var firstBadRecord: Int64 {
            switch self {
            case .fieldEdited: 4
            case .rowDeletedInTheMiddle: 5
            case .copyAppendedWithMadeUpHash: Int64(Sample.records + 1)
            case .rowInsertedWithWrongLink: 5
            // The forged record links and hashes correctly (a plain SHA-256 chain can be
            // recomputed by anyone); the record pushed down behind it is the first to break.
            case .rowForgedIntoTheMiddle: 6
            case .rowsSwapped: 3
            }
        }

        var problem: String {
            switch self {
            case .fieldEdited, .copyAppendedWithMadeUpHash: "was altered"
            case .rowDeletedInTheMiddle: "is missing"
            case .rowInsertedWithWrongLink, .rowForgedIntoTheMiddle, .rowsSwapped: "does not follow"
            }
        }

        func apply(to path: String) async throws {
            switch self {
            case .fieldEdited:
                try AuditFile.tamper(path, "UPDATE audit_records SET upstream_status = 204 WHERE seq = 4")
            case .rowDeletedInTheMiddle:
                try AuditFile.tamper(path, "DELETE FROM audit_records WHERE seq = 5")
            case .copyAppendedWithMadeUpHash:
                let records = try AuditFile.records(at: path)
                var copy = try #require(records.last)
                copy.seq += 1
                copy.prev_hash = copy.hash
                copy.hash = String(repeating: "ab", count: 32)
                try AuditFile.tamper(path) { try copy.insert($0) }
            case .rowInsertedWithWrongLink:
                var extra = try AuditFile.records(at: path)[4]
                extra.user_email = "mallory@example.com"
                extra.prev_hash = String(repeating: "f", count: 64)
                try AuditFile.tamper(path) { db in
                    try Self.makeRoom(at: extra.seq, db)
                    try extra.insert(db)
                }
            case .rowForgedIntoTheMiddle:
                // Build the forgery the way an attacker would: replay the chain up to record 4 in
                // a copy and let the real code append the fake record 5 there.
                let scratch = AuditFile.scratchPath()
            defer { AuditFile.remove(scratch) }
                try DatabaseQueue(path: path).backup(to: DatabaseQueue(path: scratch))
                // The log's tree would refuse a second entry 4: the attacker cuts it back too.
                try AuditFile.tamper(scratch) { db in
                    try db.execute(sql: "DELETE FROM audit_records WHERE seq >= 5")
                    try db.execute(sql: "DROP TRIGGER log_subtrees_no_delete")
                    try db.execute(sql: "DELETE FROM log_subtrees WHERE (idx + 1) << level > 4")
                }
                let forged = try await AuditFile.open(scratchFile: scratch)
                    .recordIntent(Sample.intent(.delete, user: "alice@example.com", key: "prod-key", requestID: "forged"))
                #expect(forged.seq == 5)
                try AuditFile.tamper(path) { db in
                    try Self.makeRoom(at: 5, db)
                    try forged.insert(db)
                }
            case .rowsSwapped:
                let records = try AuditFile.records(at: path)
                var third = records[4]
                var fifth = records[2]
                third.seq = 3
                fifth.seq = 5
                try AuditFile.tamper(path) { db in
                    try third.update(db)
                    try fifth.update(db)
                }
            }
        }

        /// Renumbers every record from `seq` on one place down.
        private static func makeRoom(at seq: Int64, _ db: Database) throws {
            try db.execute(sql: "UPDATE audit_records SET seq = seq + 1000000 WHERE seq >= ?", arguments: [seq])
            try db.execute(sql: "UPDATE audit_records SET seq = seq - 999999 WHERE seq >= 1000000")
        }
    }

    // MARK: - A known log

    /// A log written with AuditLog directly, covering every action and every outcome.
    enum Sample {
        struct Mutation {
            var action: AuditAction
            var user: String
            var key: String
            var outcome: AuditOutcome?
            var status: Int?
        }

        /// Intents get seq 1, 3, ..., 13; the last is left without an outcome.
        static let mutations = [
            Mutation(action: .create, user: "alice@example.com", key: "ci-key", outcome: .ok, status: 200),
            Mutation(action: .create, user: "bob@example.com", key: #"build "nightly", v2"#, outcome: .ok, status: 200),
            Mutation(action: .update, user: "alice@example.com", key: "ci-key", outcome: .rejected, status: 422),
            Mutation(action: .rotate, user: "alice@example.com", key: "ci-key", outcome: .ok, status: 200),
            Mutation(action: .delete, user: "bob@example.com", key: "=SUM(A1)", outcome: .error, status: 500),
            Mutation(action: .rotate, user: "bob@example.com", key: #"build "nightly", v2"#, outcome: .timeout, status: nil),
            Mutation(action: .delete, user: "alice@example.com", key: "ci-key", outcome: nil, status: nil),
        ]

        static let records = 13

        static func intent(_ action: AuditAction, user: String, key: String?, requestID: String) -> AuditIntent {
            AuditIntent(action: action, user: user, key: key, caller: "sk_test_aa…0123abcd", client: "127.0.0.1", requestID: requestID)
        }

        /// Writes the sample to a new log at `path`, a few milliseconds between mutations so that
        /// every intent has its own time.
        static func write(to path: String, hmacKey: String? = nil) async throws -> AuditLog {
            let log = try AuditLog(path: path, hmacKey: hmacKey, logger: .init(label: "audit-test"))
            for (index, mutation) in mutations.enumerated() {
                let recorded = try await log.recordIntent(intent(mutation.action, user: mutation.user, key: mutation.key, requestID: "req-\(index + 1)"))
                if let outcome = mutation.outcome {
                    let result = AuditResult(
                        outcome: outcome, upstreamStatus: mutation.status, durationMS: 12.5,
                        keyID: outcome == .ok ? "key_\(index)" : nil, keyPrefix: outcome == .ok ? "sk_live_ab" : nil,
                        keyHash: outcome == .ok ? String(repeating: "c", count: 64) : nil)
                    try await log.recordOutcome(of: recorded, result)
                }
                try await Task.sleep(for: .milliseconds(3))
            }
            return log
        }
    }

    /// Runs `body` with the sample log in a fresh data dir (`audit.sqlite` in it), then removes it.
    func withSampleLog(hmacKey: String? = nil, _ body: (String, AuditLog) async throws -> Void) async throws {
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        try DataFiles.createPrivateDirectory(at: dataDir)
        let path = dataDir + "/audit.sqlite"
        let log = try await Sample.write(to: path, hmacKey: hmacKey)
        try await body(path, log)
    }

    /// A `seq:hash` head as `audit verify` prints it.
    struct Head {
        var seq: Int64
        var hash: String

        init?(_ text: String) {
            let parts = text.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let seq = Int64(parts[0]) else { return nil }
            self.seq = seq
            self.hash = String(parts[1])
        }
    }

    // MARK: - Reading and altering the file behind the log's back

    enum AuditFile {
        static func path(_ dataDir: String) -> String { dataDir + "/audit.sqlite" }

        static func open(_ dataDir: String) throws -> AuditLog {
            try AuditLog(path: path(dataDir), logger: .init(label: "audit-test"))
        }

        static func open(scratchFile: String) throws -> AuditLog {
            try AuditLog(path: scratchFile, logger: .init(label: "audit-test"))
        }

        /// A new file name in the temporary directory.
        static func scratchPath() -> String {
            FileManager.default.temporaryDirectory.appendingPathComponent("mixpeek-audit-scratch-\(UUID().uuidString).sqlite").path
        }

        static func remove(_ file: String) {
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: file + suffix) }
        }

        static func records(_ dataDir: String) throws -> [AuditRecord] {
            try records(at: path(dataDir))
        }

        static func records(at path: String) throws -> [AuditRecord] {
            try DatabaseQueue(path: path).read { db in
                try AuditRecord.fetchAll(db, sql: "SELECT * FROM audit_records ORDER BY seq")
            }
        }

        static func entries(_ dataDir: String) throws -> [AuditEntry] {
            try entries(of: open(dataDir))
        }

        static func entries(of log: AuditLog, _ filter: AuditFilter = AuditFilter()) throws -> [AuditEntry] {
            var entries: [AuditEntry] = []
            try log.query(filter) { entries.append($0) }
            return entries
        }

        /// Runs SQL on the file with the append-only triggers dropped, as an attacker would.
        static func tamper(_ path: String, _ sql: String) throws {
            try tamper(path) { try $0.execute(sql: sql) }
        }

        static func tamper(_ path: String, _ change: (Database) throws -> Void) throws {
            try DatabaseQueue(path: path).write { db in
                try db.execute(sql: "DROP TRIGGER IF EXISTS audit_records_no_update")
                try db.execute(sql: "DROP TRIGGER IF EXISTS audit_records_no_delete")
                try change(db)
            }
        }

        /// Takes the write lock of the audit file from another connection and keeps it until
        /// the caller rolls back: tests run as root, so file modes would not stop a write.
        static func lock(_ dataDir: String) throws -> DatabaseQueue {
            try lock(path: path(dataDir))
        }

        static func lock(path: String) throws -> DatabaseQueue {
            var configuration = Configuration()
            configuration.busyMode = .immediateError
            configuration.allowsUnsafeTransactions = true
            let queue = try DatabaseQueue(path: path, configuration: configuration)
            try queue.inDatabase { try $0.execute(sql: "BEGIN EXCLUSIVE") }
            return queue
        }

        /// The bytes of the audit file and its -wal and -shm companions.
        static func audit(_ dataDir: String) throws -> [String: Data] {
            try everyFile(under: dataDir).filter { $0.key.contains("audit.sqlite") }
        }

        /// Every regular file under `dir`, recursively, by path.
        static func everyFile(under dir: String) throws -> [String: Data] {
            var files: [String: Data] = [:]
            let root = URL(fileURLWithPath: dir)
            guard let walker = FileManager.default.enumerator(at: root, includingPropertiesForKeys: [.isRegularFileKey]) else { return files }
            for case let url as URL in walker where try url.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile == true {
                files[url.path] = try Data(contentsOf: url)
            }
            return files
        }

        static func instant(_ time: String) -> Date? {
            try? Date(time, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
        }
    }
}

private func expectNone(of secrets: [String], in files: [String: Data], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(!files.isEmpty, sourceLocation: sourceLocation)
    for (file, bytes) in files {
        for secret in secrets where bytes.contains(secret) {
            Issue.record("a secret (\(secret.prefix(10))…) is in \(file)", sourceLocation: sourceLocation)
        }
    }
}

private extension Data {
    func contains(_ text: String) -> Bool {
        range(of: Data(text.utf8)) != nil
    }
}

/// Intent and outcome pairs of a log where each outcome follows its intent.
private func pairs(_ records: [AuditRecord]) -> [(AuditRecord, AuditRecord)] {
    stride(from: 0, to: records.count - 1, by: 2).map { (records[$0], records[$0 + 1]) }
}

private func matches(_ text: String, _ pattern: String) -> Bool {
    (try? Regex(pattern).wholeMatch(in: text)) != nil
}

/// RFC 4180: fields separated by commas, quoted when they hold commas, quotes or line breaks,
/// quotes inside doubled; records end with CRLF or LF.
private func parseCSV(_ text: String) -> [[String]] {
    var rows: [[String]] = []
    var row: [String] = []
    var field = ""
    var quoted = false
    var characters = text.makeIterator()
    var pending = characters.next()
    while let character = pending {
        pending = characters.next()
        if quoted {
            if character == "\"" {
                if pending == "\"" {
                    field.append("\"")
                    pending = characters.next()
                } else {
                    quoted = false
                }
            } else {
                field.append(character)
            }
            continue
        }
        switch character {
        case "\"": quoted = true
        case ",": row.append(field); field = ""
        case "\n", "\r\n":
            row.append(field); field = ""
            rows.append(row); row = []
        default: field.append(character)
        }
    }
    if !field.isEmpty || !row.isEmpty { row.append(field); rows.append(row) }
    return rows
}

// MARK: - The built command line

extension AuditTests {
    enum CLI {
        /// `.build/debug/mixpeek-proxy` of this package, when it has been built.
        static let binary: URL? = {
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            let binary = root.appendingPathComponent(".build/debug/mixpeek-proxy")
            return FileManager.default.isExecutableFile(atPath: binary.path) ? binary : nil
        }()

        static let missing: Comment = "skipped: .build/debug/mixpeek-proxy is not built; run `swift build` first"

        /// What the CSV writer makes of a field that a spreadsheet would run as a formula.
        static func spreadsheetSafe(_ value: String) -> String {
            value.first.map { "=+-@".contains($0) } == true ? "'" + value : value
        }

        /// Runs the CLI with a bounded wait; `hmacKey` sets MIXPEEK_PROXY_AUDIT_HMAC_KEY.
        static func run(_ arguments: [String], hmacKey: String? = nil) async throws -> (status: Int32, output: String, errors: String) {
            let executable = try #require(binary)
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("mixpeek-cli-\(UUID().uuidString)")
            let outputFile = scratch.appendingPathExtension("out")
            let errorFile = scratch.appendingPathExtension("err")
            defer {
                try? FileManager.default.removeItem(at: outputFile)
                try? FileManager.default.removeItem(at: errorFile)
            }
            _ = FileManager.default.createFile(atPath: outputFile.path, contents: nil)
            _ = FileManager.default.createFile(atPath: errorFile.path, contents: nil)
            let output = try FileHandle(forWritingTo: outputFile)
            let errors = try FileHandle(forWritingTo: errorFile)
            defer {
                try? output.close()
                try? errors.close()
            }

            let process = Process()
            process.executableURL = executable
            process.arguments = arguments
            var environment = ProcessInfo.processInfo.environment
            environment["MIXPEEK_PROXY_AUDIT_HMAC_KEY"] = hmacKey
            process.environment = environment
            process.standardOutput = output
            process.standardError = errors
            try process.run()
            let deadline = ContinuousClock.now + .seconds(20)
            while process.isRunning {
                if ContinuousClock.now > deadline {
                    process.terminate()
                    Issue.record("mixpeek-proxy \(arguments.joined(separator: " ")) did not finish within 20 s")
                    break
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            process.waitUntilExit()
            return (process.terminationStatus, try String(contentsOf: outputFile, encoding: .utf8), try String(contentsOf: errorFile, encoding: .utf8))
        }
    }
}

@Suite("Audit durability")
struct AuditDurabilityTests {
    @Test("the audit connection commits with synchronous=FULL, so an intent is on disk before forwarding")
    func synchronousFull() async throws {
        try await withTestProxy { proxy in
            _ = try await proxy.create(name: "durable")
            let log = try #require(proxy.app.audit)
            #expect(try log.synchronousMode() == 2)
        }
    }
}
