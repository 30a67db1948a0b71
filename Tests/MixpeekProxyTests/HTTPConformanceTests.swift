import Foundation
import MixpeekProxy
import NIOCore
import NIOHTTP1
import Testing

/// HTTP/1.1 as RFC 9110 and 9112 say, through the real proxy on a real socket and read as a
/// strict client reads it: each response framed by its own head, a keep-alive connection
/// reused. (`MixpeekHTTPTests` checks the server's connection handler byte for byte.)
@Suite("HTTP conformance")
struct HTTPConformanceTests {
    static let auth = "Authorization: Bearer \(TestProxy.token)\r\n"

    // MARK: HEAD

    @Test("HEAD /_proxy/health then GET on one connection: the HEAD answer has no body, the GET's is whole")
    func headThenGetHealth() async throws {
        try await withTestProxy { proxy in
            let reply = try await rawExchange(
                port: proxy.app.port,
                "HEAD /_proxy/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /_proxy/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            let responses = try WireResponse.parse(reply.text, heads: [true, false])
            #expect(responses.map(\.statusLine) == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"])
            #expect(responses[1].body == #"{"audit":"ok","status":"ok"}"#)
            #expect(responses[0].field("content-length") == String(responses[1].body.utf8.count), "HEAD states what GET gets")
        }
    }

    @Test("HEAD on an API-keys list: 200 without a body, the GET's Content-Length, and the connection serves the next request")
    func headOnAPIKeysPath() async throws {
        try await withTestProxy { proxy in
            let path = TestProxy.path()
            let reply = try await rawExchange(
                port: proxy.app.port,
                "HEAD \(path) HTTP/1.1\r\nHost: x\r\n\(Self.auth)\r\nGET \(path) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Connection: close\r\n\r\n")
            let responses = try WireResponse.parse(reply.text, heads: [true, false])
            #expect(responses[0].statusLine == "HTTP/1.1 200 OK")
            #expect(responses[0].field("content-length") == String(responses[1].body.utf8.count))
            #expect(responses[1].statusLine == "HTTP/1.1 200 OK")
            #expect(responses[1].field("X-Cache") == "HIT")
            #expect(proxy.controls.calls(.list) == 1, "the GET was answered from what the HEAD fetched")
        }
    }

    @Test("a method a list path does not have: 405 with Allow: GET, HEAD, POST, never forwarded")
    func wrongMethodOnList() async throws {
        try await withTestProxy { proxy in
            let reply = try await rawExchange(
                port: proxy.app.port, "PUT \(TestProxy.path()) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Content-Length: 0\r\nConnection: close\r\n\r\n")
            let response = try WireResponse.parse(reply.text, heads: [false])[0]
            #expect(response.statusLine == "HTTP/1.1 405 Method Not Allowed")
            #expect(response.field("allow") == "GET, HEAD, POST")
            #expect(proxy.controls.totalCalls == 0)
        }
    }

    @Test("HEAD on a pass-through path is forwarded as HEAD: no body, and the upstream's Content-Length is the GET's")
    func headPassThroughThroughFake() async throws {
        try await withTestProxy { proxy in
            let path = "/v1/namespaces"
            let reply = try await rawExchange(
                port: proxy.app.port,
                "HEAD \(path) HTTP/1.1\r\nHost: x\r\n\(Self.auth)\r\nGET \(path) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Connection: close\r\n\r\n")
            let responses = try WireResponse.parse(reply.text, heads: [true, false])
            #expect(responses[0].statusLine == responses[1].statusLine)
            #expect(!responses[1].body.isEmpty)
            #expect(responses[0].field("content-length") == String(responses[1].body.utf8.count))
            #expect(proxy.controls.calls(.other) == 2)
        }
    }

    @Test("HEAD on a pass-through path keeps the upstream's fields as it sent them, its Content-Length included, once")
    func headPassThroughKeepsUpstreamHeaders() async throws {
        let upstream = StubUpstream { request in
            request.method == .HEAD
                ? UpstreamResponse(
                    status: .ok, headers: ["Content-Length": "1234", "ETag": "\"v1\"", "x-lower": "kept", "Content-Type": "application/json"],
                    body: ByteBuffer())
                : UpstreamResponse(status: .ok, headers: ["Content-Type": "application/json"], body: ByteBuffer(string: "{}"))
        }
        let reply = try await withStubProxy(upstream) { app, _ in
            try await rawExchange(port: app.port, "HEAD /v1/other HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        }
        let responses = try WireResponse.parse(reply.text, heads: [true, false])
        #expect(responses[0].head.contains("\r\nContent-Length: 1234\r\n"))
        #expect(responses[0].head.contains("\r\nETag: \"v1\"\r\n"))
        #expect(responses[0].head.contains("\r\nx-lower: kept\r\n"))
        #expect(responses[0].fields("content-length") == ["1234"])
        #expect(responses[1].body == "{}")
    }

    // MARK: 204 and 304

    @Test("an upstream 204 goes on without Content-Length, a 304 without a body and with its Content-Length")
    func bodylessStatuses() async throws {
        let upstream = StubUpstream { request in
            switch request.target {
            case "/v1/gone": UpstreamResponse(status: .noContent, headers: ["Content-Length": "0", "X-A": "1"], body: ByteBuffer())
            case "/v1/same": UpstreamResponse(status: .notModified, headers: ["Content-Length": "50", "ETag": "\"v1\""], body: ByteBuffer())
            default: UpstreamResponse(status: .ok, headers: [:], body: ByteBuffer(string: "next"))
            }
        }
        let reply = try await withStubProxy(upstream) { app, _ in
            try await rawExchange(
                port: app.port,
                "DELETE /v1/gone HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/same HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\n\r\n"
                    + "GET /v1/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        }
        let responses = try WireResponse.parse(reply.text, heads: [false, false, false])
        #expect(responses[0].statusLine == "HTTP/1.1 204 No Content")
        #expect(responses[0].fields("content-length") == [])
        #expect(responses[0].field("X-A") == "1")
        #expect(responses[1].statusLine == "HTTP/1.1 304 Not Modified")
        #expect(responses[1].fields("content-length") == ["50"])
        #expect(responses[2].body == "next")
    }

    // MARK: Expect: 100-continue

    @Test("Expect: 100-continue on a create: 100 Continue before the body is sent, then the create's answer")
    func continueOnCreate() async throws {
        try await withTestProxy { proxy in
            let body = #"{"name": "ci"}"#
            let connection = try await RawConnection.open(port: proxy.app.port)
            try await connection.send(
                "POST \(TestProxy.path()) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Content-Type: application/json\r\n"
                    + "Content-Length: \(body.utf8.count)\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
            let continued = "HTTP/1.1 100 Continue\r\n\r\n"
            #expect(await eventually { connection.text == continued })
            #expect(proxy.controls.calls(.create) == 0)
            try await connection.send(body)
            #expect(await connection.closedByServer(within: .seconds(5)))
            let final = try WireResponse.parse(String(connection.text.dropFirst(continued.count)), heads: [false])
            #expect(final[0].statusLine == "HTTP/1.1 200 OK")
            #expect(final[0].body.contains(#""name":"ci""#))
            #expect(proxy.controls.calls(.create) == 1)
        }
    }

    @Test("Expect: 100-continue with a declared body over the limit: 413 in the error shape at once, never 100, nothing forwarded")
    func continueRefusedWhenTooLarge() async throws {
        try await withTestProxy { proxy in
            let reply = try await rawExchange(
                port: proxy.app.port,
                "POST \(TestProxy.path()) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Content-Length: 2000000\r\nExpect: 100-continue\r\n\r\n")
            #expect(reply.text.hasPrefix("HTTP/1.1 413 Payload Too Large\r\n"))
            #expect(!reply.text.contains("100 Continue"))
            #expect(reply.text.contains(#""type":"payload_too_large""#))
            #expect(reply.closed)
            #expect(proxy.controls.totalCalls == 0)
        }
    }

    @Test("an expectation other than 100-continue: 417 in the error shape, nothing forwarded")
    func unknownExpectation() async throws {
        try await withTestProxy { proxy in
            let reply = try await rawExchange(
                port: proxy.app.port,
                "POST \(TestProxy.path()) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Content-Length: 2\r\nExpect: 200-ok\r\n\r\n{}")
            #expect(reply.text.hasPrefix("HTTP/1.1 417 Expectation Failed\r\n"))
            #expect(reply.text.contains(#""type":"expectation_failed""#))
            #expect(reply.closed)
            #expect(proxy.controls.totalCalls == 0)
        }
    }

    // MARK: HTTP/1.0

    @Test("HTTP/1.0: answered and closed, unless the client asks for keep-alive")
    func http10() async throws {
        try await withTestProxy { proxy in
            let once = try await rawExchange(port: proxy.app.port, "GET /_proxy/health HTTP/1.0\r\n\r\n")
            #expect(once.text.hasPrefix("HTTP/1.0 200 OK\r\n"))
            #expect(once.text.contains("\r\nConnection: close\r\n"))
            #expect(once.closed)

            let request = "GET /_proxy/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            let kept = try await rawExchange(port: proxy.app.port, request + request, timeout: .milliseconds(500))
            let responses = try WireResponse.parse(kept.text, heads: [false, false])
            #expect(responses.map { $0.field("connection") } == ["keep-alive", "keep-alive"])
            #expect(!kept.closed)
        }
    }

    // MARK: Header spelling

    @Test("the proxy's own fields are spelled X-Cache, Age, Via, X-Request-Id on the wire (the SDK's headers are a case-sensitive dict)")
    func ownFieldSpelling() async throws {
        try await withTestProxy { proxy in
            let list = "GET \(TestProxy.path()) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Connection: close\r\n\r\n"
            let miss = try await rawExchange(port: proxy.app.port, list).text
            let hit = try await rawExchange(port: proxy.app.port, list).text
            let error = try await rawExchange(port: proxy.app.port, "GET /v2/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").text
            for (text, result) in [(miss, "MISS"), (hit, "HIT")] {
                #expect(text.contains("\r\nX-Cache: \(result)\r\n"), "\(text)")
                #expect(text.contains("\r\nAge: "))
                #expect(text.contains("\r\nVia: 1.1 mixpeek-proxy\r\n"))
                #expect(text.contains("\r\nX-Request-Id: "))
            }
            #expect(hit.contains("\r\nContent-Type: application/json\r\n"))
            #expect(error.hasPrefix("HTTP/1.1 404 "))
            #expect(error.contains("\r\nVia: 1.1 mixpeek-proxy\r\n") && error.contains("\r\nX-Request-Id: "))
            #expect(error.contains("\r\nContent-Type: application/json\r\n"))
        }
    }

    @Test("the upstream's field names pass as it spelled them; its X-Cache is replaced by ours")
    func upstreamFieldSpelling() async throws {
        let upstream = StubUpstream { _ in
            UpstreamResponse(
                status: .ok, headers: ["x-lower": "1", "X-Mixed-Case": "2", "content-type": "application/json", "x-cache": "upstream"],
                body: ByteBuffer(string: #"{"keys": [], "total": 0}"#))
        }
        let text = try await withStubProxy(upstream) { app, _ in
            try await rawExchange(
                port: app.port, "GET \(TestProxy.path()) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Connection: close\r\n\r\n").text
        }
        #expect(text.contains("\r\nx-lower: 1\r\n"))
        #expect(text.contains("\r\nX-Mixed-Case: 2\r\n"))
        #expect(text.contains("\r\ncontent-type: application/json\r\n"))
        #expect(text.contains("\r\nX-Cache: MISS\r\n"))
        #expect(!text.contains("upstream"))
    }
}

/// One response read off the wire as a strict client frames it (RFC 9112 §6.3).
struct WireResponse {
    var head: String
    var body: String

    var statusLine: String { head.components(separatedBy: "\r\n")[0] }

    func fields(_ name: String) -> [String] {
        head.components(separatedBy: "\r\n").dropFirst().compactMap { line in
            guard let colon = line.firstIndex(of: ":"), line[..<colon].lowercased() == name.lowercased() else { return nil }
            return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
    }

    func field(_ name: String) -> String? { fields(name).first }

    enum ParseError: Error { case incomplete(String), leftOver(String) }

    /// Exactly one response per entry of `heads` (true: an answer to HEAD), and nothing after.
    static func parse(_ text: String, heads: [Bool]) throws -> [WireResponse] {
        var rest = Substring(text)
        var responses: [WireResponse] = []
        for isHead in heads {
            guard let end = rest.range(of: "\r\n\r\n") else { throw ParseError.incomplete(String(rest)) }
            var response = WireResponse(head: String(rest[..<end.lowerBound]) + "\r\n", body: "")
            rest = rest[end.upperBound...]
            let code = Int(response.statusLine.split(separator: " ").dropFirst().first ?? "") ?? 0
            if !isHead && code >= 200 && code != 204 && code != 304 {
                let length = Int(response.field("content-length") ?? "") ?? 0
                let bytes = Array(rest.utf8)
                guard bytes.count >= length else { throw ParseError.incomplete(String(rest)) }
                response.body = String(decoding: bytes[..<length], as: UTF8.self)
                rest = Substring(String(decoding: bytes[length...], as: UTF8.self))
            }
            responses.append(response)
        }
        guard rest.isEmpty else { throw ParseError.leftOver(String(rest)) }
        return responses
    }
}
