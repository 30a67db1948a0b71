import AsyncHTTPClient
import Foundation
import Logging
import MixpeekAPI
import MixpeekFake
import MixpeekHTTP
@testable import MixpeekProxy
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

/// "Nothing answered is left unrecorded, and no request is misread": each test here failed on
/// the code before it, by the way the issue reproduced it.
@Suite("Nothing answered is left unrecorded, no request is misread")
struct TrustTests {
    static let auth = "Authorization: Bearer \(TestProxy.token)\r\n"
    static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    /// The records in the proxy's audit file, read as `audit query` reads them.
    static func auditEntries(_ dataDir: String) throws -> [AuditEntry] {
        let log = try AuditLog.openForReading(path: dataDir + "/audit.sqlite", logger: quiet)
        var entries: [AuditEntry] = []
        try log.query(AuditFilter()) { entries.append($0) }
        return entries
    }

    /// One request over a fresh raw connection: the status line's code and the whole text.
    static func raw(_ proxy: TestProxy, _ text: String) async throws -> (status: Int?, text: String, closed: Bool) {
        let reply = try await rawExchange(port: proxy.app.port, text, timeout: .seconds(2))
        let status = reply.text.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) }
        return (status, reply.text, reply.closed)
    }

    // MARK: 1. Request targets

    @Test("a fragment in the target is refused with 400 before anything is forwarded or recorded: a create and a delete")
    func fragmentHidesNoMutation() async throws {
        try await withTestProxy { proxy in
            let create = try await Self.raw(proxy, """
                POST /v1/organizations/users/a%40b.com/api-keys#x HTTP/1.1\r
                Host: x\r
                \(Self.auth)Content-Type: application/json\r
                Content-Length: 16\r
                Connection: close\r
                \r
                {"name": "frag"}
                """)
            #expect(create.status == 400, "got: \(create.text.prefix(300))")
            #expect(create.text.contains("fragment"))
            let delete = try await Self.raw(proxy, "DELETE /v1/organizations/users/a%40b.com/api-keys/frag-key#decoy HTTP/1.1\r\nHost: x\r\n\(Self.auth)Connection: close\r\n\r\n")
            #expect(delete.status == 400)
            #expect(proxy.controls.totalCalls == 0, "nothing may be forwarded")
            #expect(try Self.auditEntries(proxy.dataDir).isEmpty, "nothing may be recorded")
        }
    }

    @Test("a target byte outside RFC 3986's path and query grammar, a bad escape, or an escaped NUL, CR or LF: 400, never forwarded")
    func targetGrammar() async throws {
        try await withTestProxy { proxy in
            let targets = [
                "/v1/collections%00x", "/v1/collections%0d%0aX-Injected:%201", "/v1/collections%0A", "/v1/collections%zz",
                "/v1/collections%4", "/v1/col[lections]", "/v1/collections\"", "/v1/collections{x}", "/v1/collections|x",
                "/v1/organizations/users/a%40b.com/api-keys?include_revoked=true#top",
            ]
            for target in targets {
                let reply = try await Self.raw(proxy, "GET \(target) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Connection: close\r\n\r\n")
                #expect(reply.status == 400, "\(target): \(reply.text.prefix(200))")
                #expect(reply.text.contains("\"success\":false"), "\(target)")
            }
            #expect(proxy.controls.totalCalls == 0, "nothing may be forwarded")
            // What is allowed still goes through: sub-delims, `:@`, an escaped space.
            let fine = try await Self.raw(proxy, "GET /v1/collections/a:b@c!$&'()*+,;=%20?x=1 HTTP/1.1\r\nHost: x\r\n\(Self.auth)Connection: close\r\n\r\n")
            #expect(fine.status != 400, "\(fine.text)")
        }
    }

    // MARK: 4. Bytes, not Unicode equivalence

    @Test("two bearer tokens Swift finds equal (é and e + U+0301) are two credentials: no shared list, two audit callers")
    func tokensAreBytes() async throws {
        try await withTestProxy { proxy in
            let composed = "sk_test_caf\u{E9}aaaaaaaaaaaaaaaaaaaaaaaa"
            let decomposed = "sk_test_cafe\u{301}aaaaaaaaaaaaaaaaaaaaaaaa"
            #expect(composed == decomposed, "the premise: Swift's String finds them equal")
            func list(_ token: String) async throws -> (status: Int?, text: String, closed: Bool) {
                try await Self.raw(proxy, "GET /v1/organizations/users/a%40b.com/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nConnection: close\r\n\r\n")
            }
            let first = try await list(composed)
            #expect(first.text.contains("X-Cache: MISS"), "\(first.text)")
            let second = try await list(decomposed)
            #expect(second.text.contains("X-Cache: MISS"), "another credential must not get the first one's list: \(second.text.prefix(400))")
            #expect(proxy.controls.calls(.list) == 2)
            for (token, name) in [(composed, "k1"), (decomposed, "k2")] {
                let body = #"{"name": "\#(name)"}"#
                _ = try await Self.raw(proxy, "POST /v1/organizations/users/a%40b.com/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
            }
            let callers = Set(try Self.auditEntries(proxy.dataDir).map(\.caller))
            #expect(callers.count == 2, "two tokens, two callers: \(callers)")
        }
    }

    @Test("two users Swift finds equal (é@ and e + U+0301@, two paths to the upstream) never share a cached list")
    func usersAreBytes() async throws {
        try await withTestProxy { proxy in
            let first = try await proxy.list(user: "caf%C3%A9%40example.com")
            #expect(first.header("X-Cache") == "MISS")
            let again = try await proxy.list(user: "caf%C3%A9%40example.com")
            #expect(again.header("X-Cache") == "HIT")
            let other = try await proxy.list(user: "cafe%CC%81%40example.com")
            #expect(other.header("X-Cache") == "MISS", "another user's list must not be served")
            #expect(proxy.controls.calls(.list) == 2)
        }
    }

    // MARK: 5. One Authorization, one Host

    @Test("two Authorization lines, or two Host lines: 400 before anything is forwarded")
    func duplicateCredentialFields() async throws {
        try await withTestProxy { proxy in
            let twoCredentials = try await Self.raw(proxy, "GET /v1/organizations/users/a%40b.com/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(TestProxy.token)\r\nAuthorization: Bearer \(TestProxy.otherToken)\r\n\r\n")
            #expect(twoCredentials.status == 400, "\(twoCredentials.text)")
            #expect(twoCredentials.text.contains("Authorization"))
            let twoHosts = try await Self.raw(proxy, "GET /v1/collections HTTP/1.1\r\nHost: x\r\nHost: y\r\n\(Self.auth)\r\n")
            #expect(twoHosts.status == 400, "\(twoHosts.text)")
            let deleteWithTwo = try await Self.raw(proxy, "DELETE /v1/organizations/users/a%40b.com/api-keys/k HTTP/1.1\r\nHost: x\r\nauthorization: Bearer a\r\nAUTHORIZATION: Bearer b\r\n\r\n")
            #expect(deleteWithTwo.status == 400)
            #expect(proxy.controls.totalCalls == 0)
            #expect(try Self.auditEntries(proxy.dataDir).isEmpty)
        }
    }

    // MARK: 6. RFC 9111 as a shared cache

    /// A proxy in front of a stub answering every list with `cacheControl`; the X-Cache of two
    /// lists in a row and how many reached the stub.
    static func twoLists(cacheControl: String, ignore: Bool = false, between: (@Sendable () -> Void)? = nil) async throws -> [String?] {
        let calls = NIOLockedValueBox(0)
        let upstream = StubUpstream { _ in
            calls.withLockedValue { $0 += 1 }
            return UpstreamResponse(status: .ok, headers: ["content-type": "application/json", "cache-control": cacheControl],
                                    body: ByteBuffer(string: #"{"keys": []}"#))
        }
        return try await withStubProxy(upstream, configure: { $0.cacheIgnoreUpstreamDirectives = ignore }) { app, _ in
            var results: [String?] = []
            for index in 0..<2 {
                if index == 1 { between?() }
                results.append(try await listThrough(app).cache)
            }
            return results
        }
    }

    @Test("a list answered Cache-Control private, no-cache, no-store, or private with a max-age is not kept: the next list is a MISS")
    func upstreamDirectivesKeepNothing() async throws {
        for directive in ["private", "no-cache", "no-store", "private, max-age=600", "max-age=600, PRIVATE", "no-cache=\"set-cookie\"", "max-age=0", "s-maxage=0, max-age=60"] {
            #expect(try await Self.twoLists(cacheControl: directive) == ["MISS", "MISS"], "\(directive)")
        }
        #expect(try await Self.twoLists(cacheControl: "max-age=600") == ["MISS", "HIT"])
        #expect(try await Self.twoLists(cacheControl: "public") == ["MISS", "HIT"])
    }

    @Test("cache_ignore_upstream_directives keeps lists marked private or no-cache, never those marked no-store")
    func ignoringDirectives() async throws {
        #expect(try await Self.twoLists(cacheControl: "private", ignore: true) == ["MISS", "HIT"])
        #expect(try await Self.twoLists(cacheControl: "no-cache", ignore: true) == ["MISS", "HIT"])
        #expect(try await Self.twoLists(cacheControl: "no-store", ignore: true) == ["MISS", "MISS"])
    }

    @Test("the policy's storage hook: s-maxage, then max-age, bound the TTL; s-maxage and must-revalidate forbid STALE")
    func storageDecisions() {
        func storage(_ value: String) -> Storage { Policy.storage(of: ["Cache-Control": value], ignoringDirectives: false) }
        #expect(storage("max-age=5") == .store(lifetime: 5, mayServeStale: true))
        #expect(storage("max-age=\"7\"") == .store(lifetime: 7, mayServeStale: true))
        #expect(storage("max-age=600, s-maxage=3") == .store(lifetime: 3, mayServeStale: false))
        #expect(storage("max-age=60, must-revalidate") == .store(lifetime: 60, mayServeStale: false))
        #expect(storage("proxy-revalidate") == .store(lifetime: nil, mayServeStale: false))
        #expect(storage("max-age=abc") == .doNotStore(reason: "max-age=0"))
        #expect(storage("Private") == .doNotStore(reason: "private"))
        #expect(Policy.storage(of: [:], ignoringDirectives: false) == .store(lifetime: nil, mayServeStale: true))
        #expect(Policy.storage(of: ["Cache-Control": "private, max-age=1"], ignoringDirectives: true) == .store(lifetime: nil, mayServeStale: true))
    }

    @Test("max-age shorter than the TTL: the list is a MISS once max-age has passed, and with s-maxage it is never served STALE")
    func maxAgeBoundsTheTTL() async throws {
        let clock = TestClock()
        let failing = NIOLockedValueBox(false)
        let cacheControl = NIOLockedValueBox("max-age=5")
        let upstream = StubUpstream { _ in
            if failing.withLockedValue({ $0 }) { throw UpstreamError.unreachable("down") }
            return UpstreamResponse(status: .ok, headers: ["content-type": "application/json", "cache-control": cacheControl.withLockedValue { $0 }],
                                    body: ByteBuffer(string: #"{"keys": []}"#))
        }
        try await withStubProxy(upstream, clock: clock.read) { (app: ProxyApp, _: String) async throws -> Void in
            func list(_ user: String) async throws -> String? { try await listThrough(app, user: user).cache }
            #expect(try await list("a%40b.com") == "MISS")
            clock.advance(4)
            #expect(try await list("a%40b.com") == "HIT")
            clock.advance(2)
            #expect(try await list("a%40b.com") == "MISS", "past max-age, inside the 30 s TTL")
            // s-maxage implies proxy-revalidate for a shared cache: no STALE when the upstream fails.
            cacheControl.withLockedValue { $0 = "s-maxage=5" }
            #expect(try await list("c%40d.com") == "MISS")
            clock.advance(6)
            failing.withLockedValue { $0 = true }
            #expect(try await list("c%40d.com") != "STALE")
            // Without it, the same failure is served STALE (the stale window is unchanged).
            #expect(try await list("a%40b.com") == "STALE")
        }
    }

    // MARK: 7. HTTP/1.0 with Transfer-Encoding

    @Test("HTTP/1.0 with Transfer-Encoding: answered, then the connection is closed even with keep-alive")
    func http10TransferEncoding() async throws {
        try await withTestProxy { proxy in
            let reply = try await Self.raw(proxy, "GET /v1/organizations/users/a%40b.com/api-keys HTTP/1.0\r\nHost: x\r\n\(Self.auth)Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            #expect(reply.status != nil, "\(reply.text)")
            #expect(reply.text.contains("Connection: close"), "\(reply.text)")
            #expect(reply.closed)
        }
    }

    // MARK: 8. Cross-site requests

    @Test("POST /_proxy/audit/verify marked Sec-Fetch-Site cross-site or same-site, with no Origin: 403; same-origin and none run")
    func crossSiteVerify() async throws {
        try await withTestProxy { proxy in
            for site in ["cross-site", "same-site"] {
                let refused = try await proxy.request(.POST, "/_proxy/audit/verify", token: nil, headers: ["Sec-Fetch-Site": site])
                #expect(refused.status == 403, "\(site)")
                #expect(refused.error?["code"] as? String == "mixpeek_proxy.forbidden")
            }
            for site in ["same-origin", "none"] {
                let run = try await proxy.request(.POST, "/_proxy/audit/verify", token: nil, headers: ["Sec-Fetch-Site": site])
                #expect(run.status == 200, "\(site)")
            }
        }
    }

    // MARK: 9. Smaller ones

    @Test("status_page = off: /_proxy/stats and /_proxy/metrics answer 404; /_proxy/health answers its status alone")
    func statusPageOffHidesFigures() async throws {
        try await withTestProxy(configure: { $0.statusPage = .off }) { proxy in
            #expect(try await proxy.request(.GET, "/_proxy/stats", token: nil).status == 404)
            #expect(try await proxy.request(.GET, "/_proxy/metrics", token: nil).status == 404)
            let health = try await proxy.request(.GET, "/_proxy/health", token: nil)
            #expect(health.status == 200)
            #expect(health.json.keys.sorted() == ["status"])
        }
        try await withTestProxy { proxy in
            let metrics = try await proxy.request(.GET, "/_proxy/metrics", token: nil)
            let health = try await proxy.request(.GET, "/_proxy/health", token: nil)
            #expect(metrics.status == 200)
            #expect(health.json["audit"] as? String == "ok")
        }
    }

    @Test("audit query and verify on a copied data dir leave it byte for byte as it was: no -shm or -wal beside it")
    func readingAnArchivedCopy() async throws {
        let dataDir = TestProxy.makeDataDir()
        try DataFiles.createPrivateDirectory(at: dataDir)
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        do {
            // Closed at the end of this scope, as a stopped proxy's is: SQLite folds its WAL back.
            let log = try AuditLog(path: dataDir + "/audit.sqlite", logger: Self.quiet)
            let intent = try await log.recordIntent(AuditIntent(action: .create, user: "a@b.com", key: "archived", caller: "c", client: "127.0.0.1", requestID: "r"))
            try await log.recordOutcome(of: intent, AuditResult(outcome: .ok, upstreamStatus: 201, durationMS: 1))
        }
        #expect(!FileManager.default.fileExists(atPath: dataDir + "/audit.sqlite-wal"))
        let archive = TestProxy.makeDataDir()
        try FileManager.default.createDirectory(atPath: archive, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: archive) }
        try FileManager.default.copyItem(atPath: dataDir + "/audit.sqlite", toPath: archive + "/audit.sqlite")
        let before = try Data(contentsOf: URL(fileURLWithPath: archive + "/audit.sqlite"))
        let entries = try Self.auditEntries(archive)
        #expect(entries.count == 1)
        let log = try AuditLog.openForReading(path: archive + "/audit.sqlite", logger: Self.quiet)
        #expect(try log.verify().problem == nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: archive) == ["audit.sqlite"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: archive + "/audit.sqlite")) == before)
    }

    // MARK: Property

    @Test("seeded random request targets over the whole byte range, duplicate fields and HTTP versions: every mutation the upstream routes is audited as it routed it; nothing else is audited")
    func randomRequests() async throws {
        var random = SplitMix64(seed: 0x7A26_E7)
        try await withTestProxy { proxy in
            let users = ["carol%40example.com", "ren%C3%A9%40ex.com", "d.o-e_x~y%40example.org"]
            let keys = ["k1", "k.2", "k%20three"]
            var lastSeq: Int64 = 0
            var routed = 0
            var audited = 0
            for round in 0..<800 {
                let action = ["create", "update", "rotate", "delete"][Int(random.next() % 4)]
                var target = "/v1/organizations/users/\(users[Int(random.next() % 3)])/api-keys"
                if action != "create" { target += "/" + keys[Int(random.next() % 3)] }
                if action == "rotate" { target += "/rotate" }
                var bytes = Array(target.utf8)
                // Most requests are spoiled one way or more: a byte anywhere from the whole range,
                // an escape of any byte, a fragment, a query.
                for _ in 0..<Int(random.next() % 3) {
                    let at = Int(random.next() % UInt64(bytes.count + 1))
                    switch random.next() % 4 {
                    case 0: bytes.insert(UInt8(truncatingIfNeeded: random.next()), at: at)
                    case 1: bytes.insert(contentsOf: Array(String(format: "%%%02X", Int(random.next() % 256)).utf8), at: at)
                    case 2: bytes += Array("#\(round)".utf8)
                    default: bytes += Array("?x=\(round)".utf8)
                    }
                }
                let method = ["create": "POST", "update": "PATCH", "rotate": "POST", "delete": "DELETE"][action]!
                let body = action == "create" ? #"{"name":"r\#(round)"}"# : action == "update" ? #"{"description":"r\#(round)"}"# : ""
                let version = random.next() % 4 == 0 ? "HTTP/1.0" : "HTTP/1.1"
                var fields = "Host: x\r\nAuthorization: Bearer \(TestProxy.token)\r\nConnection: close\r\n"
                if random.next() % 8 == 0 { fields += "Authorization: Bearer \(TestProxy.otherToken)\r\n" }
                if random.next() % 12 == 0 { fields += "Host: y\r\n" }
                let framing = version == "HTTP/1.0" && random.next() % 3 == 0
                    ? "Transfer-Encoding: chunked\r\n\r\n\(String(body.utf8.count, radix: 16))\r\n\(body)\r\n0\r\n\r\n"
                    : "Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
                let request = Array("\(method) ".utf8) + bytes + Array(" \(version)\r\n\(fields)\(framing)".utf8)
                let appliedBefore = proxy.controls.appliedMutations.count
                let reply = try await rawExchange(port: proxy.app.port, request, timeout: .seconds(3))
                let mutations = Array(proxy.controls.appliedMutations.dropFirst(appliedBefore))
                let intents = try Self.auditEntries(proxy.dataDir).filter { $0.seq > lastSeq }
                lastSeq = intents.map(\.seq).max() ?? lastSeq
                let shown = String(decoding: bytes, as: UTF8.self).debugDescription
                if let mutation = mutations.first {
                    routed += 1
                    #expect(mutations.count == 1, "\(method) \(shown)")
                    let intent = try #require(intents.first, "routed by the upstream but not audited: \(method) \(shown)")
                    #expect(intents.count == 1)
                    #expect(intent.action == mutation.operation.rawValue, "\(method) \(shown)")
                    #expect(ExactText.same(intent.user_email, mutation.user), "\(method) \(shown): \(intent.user_email) vs \(mutation.user)")
                    #expect(intent.key_name.map(ExactText.init) == mutation.key.map(ExactText.init) || action == "create", "\(method) \(shown)")
                } else {
                    #expect(intents.isEmpty, "audited but not routed as that mutation upstream: \(method) \(shown): \(reply.text.prefix(80))")
                }
                audited += intents.count
            }
            #expect(routed > 100, "the generator reaches the upstream's mutations: \(routed) routed, \(audited) audited")
            #expect(routed < 700, "and spoils most requests: \(routed) routed")
        }
    }
}

// MARK: 3. Outcome durability

/// An audit sink whose outcome writes fail while `failing` is set: a disk that filled up, or
/// PostgreSQL restarting.
final class FlakyAuditSink: AuditSink {
    let log: AuditLog
    let path: String
    let failing = NIOLockedValueBox(0)
    let failedWrites = NIOLockedValueBox(0)

    init(path: String) throws {
        self.path = path
        log = try AuditLog(path: path, logger: TrustTests.quiet)
    }

    /// Fails the next `count` outcome writes (`Int.max`: until told otherwise).
    func failOutcomes(_ count: Int) { failing.withLockedValue { $0 = count } }

    func recordIntent(_ intent: AuditIntent) async throws -> AuditRecord {
        try await log.recordIntent(intent)
    }

    func recordOutcome(of intent: AuditRecord, _ result: AuditResult) async throws -> AuditRecord {
        let fail = failing.withLockedValue { count -> Bool in
            guard count > 0 else { return false }
            if count != .max { count -= 1 }
            return true
        }
        if fail {
            failedWrites.withLockedValue { $0 += 1 }
            throw DatabaseFull()
        }
        return try await log.recordOutcome(of: intent, result)
    }

    func recordCount() async throws -> Int { try await log.recordCount() }

    struct DatabaseFull: Error {}
}

@Suite("A mutation is answered only once its outcome is durable")
struct OutcomeDurabilityTests {
    struct Harness {
        let proxy: Proxy
        let sink: FlakyAuditSink
        let creates: NIOLockedValueBox<Int>
        let loop = MultiThreadedEventLoopGroup.singleton.next()

        func send(_ method: HTTPMethod, _ target: String, json: String? = nil) async throws -> HTTPResponse {
            var headers: HTTPHeaders = ["authorization": "Bearer \(TestProxy.token)", "host": "127.0.0.1"]
            if json != nil { headers.add(name: "content-type", value: "application/json") }
            let request = HTTPRequest(method: method, target: target, headers: headers, body: json.map { ByteBuffer(string: $0) })
            switch proxy.respond(to: request, on: loop) {
            case .now(let response): return response
            case .later(let future): return try await future.get()
            }
        }

        func list() async throws -> String? {
            try await send(.GET, TestProxy.path()).headers.first(name: "X-Cache")
        }

        func outcomes() throws -> [AuditEntry] {
            var entries: [AuditEntry] = []
            try AuditLog.openForReading(path: sink.path, logger: TrustTests.quiet).query(AuditFilter()) { entries.append($0) }
            return entries
        }
    }

    static func withHarness(wait: Double, _ body: (Harness) async throws -> Void) async throws {
        let dataDir = TestProxy.makeDataDir()
        try DataFiles.createPrivateDirectory(at: dataDir)
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let sink = try FlakyAuditSink(path: dataDir + "/audit.sqlite")
        let creates = NIOLockedValueBox(0)
        let upstream = StubUpstream { request in
            if request.method == .POST {
                creates.withLockedValue { $0 += 1 }
                return UpstreamResponse(status: .created, headers: ["content-type": "application/json"],
                                        body: ByteBuffer(string: #"{"key_id": "key_1", "key_prefix": "sk_live_ab", "key": "sk_live_abcdefghijklmnop"}"#))
            }
            return UpstreamResponse(status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(string: #"{"keys": []}"#))
        }
        let cache = ProxyListCache(settings: .init(ttl: 60, staleIfError: 0, memoryBytes: 1 << 20), store: nil, logger: TrustTests.quiet,
                                   prepare: CachedListResponse.init)
        var settings = Proxy.Settings()
        settings.auditOutcomeWait = wait
        // Requests here come from no socket: the figures are shown to anyone.
        settings.statusPage = .on
        let proxy = Proxy(upstream: upstream, cache: cache, audit: sink, settings: settings, metrics: ProxyMetrics(),
                          accessLog: nil, logger: TrustTests.quiet)
        try await body(Harness(proxy: proxy, sink: sink, creates: creates))
    }

    @Test("an outcome write that fails a few times is retried: the answer is held until the record is durable, then it is the upstream's")
    func heldUntilDurable() async throws {
        try await Self.withHarness(wait: 5) { harness in
            harness.sink.failOutcomes(3)
            let response = try await harness.send(.POST, TestProxy.path(), json: #"{"name": "held"}"#)
            #expect(response.status == .created)
            #expect(harness.sink.failedWrites.withLockedValue { $0 } == 3)
            let entries = try harness.outcomes()
            #expect(entries.count == 1)
            #expect(entries.first?.outcome == "ok", "the outcome is on disk when the answer is sent")
        }
    }

    @Test("past audit_outcome_wait: 503 audit_incomplete naming the upstream status and the intent; no HIT for the user until the outcome lands; then hits again")
    func incompleteThenLanded() async throws {
        try await Self.withHarness(wait: 0.3) { harness in
            #expect(try await harness.list() == "MISS")
            #expect(try await harness.list() == "HIT")
            harness.sink.failOutcomes(.max)
            let response = try await harness.send(.POST, TestProxy.path(), json: #"{"name": "lost"}"#)
            #expect(response.status == .serviceUnavailable)
            let body = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]
            let error = body?["error"] as? [String: Any]
            #expect(error?["code"] as? String == "mixpeek_proxy.audit_incomplete")
            let details = error?["details"] as? [String: String]
            #expect(details?["upstream_status"] == "201")
            #expect(details?["intent_seq"] == "1")
            #expect(harness.creates.withLockedValue { $0 } == 1, "it was forwarded: the client is told it may have been applied")
            // While the outcome is not durable, the user's lists are neither served from nor kept in the cache.
            #expect(try await harness.list() == "MISS")
            let forwarded = try await harness.send(.GET, TestProxy.path())
            #expect(forwarded.headers.first(name: "X-Cache") == "MISS")
            #expect(forwarded.headers.first(name: "Cache-Status")?.contains("detail=outcome-pending") == true,
                    "\(forwarded.headers.first(name: "Cache-Status") ?? "")")
            #expect(harness.proxy.outcomes.incompleteCount == 1)
            let metrics = try await harness.send(.GET, "/_proxy/metrics")
            #expect(String(buffer: metrics.body).contains("\nmixpeek_proxy_audit_outcomes_pending 1\n"))
            harness.sink.failOutcomes(0)
            let landed = try await eventually(within: 10) { try harness.outcomes().first?.outcome == "ok" }
            #expect(landed, "the outcome is appended as its own record once it can be")
            #expect(await eventually { harness.proxy.outcomes.incompleteCount == 0 })
            #expect(try await harness.list() == "MISS")
            #expect(try await harness.list() == "HIT", "hits again once the outcome is written")
            #expect(try AuditLog.openForReading(path: harness.sink.path, logger: TrustTests.quiet).verify().problem == nil)
        }
    }
}
