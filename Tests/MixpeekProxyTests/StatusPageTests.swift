import Crypto
import Foundation
import Logging
import MixpeekHTTP
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Testing

@testable import MixpeekProxy

@Suite("Status page")
struct StatusPageTests {
    /// Lists, a create, a rotate and a refused delete: the tour the page is checked after.
    static func tour(_ proxy: TestProxy) async throws -> (secrets: [String], created: String) {
        _ = try await proxy.list()
        _ = try await proxy.list()
        let created = try await proxy.create(name: "status-key")
        let rotated = try await proxy.rotate(key: "status-key")
        let refused = try await proxy.delete(key: "admin-key")
        #expect(refused.status == 403)
        _ = try await proxy.list()
        let secrets = [created, rotated].compactMap { $0.json["key"] as? String }
        #expect(secrets.count == 2)
        return (secrets, created.json["key_hash"] as? String ?? "")
    }

    @Test("status.json counts the lists it saw, lists the mutations newest first and keeps a null group")
    func jsonAfterTour() async throws {
        try await withTestProxy { proxy in
            _ = try await Self.tour(proxy)
            let response = try await proxy.request(.GET, "/_proxy/status.json", token: nil)
            #expect(response.status == 200)
            let json = response.json
            let savings = try #require(json["savings"] as? [String: Any])
            #expect(savings["hits"] as? Int == 1)
            #expect(savings["misses"] as? Int == 2)
            #expect(savings["upstream_list_calls_saved"] as? Int == 1)
            let minutes = try #require(savings["minutes"] as? [[String: Any]])
            #expect(minutes.last?["partial"] as? Bool == true)
            // Summed: the test may straddle a minute's end.
            #expect(minutes.compactMap { $0["hits"] as? Int }.reduce(0, +) == 1)
            #expect(minutes.compactMap { $0["misses"] as? Int }.reduce(0, +) == 2)
            let upstream = try #require(json["upstream"] as? [String: Any])
            #expect(upstream["state"] as? String == "reachable")
            #expect((upstream["list_misses"] as? [String: Any])?["count"] as? Int == 2)
            #expect((upstream["mutations"] as? [String: Any])?["count"] as? Int == 3)
            #expect((upstream["mutations"] as? [String: Any])?["p99_ms"] is Double)
            #expect(upstream["url"] as? String == proxy.fake.url)
            let cache = try #require(json["cache"] as? [String: Any])
            #expect(cache["memory_entries"] as? Int == 1)
            #expect(cache["entries_max"] as? Int == ProxyConfig().cacheMaxEntries)
            let audit = try #require(json["audit"] as? [String: Any])
            #expect(audit["records"] as? Int == 6)
            #expect((audit["head"] as? String)?.hasPrefix("6:") == true)
            let recent = try #require(audit["recent"] as? [[String: Any]])
            #expect(recent.map { $0["action"] as? String } == ["delete", "rotate", "create"])
            #expect(recent.map { $0["outcome"] as? String } == ["rejected", "ok", "ok"])
            #expect(recent.first?["upstream_status"] as? Int == 403)
            #expect(recent.first?["key_name"] as? String == "admin-key")
            #expect(json.keys.contains("group") && json["group"] is NSNull)
        }
    }

