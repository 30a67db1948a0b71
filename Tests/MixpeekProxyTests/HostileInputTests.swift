import Foundation
import MixpeekFake
import MixpeekProxy
import NIOCore
import NIOPosix
import Testing

/// What nginx and Varnish promise against hostile HTTP: a clear 4xx or a closed connection,
/// never a crash and never a forwarded request.
@Suite("Hostile input")
struct HostileInputTests {
    static let auth = "Authorization: Bearer \(TestProxy.token)\r\n"

    /// Sends raw bytes and checks the proxy answered `status` (or just closed when nil),
    /// forwarded nothing, and still serves the next client.
    func expectRefused(_ raw: String, status: Int?, in proxy: TestProxy, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try await expectRefused(Array(raw.utf8), status: status, in: proxy, sourceLocation: sourceLocation)
    }

    func expectRefused(_ bytes: [UInt8], status: Int?, in proxy: TestProxy, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let reply = try await rawExchange(port: proxy.app.port, bytes)
        if let status {
            #expect(reply.text.hasPrefix("HTTP/1.1 \(status)"), "got: \(reply.text.prefix(200))", sourceLocation: sourceLocation)
            #expect(reply.text.contains("\"success\":false"), sourceLocation: sourceLocation)
        }
        #expect(reply.closed, "the connection should be closed", sourceLocation: sourceLocation)
        #expect(proxy.controls.totalCalls == 0, "nothing may be forwarded", sourceLocation: sourceLocation)
        let health = try await proxy.request(.GET, "/_proxy/health", token: nil)
        #expect(health.status == 200, "the proxy must stay healthy", sourceLocation: sourceLocation)
    }

    @Test("a malformed request line gets 400 in the error shape")
    func malformedRequestLine() async throws {
        try await withTestProxy { proxy in
            try await expectRefused("GARBAGE\r\n\r\n", status: 400, in: proxy)
            try await expectRefused("GET /v1/x HTTP/9.9\r\nHost: x\r\n\r\n", status: 400, in: proxy)
            try await expectRefused("GET /v1/x HTTP/1.1\r\nBad Header\r\n\r\n", status: 400, in: proxy)
        }
    }

    @Test("a header section over 16 KiB gets 431")
    func headerSectionTooLarge() async throws {
        try await withTestProxy { proxy in
            let big = "X-Big: " + String(repeating: "a", count: 17_000) + "\r\n"
            try await expectRefused("GET /v1/organizations/users/a@b.c/api-keys HTTP/1.1\r\nHost: x\r\n\(Self.auth)\(big)\r\n", status: 431, in: proxy)
        }
    }

    @Test("thousands of header fields get 431")
    func tooManyHeaders() async throws {
        try await withTestProxy { proxy in
            let many = (0..<3000).map { "X-H\($0): v\r\n" }.joined()
            try await expectRefused("GET /v1/organizations/users/a@b.c/api-keys HTTP/1.1\r\nHost: x\r\n\(Self.auth)\(many)\r\n", status: 431, in: proxy)
        }
    }

    @Test("Content-Length together with Transfer-Encoding (smuggling) is refused")
    func smuggling() async throws {
        try await withTestProxy { proxy in
            let smuggled = "POST /v1/organizations/users/a@b.c/api-keys HTTP/1.1\r\nHost: x\r\n\(Self.auth)Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nDELETE /v1/organizations/users/a@b.c/api-keys/k HTTP/1.1\r\nHost: x\r\n\r\n"
            try await expectRefused(smuggled, status: 400, in: proxy)
            let doubleLength = "POST /v1/organizations/users/a@b.c/api-keys HTTP/1.1\r\nHost: x\r\n\(Self.auth)Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd"
            try await expectRefused(doubleLength, status: 400, in: proxy)
        }
    }

