import AsyncHTTPClient
import Foundation
import GRDB
import NIOCore
import MixpeekAPI
import MixpeekFake
@testable import MixpeekProxy
import Testing

/// `audit reconcile`: the matching, the resolution records it appends, and the reading of the
/// upstream's audit log (against the fake's).
@Suite("Reconcile with the upstream's audit log")
struct ReconcileTests {
    typealias AuditFile = AuditTests.AuditFile

    static let t0 = Reconciliation.date("2026-12-01T10:00:00Z")!

    static func at(_ seconds: Double) -> String { Timestamp.string(t0 + seconds) }

    static func entry(_ seq: Int64, _ action: AuditAction, key: String?, outcome: String, at seconds: Double,
                      keyID: String? = nil, user: String = "u@example.com") -> AuditEntry {
        AuditEntry(seq: seq, time: at(seconds), action: action.rawValue, user_email: user, key_name: key, caller: "c",
                   client: "127.0.0.1", request_id: "r\(seq)", outcome: outcome, upstream_status: outcome == "ok" ? 200 : nil,
                   duration_ms: 1, key_id: keyID, key_prefix: nil, key_hash: nil, finished_at: at(seconds + 0.2))
    }

    static func event(_ id: String, _ action: String, keyID: String, name: String, at seconds: Double,
                      user: String = "u@example.com") -> UpstreamAuditEvent {
        UpstreamAuditEvent(audit_id: id, timestamp: at(seconds), resource_id: keyID, action: action, actor_id: "usr_1",
                           changes: ["user_email": user, "name": name])
    }

    let window = Reconciliation(since: t0, until: t0 + 3600, slack: 5)

    @Test("events matched by key id or by action, user, name and time give no finding; the others are around_proxy")
    func aroundProxy() {
        let entries = [
            Self.entry(1, .create, key: "a", outcome: "ok", at: 10, keyID: "key_a"),
            Self.entry(3, .delete, key: "a", outcome: "ok", at: 20),
            Self.entry(5, .delete, key: "admin-key", outcome: "rejected", at: 30),
        ]
        let events = [
            Self.event("aud_1", "api_key_created", keyID: "key_a", name: "a", at: 10.1),
            Self.event("aud_2", "api_key_revoked", keyID: "key_a", name: "a", at: 20.1),
            Self.event("aud_3", "api_key_created", keyID: "key_b", name: "b", at: 40),
            Self.event("aud_4", "api_key_revoked", keyID: "key_c", name: "c", at: 50),
            // Outside the window (read for its slack only): not reported.
            Self.event("aud_0", "api_key_created", keyID: "key_z", name: "z", at: -3),
        ]
        let findings = window.findings(events: events.reversed(), entries: entries)
        #expect(findings.map(\.finding) == [.around_proxy, .around_proxy])
        #expect(findings.map(\.audit_id) == ["aud_3", "aud_4"])
        #expect(findings.map(\.action) == ["create", "delete"])
        #expect(findings.allSatisfy { $0.fails })
    }

    @Test("an unknown with its event is applied, without one not_applied; an ok with none is unconfirmed")
    func unknownsAndUnconfirmed() {
        let entries = [
            Self.entry(1, .create, key: "a", outcome: "unknown", at: 10),
            Self.entry(3, .rotate, key: "b", outcome: "unknown", at: 20),
            Self.entry(5, .update, key: "c", outcome: "ok", at: 30),
            // Too far from its event (more than the slack): not matched.
            Self.entry(7, .create, key: "d", outcome: "ok", at: 100),
        ]
        let events = [
            Self.event("aud_1", "api_key_created", keyID: "key_a", name: "a", at: 11),
            Self.event("aud_9", "api_key_created", keyID: "key_d", name: "d", at: 200),
        ]
        let findings = window.findings(events: events, entries: entries)
        #expect(findings.map(\.finding) == [.resolved_unknown, .resolved_unknown, .unconfirmed, .unconfirmed, .around_proxy])
        #expect(findings[0].resolution == "applied" && findings[0].audit_id == "aud_1" && findings[0].key_id == "key_a")
        #expect(findings[1].resolution == "not_applied" && findings[1].audit_id == nil && findings[1].record_seq == 3)
        #expect(findings[2].record_seq == 5 && findings[3].record_seq == 7)
        #expect(!findings[0].fails && findings[2].fails)
        #expect(Reconciliation.resolution(of: findings[0]) == AuditResolution(outcome: .applied, auditID: "aud_1", keyID: "key_a"))
        #expect(Reconciliation.resolution(of: findings[1]) == AuditResolution(outcome: .notApplied, auditID: nil, keyID: nil))
    }