    @Test("no token, no secret and no key value on the page, in its JSON or in a verification")
    func nothingSecret() async throws {
        try await withTestProxy { proxy in
            let (secrets, keyHash) = try await Self.tour(proxy)
            let verified = try await proxy.request(.POST, "/_proxy/audit/verify", token: nil)
            let page = try await proxy.request(.GET, "/_proxy/", token: nil)
            let json = try await proxy.request(.GET, "/_proxy/status.json", token: nil)
            #expect(page.body.contains("status-key"), "the page shows the tour")
            for body in [page.body, json.body, verified.body] {
                #expect(!body.contains(TestProxy.token))
                #expect(!body.contains("Bearer"))
                for secret in secrets { #expect(!body.contains(secret)) }
                #expect(keyHash.isEmpty || !body.contains(keyHash))
            }
        }
    }

    @Test("a key named like markup shows as text on the page, never as an element")
    func markupIsEscaped() async throws {
        try await withTestProxy { proxy in
            let name = "<img src=x onerror=alert(1)>"
            _ = try await proxy.create(name: name)
            let page = try await proxy.request(.GET, "/_proxy/", token: nil).body
            #expect(page.contains("&lt;img src=x onerror=alert(1)&gt;"))
            #expect(!page.contains("<img"))
            let json = try await proxy.request(.GET, "/_proxy/status.json", token: nil).json
            let recent = (json["audit"] as? [String: Any])?["recent"] as? [[String: Any]]
            #expect(recent?.first?["key_name"] as? String == name, "the JSON keeps the name as it was sent")
        }
    }

    @Test("the page and its JSON are never stored and carry a strict CSP that allows exactly their inline style and script")
    func privateAndStrict() async throws {
        try await withTestProxy { proxy in
            let page = try await proxy.request(.GET, "/_proxy/", token: nil)
            #expect(page.status == 200)
            #expect(page.header("content-type") == "text/html; charset=utf-8")
            #expect(page.header("cache-control") == "no-store")
            let policy = try #require(page.header("content-security-policy"))
            #expect(policy.hasPrefix("default-src 'none'"))
            #expect(!policy.contains("unsafe"))
            for tag in ["style", "script"] {
                let inline = try #require(Self.between("<\(tag)>", "</\(tag)>", in: page.body))
                let hash = Data(SHA256.hash(data: Data(inline.utf8))).base64EncodedString()
                #expect(policy.contains("\(tag)-src 'sha256-\(hash)'"), "\(tag) is allowed by its hash")
            }
            #expect(page.body.contains(#"<noscript><meta http-equiv="refresh""#))
            let json = try await proxy.request(.GET, "/_proxy/status.json", token: nil)
            #expect(json.header("cache-control") == "no-store")
            #expect(json.header("content-security-policy")?.hasPrefix("default-src 'none'") == true)
            #expect(json.header("content-type") == "application/json")
        }
    }

    @Test("status_page = off answers 404 on every status path")
    func off() async throws {
        try await withTestProxy(configure: { $0.statusPage = .off }) { proxy in
            for (method, path) in [(HTTPMethod.GET, "/_proxy/"), (.GET, "/_proxy/status.json"), (.POST, "/_proxy/audit/verify")] {
                let status = try await proxy.request(method, path, token: nil).status
                #expect(status == 404, "\(method) \(path)")
            }
            let health = try await proxy.request(.GET, "/_proxy/health", token: nil)
            #expect(health.status == 200)
        }
    }

    @Test("loopback serves only this machine asking by a loopback name; a POST from another site's page is refused")
    func loopbackOnly() async throws {
        try await withTestProxy { proxy in
            let rebound = try await rawExchange(
                port: proxy.app.port, Array("GET /_proxy/status.json HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".utf8))
            #expect(rebound.text.hasPrefix("HTTP/1.1 403"))
            let crossSite = try await proxy.request(.POST, "/_proxy/audit/verify", token: nil, headers: ["origin": "http://evil.example"])
            #expect(crossSite.status == 403)
            let sameSite = try await proxy.request(.POST, "/_proxy/audit/verify", token: nil, headers: ["origin": "http://127.0.0.1:\(proxy.app.port)"])
            #expect(sameSite.status == 200)
        }
        func request(from ip: String, host: String) throws -> HTTPRequest {
            HTTPRequest(method: .GET, target: "/_proxy/", headers: ["host": host], remoteAddress: try SocketAddress(ipAddress: ip, port: 40000))
        }
        #expect(Proxy.statusRefusal(try request(from: "127.0.0.1", host: "127.0.0.1:8080"), access: .loopback) == nil)
        #expect(Proxy.statusRefusal(try request(from: "::1", host: "[::1]:8080"), access: .loopback) == nil)
        #expect(Proxy.statusRefusal(try request(from: "127.0.0.5", host: "localhost"), access: .loopback) == nil)
        #expect(Proxy.statusRefusal(try request(from: "192.0.2.7", host: "127.0.0.1:8080"), access: .loopback) != nil)
        #expect(Proxy.statusRefusal(try request(from: "::ffff:192.0.2.7", host: "127.0.0.1:8080"), access: .loopback) != nil)
        #expect(Proxy.statusRefusal(try request(from: "127.0.0.1", host: "127.0.0.1.evil.example"), access: .loopback) != nil)
        #expect(Proxy.statusRefusal(try request(from: "192.0.2.7", host: "proxy.internal:8080"), access: .on) == nil)
    }

    @Test("verify now walks the chain: the JSON and the page show its result; a form post gets the page back")
    func verifyNow() async throws {
        try await withTestProxy { proxy in
            _ = try await Self.tour(proxy)
            let before = try await proxy.request(.GET, "/_proxy/", token: nil).body
            #expect(before.contains(">never</span>"))
            let verified = try await proxy.request(.POST, "/_proxy/audit/verify", token: nil)
            #expect(verified.status == 200)
            #expect(verified.json["intact"] as? Bool == true)
            #expect(verified.json["records"] as? Int == 6)
            let audit = try await proxy.request(.GET, "/_proxy/status.json", token: nil).json["audit"] as? [String: Any]
            let last = try #require(audit?["last_verification"] as? [String: Any])
            #expect(last["intact"] as? Bool == true)
            #expect(last["head"] as? String == audit?["head"] as? String)
            #expect(try await proxy.request(.GET, "/_proxy/", token: nil).body.contains(">intact</span>"))
            let form = try await proxy.request(.POST, "/_proxy/audit/verify", token: nil, headers: ["accept": "text/html,*/*"])
            #expect(form.status == 303)
            #expect(form.header("location") == "/_proxy/")
            #expect(try await proxy.request(.GET, "/_proxy/audit/verify", token: nil).status == 405)
        }
    }

    @Test("cache hits leave nothing for the page to record: it reads the cache's own counters, and upstream calls only")
    func hitsRecordNothing() async throws {
        try await withTestProxy { proxy in
            _ = try await proxy.list()
            for _ in 0..<50 { _ = try await proxy.list() }
            let json = try await proxy.request(.GET, "/_proxy/status.json", token: nil).json
            #expect((json["savings"] as? [String: Any])?["hits"] as? Int == 50)
            let upstream = json["upstream"] as? [String: Any]
            #expect((upstream?["list_misses"] as? [String: Any])?["count"] as? Int == 1)
        }
    }

    @Test("verify now checks an HMAC chain with the proxy's key, and finds a chain broken without it")
    func verifyHMACChain() async throws {
        let dir = TestProxy.makeDataDir()
        try DataFiles.createPrivateDirectory(at: dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/audit.sqlite"
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let writer = try AuditLog(path: path, hmacKey: "status-secret", logger: logger)
        let intent = try await writer.recordIntent(AuditIntent(
            action: .create, user: "a@example.com", key: "k", caller: "anonymous", client: "127.0.0.1", requestID: "r1"))
        try await writer.recordOutcome(of: intent, AuditResult(outcome: .ok, upstreamStatus: 200, durationMS: 1))
        let cache = ListCache(settings: .init(ttl: 30, staleIfError: 0, memoryBytes: 1 << 20), store: nil, logger: logger)
        let limits = StatusBoard.Limits(upstreamURL: "http://127.0.0.1:1", cacheMaxEntries: 1, cacheMaxBytes: 1)
        for (key, intact) in [("status-secret", true), (nil, false)] {
            let reader = try AuditLog(path: path, hmacKey: key, readOnly: true, logger: logger)
            let result = await StatusBoard(cache: cache, audit: reader, limits: limits).verifyAudit()
            #expect(result.intact == intact)
            #expect(result.records == (intact ? 2 : 1))
        }
    }

    @Test("the minute history keeps the last hour, oldest first, with the running minute last")
    func minuteHistory() {
        var history = MinuteHistory()
        var counters = CacheCounters()
        history.record(counters, at: 0)
        #expect(history.minutes(current: counters).count == 1)
        for minute in 1...70 {
            counters.hits += minute
            counters.misses += 1
            history.record(counters, at: Double(minute * 60))
        }
        counters.hits += 5
        let minutes = history.minutes(current: counters)
        #expect(minutes.count == MinuteHistory.capacity + 1)
        #expect(minutes.first?.hits == 11, "minutes 1 to 10 fell out of the hour")
        #expect(minutes.dropLast().last?.hits == 70)
        #expect(minutes.dropLast().allSatisfy { !$0.partial && $0.misses == 1 })
        #expect(minutes.last?.hits == 5 && minutes.last?.partial == true)
        #expect(minutes.last?.start == "1970-01-01T01:10:00.000Z")
    }

    @Test("upstream health: unknown before any call, then the last call's state, its last error and recent percentiles")
    func upstreamHealth() {
        let now = NIOLockedValueBox(1_000.0)
        let health = UpstreamHealth(clock: { now.withLockedValue { $0 } })
        #expect(health.snapshot(url: "").state == .unknown)
        for ms in 1...100 { health.answered(.list, status: 200, milliseconds: Double(ms)) }
        var snapshot = health.snapshot(url: "")
        #expect(snapshot.state == .reachable)
        #expect(snapshot.list_misses.count == 100 && snapshot.list_misses.p50_ms == 50 && snapshot.list_misses.p99_ms == 99)
        #expect(snapshot.mutations.count == 0 && snapshot.mutations.p50_ms == nil)
        health.failed(.mutation, .unreachable("connection refused"), milliseconds: 3)
        snapshot = health.snapshot(url: "")
        #expect(snapshot.state == .unreachable)
        #expect(snapshot.last_error?.message == "unreachable: connection refused")
        health.answered(.mutation, status: 503, milliseconds: 4)
        #expect(health.snapshot(url: "").state == .erroring)
        now.withLockedValue { $0 += UpstreamHealth.window + 1 }
        snapshot = health.snapshot(url: "")
        #expect(snapshot.list_misses.count == 0, "latencies older than the window are left out")
        #expect(snapshot.last_error?.message == "the upstream answered 503")
    }

    @Test("the upstream's address on the page is scheme, host and port only")
    func displayedUpstream() {
        #expect(StatusBoard.displayed("https://user:pass@api.example.com:8443/base?token=x") == "https://api.example.com:8443")
        #expect(StatusBoard.displayed("https://api.mixpeek.com") == "https://api.mixpeek.com")
    }

    static func between(_ start: String, _ end: String, in text: String) -> String? {
        guard let from = text.range(of: start), let to = text.range(of: end, range: from.upperBound..<text.endIndex) else { return nil }
        return String(text[from.upperBound..<to.lowerBound])
    }
}