    @Test("CR, LF, NUL or raw bytes outside URI characters in the target are refused")
    func controlBytesInTarget() async throws {
        try await withTestProxy { proxy in
            try await expectRefused(Array("GET /v1/organizations/users/a\0b/api-keys HTTP/1.1\r\nHost: x\r\n\r\n".utf8), status: 400, in: proxy)
            try await expectRefused("GET /v1/organizations/users/a\rb/api-keys HTTP/1.1\r\nHost: x\r\n\r\n", status: nil, in: proxy)
            try await expectRefused(Array("GET /v1/organizations/users/".utf8) + [0xFF, 0xFE] + Array("/api-keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8), status: 400, in: proxy)
        }
    }

    @Test("non-UTF-8, control-character and very long emails or key names are refused, not forwarded")
    func hostileSegments() async throws {
        try await withTestProxy { proxy in
            for target in [
                "/v1/organizations/users/%FF%FE/api-keys",
                "/v1/organizations/users/a%00b@example.com/api-keys/k",
                "/v1/organizations/users/a@example.com/api-keys/k%0D%0AX-Injected:%201",
                "/v1/organizations/users/" + String(repeating: "a", count: 600) + "@example.com/api-keys",
                "/v1/organizations/users/a@example.com/api-keys/" + String(repeating: "k", count: 600) + "/rotate",
            ] {
                // Raw bytes: an HTTP client library would re-encode such targets itself.
                let raw = try await rawExchange(port: proxy.app.port, Array("DELETE \(target) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Connection: close\r\n\r\n".utf8))
                #expect(raw.text.hasPrefix("HTTP/1.1 400"), "\(target.prefix(80)) got \(raw.text.prefix(40))")
                #expect(raw.text.contains("\"success\":false"))
                #expect(proxy.controls.totalCalls == 0, "\(target.prefix(80)) was forwarded")
            }
            #expect(proxy.controls.totalCalls == 0)
            let audit = try AuditLog(path: proxy.dataDir + "/audit.sqlite", logger: .init(label: "t"))
            #expect(try audit.count() == 0)
        }
    }

    @Test("an idle connection and a client trickling its request (slowloris) are closed at client_timeout")
    func slowClientsTimedOut() async throws {
        try await withTestProxy(configure: { $0.clientTimeout = 0.5 }) { proxy in
            let started = Date()
            let idle = try await rawExchange(port: proxy.app.port, [], timeout: .seconds(3))
            #expect(idle.closed)
            #expect(Date().timeIntervalSince(started) < 2.5)

            let channelText = try await trickle(port: proxy.app.port, "GET /v1/organizations/users/a@b.c/api-keys HTTP/1.1\r\nHost: x\r\n", every: .milliseconds(150))
            #expect(channelText.closedEarly, "a trickling client must be cut off before it finishes")
            #expect(proxy.controls.totalCalls == 0)
        }
    }

    /// Sends `text` one byte every `interval`; reports whether the proxy closed first.
    func trickle(port: Int, _ text: String, every interval: TimeAmount) async throws -> (closedEarly: Bool, Void) {
        let collector = RawCollector()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        for byte in text.utf8 {
            guard channel.isActive else { return (true, ()) }
            try? await channel.writeAndFlush(ByteBuffer(bytes: [byte])).get()
            try await Task.sleep(for: .nanoseconds(interval.nanoseconds))
        }
        let closed = !channel.isActive
        try? await channel.close()
        return (closed, ())
    }

    @Test("random garbage never crashes the server and is never forwarded")
    func garbageFuzz() async throws {
        try await withTestProxy { proxy in
            var generator = SeededGenerator(seed: 0x5eed)
            let pieces = ["GET ", "POST ", "/v1/organizations/users/", "a@b.c", "/api-keys", " HTTP/1.1", "\r\n", ":", "Content-Length: ",
                          "Transfer-Encoding: chunked", "%", "%2F", "..", "\0", "\u{7f}", "é", "Host: x", "99999999999", "\r\n\r\n"]
            for _ in 0..<60 {
                let text = (0..<Int.random(in: 1...20, using: &generator)).map { _ in pieces.randomElement(using: &generator)! }.joined()
                _ = try await rawExchange(port: proxy.app.port, Array(text.utf8) + Array("\r\n\r\n".utf8), timeout: .milliseconds(300))
            }
            let health = try await proxy.request(.GET, "/_proxy/health", token: nil)
            #expect(health.status == 200)
            // Garbage can form a valid request; a mutation among them must have been audited.
            let mutations = proxy.controls.calls(.create) + proxy.controls.calls(.update) + proxy.controls.calls(.rotate) + proxy.controls.calls(.delete)
            let audit = try AuditLog(path: proxy.dataDir + "/audit.sqlite", logger: .init(label: "t"))
            var intents = 0
            try audit.query(AuditFilter()) { _ in intents += 1 }
            #expect(intents == mutations)
        }
    }
}

struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