    @Test("a record from just before the window matches its event inside it (no around_proxy), and is not reported itself")
    func recordBeforeTheWindow() {
        let entries = [
            // A mutation recorded 3 s before the window, which reached the upstream 1 s into it.
            Self.entry(1, .create, key: "early", outcome: "ok", at: -3),
            // Recorded before the window with no event at all: the window does not report it.
            Self.entry(3, .create, key: "older", outcome: "ok", at: -60),
        ]
        var entry = entries[0]
        entry.finished_at = Self.at(1.5)
        let events = [Self.event("aud_1", "api_key_created", keyID: "key_early", name: "early", at: 1)]
        #expect(window.findings(events: events, entries: [entry, entries[1]]).isEmpty)
        #expect(Reconciliation.lookback >= 60, "records are read far enough before the window")
    }

    @Test("upstream times with microseconds, offsets or no zone are read as instants")
    func times() {
        #expect(Reconciliation.date("2026-12-01T10:00:00.123456") == Self.t0 + 0.123456)
        #expect(Reconciliation.date("2026-12-01T11:00:00+01:00") == Self.t0)
        #expect(Reconciliation.date("2026-12-01T10:00:00.000Z") == Self.t0)
        #expect(Reconciliation.date("yesterday") == nil)
    }

    @Test("a resolution is a new chained record: audit query shows the settled outcome, verify passes, no unknown is left")
    func resolutionRecord() async throws {
        let path = AuditFile.scratchPath()
        defer { AuditFile.remove(path) }
        let log = try AuditFile.open(scratchFile: path)
        let intent = try await log.recordIntent(AuditIntent(action: .create, user: "u@example.com", key: "k", caller: "c", client: "h", requestID: "r"))
        #expect(try await log.closeOrphans() == 1)
        #expect(try log.verify().unknownOutcomes == [intent.seq])
        let resolution = try await log.recordResolution(of: intent, AuditResolution(outcome: .applied, auditID: "aud_42", keyID: "key_k"))
        #expect(resolution.kind == .resolution && resolution.intent_seq == intent.seq && resolution.seq == 3)
        #expect(resolution.upstream_audit_id == "aud_42")
        var rows: [AuditEntry] = []
        try log.query(AuditFilter()) { rows.append($0) }
        #expect(rows.count == 1)
        #expect(rows.first?.outcome == "applied" && rows.first?.upstream_audit_id == "aud_42" && rows.first?.key_id == "key_k")
        #expect(rows.first?.resolution_seq == 3)
        var applied: [AuditEntry] = []
        try log.query(AuditFilter(outcome: .applied)) { applied.append($0) }
        #expect(applied.count == 1)
        let verification = try log.verify()
        #expect(verification.isIntact && verification.records == 3 && verification.unknownOutcomes.isEmpty)
        // The resolution does not look like an intent left open.
        #expect(try await log.closeOrphans() == 0)
        #expect(try log.headVerifies())
        #expect(try AuditLog(path: path, hmacKey: "another key", logger: .init(label: "audit-test")).headVerifies() == false)
    }

