import Foundation
import Logging
import MixpeekFake
@testable import MixpeekProxy
import NIOHTTP1
import Testing

/// W3C Trace Context through the proxy: a client's trace can be followed to the request log
/// and the audit record of the mutation it made.
@Suite("Trace context")
struct TraceTests {
    static let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    static let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"

    @Test("a valid traceparent is read; a malformed one, an all-zero id, version ff or two fields are not", arguments: [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later", true),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later", false),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", false),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", false),
        ("", false),
    ])
    func parsing(value: String, valid: Bool) {
        #expect(TraceContext.isValid(value) == valid)
        #expect((TraceContext(["traceparent": value]) != nil) == valid)
    }

    @Test("a started trace is a valid traceparent with a fresh id each time")
    func started() {
        let a = TraceContext.started()
        let b = TraceContext.started()
        #expect(TraceContext.isValid(a.traceparent) && !a.fromClient)
        #expect(a.traceID != b.traceID)
        #expect(a.traceID.utf8.count == 32)
        #expect(TraceContext(["traceparent": Self.traceparent, "Traceparent": Self.traceparent]) == nil, "two fields: invalid")
    }

    @Test("traceparent and tracestate are forwarded as they came; the trace id is in the request-log line and the audit record")
    func followedToAudit() async throws {
        let requestLog = LineSink()
        let fake = try await FakeUpstreamServer.start()
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        var config = ProxyConfig()
        config.port = 0
        config.upstream = fake.url
        config.dataDir = dataDir
        config.logLevel = .warning
        let app = try await ProxyApp.start(config: config, logger: Logger(label: "trace-test"), accessLogSink: requestLog)
        let client = try await TestProxy.start(dataDir: TestProxy.makeDataDir(), fake: fake)
        defer { client.removeData() }
        let traced: HTTPHeaders = ["traceparent": Self.traceparent, "tracestate": "vendor=abc"]
        let created = try await client.request(.POST, TestProxy.path(), headers: traced, json: #"{"name":"traced"}"#, base: app.url)
        #expect(created.status == 200)
        let forwarded = try #require(fake.controls.lastRequest(.create))
        #expect(forwarded.headers["traceparent"] == [Self.traceparent])
        #expect(forwarded.headers["tracestate"] == ["vendor=abc"])
        // Without one: a trace is started and forwarded; a bad one is replaced, its tracestate dropped.
        _ = try await client.request(.GET, TestProxy.path(), base: app.url)
        let started = try #require(fake.controls.lastRequest(.list)?.headers.first(name: "traceparent"))
        #expect(TraceContext.isValid(started) && !started.contains(Self.traceID))
        _ = try await client.request(.GET, TestProxy.path(), headers: ["traceparent": "garbage", "tracestate": "x=1", "cache-control": "no-cache"],
                                     base: app.url)
        let replaced = try #require(fake.controls.lastRequest(.list))
        #expect(replaced.headers["traceparent"].count == 1 && TraceContext.isValid(replaced.headers["traceparent"][0]))
        #expect(!replaced.headers.contains(name: "tracestate"))
        // A hit goes nowhere: it logs the client's trace id, and starts none.
        _ = try await client.request(.GET, TestProxy.path(), headers: ["traceparent": Self.traceparent], base: app.url)
        _ = try await client.request(.GET, TestProxy.path(), base: app.url)
        await app.shutdown()
        await client.stop()
        let lines = requestLog.lines
        try #require(lines.count == 5)
        #expect(lines[0].contains("route=create") && lines[0].contains(" trace_id=\(Self.traceID) "))
        let startedID = String(started.dropFirst(3).prefix(32))
        #expect(lines[1].contains(" trace_id=\(startedID) "))
        #expect(lines[3].contains("cache=HIT") && lines[3].contains(" trace_id=\(Self.traceID) "))
        #expect(lines[4].contains("cache=HIT") && !lines[4].contains("trace_id="))
        let log = try AuditLog.openForReading(path: dataDir + "/audit.sqlite", logger: Logger(label: "trace-test"))
        var entries: [AuditEntry] = []
        try log.query(AuditFilter()) { entries.append($0) }
        #expect(entries.map(\.trace_id) == [Self.traceID])
        #expect(try log.verify().problem == nil)
    }
}
