import Foundation
import MixpeekFake
@testable import MixpeekProxy
import NIOCore
import NIOPosix
import Testing

@Suite("Request log")
struct AccessLogTests {
    static func entry(_ n: Int, requestID: String? = nil) -> AccessLogEntry {
        AccessLogEntry(method: .GET, route: "list", status: 200, cache: .hit, milliseconds: 0.126, requestID: requestID ?? "req-\(n)")
    }

    /// Runs `body` with `count` fresh event loops, shut down afterwards.
    static func withLoops<T>(_ count: Int, _ body: ([any EventLoop]) async throws -> T) async throws -> T {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: count)
        do {
            let result = try await body(Array(group.makeIterator()))
            try await group.shutdownGracefully()
            return result
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    /// Records `count` lines on each loop, from the loop itself, as the proxy does.
    static func record(_ count: Int, on loops: [any EventLoop], into log: AccessLog) async throws {
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for loop in loops {
                tasks.addTask {
                    try await loop.submit { for n in 0..<count { log.record(entry(n), on: loop) } }.get()
                }
            }
            try await tasks.waitForAll()
        }
    }

    static func temporaryFile() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("access-\(UUID().uuidString).log").path
    }

    static func lines(in path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    @Test("a text line has the fields the log had before, in their order, with the time in UTC")
    func textLine() async throws {
        try await Self.withLoops(1) { loops in
            let sink = LineSink()
            let log = AccessLog(sink: sink, eventLoops: loops)
            try await loops[0].submit {
                log.record(Self.entry(0, requestID: "abc"), on: loops[0])
                log.record(AccessLogEntry(method: .POST, route: "create", status: 503, cache: nil, milliseconds: 1234.567, requestID: nil),
                           on: loops[0])
            }.get()
            await log.close()
            let lines = sink.lines
            try #require(lines.count == 2)
            let pattern = /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info mixpeek-proxy: (.*) \[MixpeekProxy\] request/
            #expect(lines[0].wholeMatch(of: pattern)?.1 == "cache=HIT method=GET ms=0.13 request_id=abc route=list status=200")
            #expect(lines[1].wholeMatch(of: pattern)?.1 == "cache=- method=POST ms=1234.57 request_id=- route=create status=503")
        }
    }

    @Test("a JSON line is one object with the fields the log had before")
    func jsonLine() async throws {
        try await Self.withLoops(1) { loops in
            let sink = LineSink()
            var settings = AccessLog.Settings()
            settings.format = .json
            let log = AccessLog(sink: sink, eventLoops: loops, settings: settings)
            try await loops[0].submit { log.record(Self.entry(0, requestID: "abc"), on: loops[0]) }.get()
            await log.close()
            let line = try #require(sink.lines.first)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
            #expect(object["time"]?.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/) != nil)
            var rest = object
            rest["time"] = nil
            #expect(rest == [
                "cache": "HIT", "label": "mixpeek-proxy", "level": "info", "message": "request", "method": "GET", "ms": "0.13",
                "request_id": "abc", "route": "list", "status": "200",
            ])
        }
    }

    @Test("a request id with quotes, spaces or control bytes cannot break a line or add a field", arguments: [
        ProxyConfig.LogFormat.text, .json,
    ])
    func hostileRequestID(format: ProxyConfig.LogFormat) async throws {
        let hostile = "a\"b c\\d\u{1}e\r\nroute=x"
        try await Self.withLoops(1) { loops in
            let sink = LineSink()
            var settings = AccessLog.Settings()
            settings.format = format
            let log = AccessLog(sink: sink, eventLoops: loops, settings: settings)
            try await loops[0].submit { log.record(Self.entry(0, requestID: hostile), on: loops[0]) }.get()
            await log.close()
            let lines = sink.lines
            try #require(lines.count == 1)
            switch format {
            case .text:
                #expect(lines[0].contains(#" request_id=a"b\x20c\d\x01e\x0d\x0aroute=x route=list "#))
            case .json:
                let object = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: String]
                #expect(object?["request_id"] == hostile)
                #expect(object?["route"] == "list")
            }
        }
    }

    @Test("a burst of 20,000 lines from two loops, as fast as they can be formatted, reaches the file, none dropped")
    func burst() async throws {
        let path = Self.temporaryFile()
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await Self.withLoops(2) { loops in
            let log = AccessLog(sink: try FileSink(path: path), eventLoops: loops)
            try await Self.record(10_000, on: loops, into: log)
            await log.close()
            #expect(log.droppedLines == 0)
            #expect(log.writtenLines == 20_000)
        }
        let lines = Self.lines(in: path)
        #expect(lines.count == 20_000)
        // Field 7 of a text line is `request_id=req-<n>`: each of the 10,000 ids twice, once per loop.
        #expect(Set(lines.map { $0.split(separator: " ")[6] }).count == 10_000)
    }

    @Test("when the writer is stuck, recording does not wait: lines are dropped and counted")
    func droppedWhenBlocked() async throws {
        try await Self.withLoops(1) { loops in
            let sink = LineSink()
            sink.hold()
            var settings = AccessLog.Settings()
            settings.flushBytes = 4096
            settings.queueBytes = 64 << 10
            let log = AccessLog(sink: sink, eventLoops: loops, settings: settings)
            // The sink is held throughout: had recording waited for room, this would never return.
            try await Self.record(3_000, on: loops, into: log)
            #expect(log.droppedLines > 0)
            sink.release()
            await log.close()
            #expect(log.writtenLines + log.droppedLines == 3_000)
            #expect(sink.lines.count == log.writtenLines)
        }
    }

    @Test("an idle loop's line reaches the sink within about a second")
    func idleFlush() async throws {
        try await Self.withLoops(1) { loops in
            let sink = LineSink()
            let log = AccessLog(sink: sink, eventLoops: loops)
            try await loops[0].submit { log.record(Self.entry(0), on: loops[0]) }.get()
            let started = ContinuousClock.now
            let arrived = await eventually(within: 5) { sink.lines.count == 1 }
            #expect(arrived)
            // The flush runs once a second; the margin is for a loaded machine (CI), not for
            // a writer that never flushes an idle loop, which would miss the 5 s above.
            #expect(ContinuousClock.now - started < .milliseconds(2500))
            await log.close()
        }
    }

    @Test("close writes every line still buffered")
    func closeFlushes() async throws {
        try await Self.withLoops(2) { loops in
            let sink = LineSink()
            var settings = AccessLog.Settings()
            settings.flushInterval = .hours(1)
            settings.flushBytes = 1 << 20
            let log = AccessLog(sink: sink, eventLoops: loops, settings: settings)
            try await Self.record(100, on: loops, into: log)
            try await Task.sleep(for: .milliseconds(100))
            #expect(sink.lines.isEmpty, "held in the loops' buffers until close")
            await log.close()
            #expect(sink.lines.count == 200)
        }
    }

    @Test("reopen after a rename (logrotate): lines recorded before it go to the renamed file, later ones to a new one")
    func reopenAfterRename() async throws {
        let path = Self.temporaryFile()
        let rotated = path + ".1"
        defer {
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: rotated)
        }
        try await Self.withLoops(1) { loops in
            let log = AccessLog(sink: try FileSink(path: path), eventLoops: loops)
            try await Self.record(3, on: loops, into: log)
            await log.flush()
            try FileManager.default.moveItem(atPath: path, toPath: rotated)
            try await Self.record(1, on: loops, into: log)
            await log.reopen()
            try await Self.record(2, on: loops, into: log)
            await log.close()
        }
        #expect(Self.lines(in: rotated).count == 4, "the lines recorded before the reopen, even those still buffered")
        #expect(Self.lines(in: path).count == 2)
    }

    @Test("through the proxy: every request's line is in the access_log file once it has shut down")
    func proxyWritesFile() async throws {
        let path = Self.temporaryFile()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let proxy = try await TestProxy.start(configure: { $0.accessLog = .file(path) })
        for _ in 0..<20 { _ = try await proxy.list() }
        _ = try await proxy.create(name: "logged")
        await proxy.stop()
        proxy.removeData()
        let lines = Self.lines(in: path)
        #expect(lines.count == 21)
        #expect(lines.filter { $0.contains("route=list") && $0.contains("cache=HIT") }.count == 19)
        #expect(lines.last?.contains("route=create") == true)
    }

    @Test("access_log = off writes nothing")
    func off() async throws {
        let sink = LineSink()
        let fake = try await FakeUpstreamServer.start()
        var config = ProxyConfig()
        config.port = 0
        config.upstream = fake.url
        config.dataDir = TestProxy.makeDataDir()
        config.accessLog = .off
        defer { try? FileManager.default.removeItem(atPath: config.dataDir) }
        let app = try await ProxyApp.start(config: config, accessLogSink: sink)
        let client = try await TestProxy.start(fake: fake)
        _ = try await client.request(.GET, TestProxy.path(), base: app.url)
        _ = try await client.request(.GET, TestProxy.path(), base: app.url)
        await app.shutdown()
        await client.stop()
        client.removeData()
        #expect(app.proxy.accessLog == nil)
        #expect(sink.text.isEmpty)
    }
}