    @Test("the upstream audit id is hashed only when present, after a trace id field, so the two never encode alike")
    func auditIDEncoding() {
        var record = AuditLog.intent(AuditIntent(action: .create, user: "a@b.c", key: "k", caller: "c", client: "h", requestID: "r"),
                                     time: "2026-11-27T18:54:04.000Z")
        record.prev_hash = String(repeating: "d", count: 64)
        var traced = record
        traced.trace_id = "aud_1"
        var resolved = record
        resolved.upstream_audit_id = "aud_1"
        #expect(traced.canonicalEncoding != resolved.canonicalEncoding)
        #expect(resolved.canonicalBody == record.canonicalBody + Array("|-|5:aud_1".utf8))
    }

    @Test("an audit file from before resolutions is migrated (the kind's CHECK rebuilt) and its records still verify")
    func migration() async throws {
        let path = AuditFile.scratchPath()
        defer { AuditFile.remove(path) }
        do {
            let queue = try DatabaseQueue(path: path)
            try AuditLog.migrator.migrate(queue, upTo: "v2-trace-id")
            var head: (seq: Int64, hash: String) = (0, AuditRecord.genesis)
            let intent = AuditLog.intent(AuditIntent(action: .delete, user: "old@example.com", key: "k", caller: "c", client: "h", requestID: "r",
                                                     traceID: "4bf92f3577b34da6a3ce929d0e0e4736"), time: "2026-11-01T00:00:00.000Z")
            let first = intent.chained(after: head, key: nil)
            head = (first.seq, first.hash)
            try await queue.write { db in
                try db.execute(sql: """
                    INSERT INTO audit_records (seq, kind, intent_seq, time, action, user_email, key_name, caller, client, request_id,
                        prev_hash, hash, trace_id) VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [first.seq, "intent", first.time, "delete", first.user_email, first.key_name, first.caller,
                                     first.client, first.request_id, first.prev_hash, first.hash, first.trace_id])
                #expect(throws: (any Error).self) {
                    try db.execute(sql: "INSERT INTO audit_records (seq, kind, time, action, user_email, caller, client, request_id, prev_hash, hash) VALUES (9, 'resolution', '', '', '', '', '', '', '', '')")
                }
            }
        }
        let log = try AuditFile.open(scratchFile: path)
        #expect(try await log.closeOrphans() == 1)
        let intent = try #require(try log.intent(seq: 1))
        try await log.recordResolution(of: intent, AuditResolution(outcome: .notApplied, auditID: nil, keyID: nil))
        let verification = try log.verify()
        #expect(verification.isIntact && verification.records == 3)
        // Still append-only after the rebuild.
        #expect(throws: (any Error).self) { try log.queue.write { try $0.execute(sql: "DELETE FROM audit_records") } }
        #expect(throws: (any Error).self) { try log.queue.write { try $0.execute(sql: "UPDATE audit_records SET outcome = 'ok'") } }
    }

    @Test("the fake's audit log read page by page, a 429 waited out, a 403 named as the missing ADMIN permission")
    func upstreamAuditLog() async throws {
        let server = try await FakeUpstreamServer.start()
        do {
            let client = TestUpstreamCalls(base: server.url)
            for name in ["k1", "k2", "k3", "k4", "k5"] { try await client.create(name) }
            let source = UpstreamAuditLog(baseURL: server.url, token: "sk_admin_0123456789abcdefghij", pageSize: 2)
            var pages = 0
            let events = try await source.events(start: Date() - 60, end: Date() + 60) { _, _ in pages += 1 }
            #expect(events.count == 5 && pages == 3)
            #expect(events.map { $0.changes?["name"] } == ["k5", "k4", "k3", "k2", "k1"])
            #expect(events.allSatisfy { $0.action == "api_key_created" && $0.resource_type == "api_key" && $0.audit_id.hasPrefix("aud_") })

            server.fake.auditTrail.rateLimitOnce(retryAfter: 1)
            let started = Date()
            #expect(try await source.events(start: Date() - 60, end: Date() + 60).count == 5)
            #expect(Date().timeIntervalSince(started) >= 1)

            server.controls.setFault(.status(.forbidden), for: .audit)
            await #expect(throws: UpstreamAuditError.notAdmin(status: 403)) {
                _ = try await source.events(start: Date() - 60, end: Date() + 60)
            }
            #expect(UpstreamAuditError.notAdmin(status: 403).description.contains("ADMIN"))
        }
        await server.shutdown()
    }
}

/// Creates keys at the fake directly, as a script that bypasses the proxy would.
struct TestUpstreamCalls {
    let base: String

    func create(_ name: String) async throws {
        var request = HTTPClientRequest(url: "\(base)/v1/organizations/users/u%40example.com/api-keys")
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer sk_direct_0123456789abcdefghij")
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: #"{"name": "\#(name)"}"#))
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        #expect(response.status == .ok)
    }
}

extension ReconcileTests {
    @Test("the reader of the upstream's audit log never shows its token, described or dumped")
    func tokenNotDescribed() {
        let source = UpstreamAuditLog(baseURL: "http://127.0.0.1:1", token: "sk_admin_secret_0123456789abcdef")
        var dumped = ""
        dump(source, to: &dumped)
        for text in [String(describing: source), String(reflecting: source), dumped] {
            #expect(!text.contains("sk_admin_secret"), "\(text)")
        }
    }
}

/// `reconcile_interval`: the proxy runs reconcile itself and shows the last round.
@Suite("Reconcile in the proxy (reconcile_interval)")
struct ReconcileScheduleTests {
    static let adminToken = "sk_schedule_ADMIN_0f1e2d3c4b5a"

    @Test("a create made at the upstream directly is counted around the proxy on the status page and in /metrics; a create through the proxy is not; the token is shown nowhere")
    func changesAroundTheProxy() async throws {
        try await withTestProxy(configure: { $0.reconcileInterval = 1; $0.reconcileToken = Self.adminToken }) { proxy in
            #expect(try await proxy.request(.POST, TestProxy.path(), json: #"{"name": "through"}"#).status == 200)
            #expect(try await proxy.request(.POST, TestProxy.path(), json: #"{"name": "around"}"#, base: proxy.fake.url).status == 200)
            var last: [String: Any] = [:]
            let counted = try await eventually(within: 20) {
                let status = try await proxy.request(.GET, "/_proxy/status.json", token: nil)
                last = ((status.json["audit"] as? [String: Any])?["reconcile"] as? [String: Any]) ?? [:]
                return last["around_proxy"] as? Int == 1
            }
            #expect(counted, "\(last)")
            #expect(last["unconfirmed"] as? Int == 0)
            let metrics = try await proxy.request(.GET, "/_proxy/metrics", token: nil).body
            #expect(metrics.contains("\nmixpeek_proxy_changes_around_proxy 1\n"), "\(metrics)")
            let page = try await proxy.request(.GET, "/_proxy/", token: nil).body
            #expect(page.contains("changes made around the proxy"))
            for text in [page, metrics, try await proxy.request(.GET, "/_proxy/status.json", token: nil).body] {
                #expect(!text.contains(Self.adminToken))
            }
        }
    }

    @Test("reconcile_interval without the admin key in the environment stops start-up with a message naming the variable")
    func needsTheToken() throws {
        #expect(throws: ConfigError.self) {
            try ProxyConfig.load(file: nil, environment: ["MIXPEEK_PROXY_RECONCILE_INTERVAL": "60"], flags: [:])
        }
        let config = try ProxyConfig.load(file: nil, environment: ["MIXPEEK_PROXY_RECONCILE_INTERVAL": "60",
                                                                   ProxyConfig.reconcileTokenVariable: Self.adminToken], flags: [:])
        #expect(config.reconcileInterval == 60 && config.reconcileToken == Self.adminToken)
    }
}
