import Foundation
import Logging
import MixpeekFake
import MixpeekProxy
import NIOHTTP1
import NIOConcurrencyHelpers
import Testing

/// Lines logged by the proxy, captured at trace level (everything it would ever log).
final class LogCapture: Sendable {
    private let lines = NIOLockedValueBox([String]())
    var all: [String] { lines.withLockedValue { $0 } }

    var logger: Logger {
        var logger = Logger(label: "capture") { _ in CaptureHandler(capture: self) }
        logger.logLevel = .trace
        return logger
    }

    func append(_ line: String) { lines.withLockedValue { $0.append(line) } }

    struct CaptureHandler: LogHandler {
        let capture: LogCapture
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            capture.append("\(event.level) \(event.message) \(event.metadata ?? [:]) \(metadata)")
        }
    }
}

@Suite("Metrics and logs")
struct ObservabilityTests {
    @Test("/_proxy/metrics counts requests by route, status and cache result after known traffic")
    func metricsAfterKnownTraffic() async throws {
        try await withTestProxy { proxy in
            _ = try await proxy.list()
            _ = try await proxy.list()
            _ = try await proxy.list()
            _ = try await proxy.create(name: "m-key")
            _ = try await proxy.delete(key: "admin-key")
            proxy.controls.setFault(.delay(.seconds(3)), for: .rotate)
            _ = try await proxy.rotate(key: "m-key")
            let text = try await proxy.request(.GET, "/_proxy/metrics", token: nil).body
            let lines = Set(text.split(separator: "\n").map(String.init))
            #expect(lines.contains(#"mixpeek_proxy_requests_total{route="list",status="200",cache="MISS"} 1"#))
            #expect(lines.contains(#"mixpeek_proxy_requests_total{route="list",status="200",cache="HIT"} 2"#))
            #expect(lines.contains(#"mixpeek_proxy_requests_total{route="create",status="200",cache="none"} 1"#))
            #expect(lines.contains(#"mixpeek_proxy_requests_total{route="delete",status="403",cache="none"} 1"#))
            #expect(lines.contains("mixpeek_proxy_cache_hits_total 2"))
            #expect(lines.contains("mixpeek_proxy_cache_misses_total 1"))
            #expect(lines.contains("mixpeek_proxy_upstream_list_calls_total 1"))
            #expect(lines.contains("mixpeek_proxy_audit_appends_total 6"))
            #expect(lines.contains("mixpeek_proxy_audit_failures_total 0"))
            #expect(lines.contains("mixpeek_proxy_log_lines_dropped_total 0"))
            #expect(lines.contains("mixpeek_proxy_cache_entries 0"), "the create invalidated alice's list")
            #expect(text.contains("# TYPE mixpeek_proxy_audit_append_duration_seconds histogram"))
            #expect(text.contains("mixpeek_proxy_audit_append_duration_seconds_count 6"))
            #expect(!text.contains(TestProxy.token))
        }
    }

    @Test("one cache result per request: the X-Cache sent, the request log's cache= and the metric's cache label agree, a coalesced list included")
    func oneCacheResult() async throws {
        try await withTestProxy { proxy in
            let waited = try await CacheTests().concurrentLists(proxy, count: 3)   // 1 MISS, 2 coalesced
            _ = try await proxy.list()                                   // HIT
            _ = try await proxy.list(query: "limit=5")                   // BYPASS
            let sent = (waited + [try await proxy.list(), try await proxy.list(query: "limit=5")]).compactMap(\.xCache).sorted()
            #expect(sent == ["BYPASS", "COALESCED", "COALESCED", "HIT", "MISS"], "a request that waited on another's fetch says so")
            let text = try await proxy.request(.GET, "/_proxy/metrics", token: nil).body
            let lines = Set(text.split(separator: "\n").map(String.init))
            #expect(lines.contains(#"mixpeek_proxy_requests_total{route="list",status="200",cache="COALESCED"} 2"#))
            #expect(lines.contains(#"mixpeek_proxy_requests_total{route="list",status="200",cache="MISS"} 1"#))
            #expect(lines.contains(#"mixpeek_proxy_requests_total{route="list",status="200",cache="HIT"} 2"#))
            let log = try #require(proxy.requestLog)
            let logged = await eventually { log.lines.filter { $0.contains("route=list") }.count == 7 }
            #expect(logged)
            let results = log.lines.filter { $0.contains("route=list") }.compactMap { line in
                line.split(separator: " ").first { $0.hasPrefix("cache=") }.map { String($0.dropFirst("cache=".count)) }
            }.sorted()
            #expect(results == ["BYPASS", "BYPASS", "COALESCED", "COALESCED", "HIT", "HIT", "MISS"])
        }
    }

    @Test("a timed-out upstream is counted under mixpeek_proxy_upstream_errors_total{kind=timeout}")
    func upstreamErrorMetric() async throws {
        try await withTestProxy(configure: { $0.upstreamTimeout = 0.2 }) { proxy in
            proxy.controls.setFault(.delay(.seconds(2)), for: .update)
            let updated = try await proxy.update(key: "k")
            #expect(updated.status == 504)
            let text = try await proxy.request(.GET, "/_proxy/metrics", token: nil).body
            #expect(text.contains(#"mixpeek_proxy_upstream_errors_total{kind="timeout"} 1"#))
            #expect(text.contains(#"mixpeek_proxy_requests_total{route="update",status="504",cache="none"} 1"#))
        }
    }

    @Test("one request-log line per request, and no token or secret in it or in any diagnostics line at trace level")
    func logsCarryNoSecrets() async throws {
        let capture = LogCapture()
        let requestLog = LineSink()
        let fake = try await FakeUpstreamServer.start()
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        var config = ProxyConfig()
        config.port = 0
        config.upstream = fake.url
        config.dataDir = dataDir
        config.logLevel = .trace
        let app = try await ProxyApp.start(config: config, logger: capture.logger, accessLogSink: requestLog)
        let client = try await TestProxy.start(dataDir: TestProxy.makeDataDir(), fake: fake)
        defer { client.removeData() }
        // `client` is a second proxy on the same fake; its HTTP client talks to `app`.
        let url = app.url
        func send(_ method: HTTPMethod, _ path: String, _ body: String? = nil) async throws -> TestResponse {
            try await client.request(method, path, json: body, base: url)
        }
        let created = try await send(.POST, TestProxy.path(), #"{"name":"log-key"}"#)
        let secret = try #require(created.json["key"] as? String)
        let rotated = try await send(.POST, TestProxy.path(key: "log-key", rotate: true))
        let secret2 = try #require(rotated.json["key"] as? String)
        _ = try await send(.GET, TestProxy.path())
        _ = try await send(.GET, TestProxy.path())
        _ = try await send(.DELETE, TestProxy.path(key: "log-key"))
        await app.shutdown()
        await client.stop()
        let requests = requestLog.lines
        #expect(requests.map { $0.firstMatch(of: /route=(\S+)/)?.1 ?? "?" } == ["create", "rotate", "list", "list", "delete"])
        #expect(requests.map { $0.firstMatch(of: /cache=(\S+)/)?.1 ?? "?" } == ["-", "-", "MISS", "HIT", "-"])
        #expect(requests.allSatisfy { $0.contains(" method=") && $0.contains(" status=") && $0.contains(" ms=") && $0.contains(" request_id=") })
        for line in capture.all + requests {
            #expect(!line.contains(TestProxy.token), "token in: \(line)")
            #expect(!line.contains(secret) && !line.contains(secret2), "secret in: \(line)")
            #expect(!line.contains("sk_test"), "token prefix in: \(line)")
        }
    }
}
