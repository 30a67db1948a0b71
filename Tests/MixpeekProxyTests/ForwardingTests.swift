import Foundation
import MixpeekFake
import MixpeekProxy
import NIOHTTP1
import Testing

@Suite("Forwarding through the proxy")
struct ForwardingTests {
    @Test("each of the five calls reaches the upstream with its method, target, body and headers")
    func fiveCallsArriveIntact() async throws {
        try await withTestProxy { proxy in
            let created = try await proxy.create(name: "ci-key")
            #expect(created.status == 200)
            #expect((created.json["key"] as? String)?.hasPrefix("sk_") == true)
            let create = try #require(proxy.controls.lastRequest(.create))
            #expect(create.method == .POST)
            #expect(create.target == "/v1/organizations/users/alice@example.com/api-keys")
            #expect(String(buffer: try #require(create.body)) == #"{"name": "ci-key"}"#)
            #expect(create.headers.first(name: "authorization") == "Bearer \(TestProxy.token)")
            #expect(create.headers.first(name: "content-type") == "application/json")
            #expect(create.headers.first(name: "via") == "1.1 mixpeek-proxy")
            #expect(create.headers.first(name: "host") == "127.0.0.1:\(proxy.fake.port)")

            let listed = try await proxy.list(query: "include_revoked=true")
            #expect(listed.keyNames == ["admin-key", "ci-key"])
            #expect(proxy.controls.lastRequest(.list)?.target == "/v1/organizations/users/alice@example.com/api-keys?include_revoked=true")
            #expect(proxy.controls.lastRequest(.list)?.method == .GET)

            let updated = try await proxy.update(key: "ci-key", json: #"{"description": "nightly"}"#)
            #expect(updated.status == 200)
            #expect(updated.json["description"] as? String == "nightly")
            #expect(proxy.controls.lastRequest(.update)?.method == .PATCH)
            #expect(String(buffer: try #require(proxy.controls.lastRequest(.update)?.body)) == #"{"description": "nightly"}"#)

            let rotated = try await proxy.rotate(key: "ci-key")
            #expect(rotated.status == 200)
            #expect(rotated.json["key"] as? String != created.json["key"] as? String)
            #expect(proxy.controls.lastRequest(.rotate)?.target == "/v1/organizations/users/alice@example.com/api-keys/ci-key/rotate")

            let deleted = try await proxy.delete(key: "ci-key")
            #expect(deleted.status == 200)
            #expect(deleted.json["success"] as? Bool == true)
            #expect(proxy.controls.lastRequest(.delete)?.method == .DELETE)
        }
    }

    @Test("every upstream error status and body comes back unchanged", arguments: [400, 401, 403, 404, 422, 429, 500, 503])
    func upstreamStatusesPassThrough(status: Int) async throws {
        try await withTestProxy { proxy in
            let code = HTTPResponseStatus(statusCode: status)
            proxy.controls.setFault(.status(code), for: .update)
            let response = try await proxy.update(key: "some-key")
            #expect(response.status == status)
            #expect(response.json["success"] as? Bool == false)
            #expect(response.json["status"] as? Int == status)
            #expect(response.error?["message"] as? String == "injected fault")
            #expect(response.error?["type"] as? String == "injected_fault")
        }
    }

    @Test("a real 401, 403 and 404 from the upstream reach the client as sent")
    func realRefusals() async throws {
        try await withTestProxy { proxy in
            let statuses = [
                try await proxy.list(token: nil).status,
                try await proxy.list(token: "not-a-key").status,
                try await proxy.delete(key: "admin-key").status,
                try await proxy.rotate(key: "no-such-key").status,
                try await proxy.request(.POST, TestProxy.path(), json: #"{"description": "no name"}"#).status,
            ]
            #expect(statuses == [401, 401, 403, 404, 422])
        }
    }

    @Test("hop-by-hop headers are dropped in both directions, end-to-end headers kept")
    func hopByHopStripped() async throws {
        try await withTestProxy { proxy in
            let headers: HTTPHeaders = [
                "Connection": "X-Private-Hop", "X-Private-Hop": "secret-hop", "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic abc", "TE": "trailers", "Trailer": "X-Checksum",
                "Upgrade": "websocket", "X-Custom": "kept", "Accept": "application/json",
            ]
            _ = try await proxy.request(.PATCH, TestProxy.path(key: "k"), headers: headers, json: "{}")
            let seen = try #require(proxy.controls.lastRequest(.update)).headers
            for dropped in ["x-private-hop", "keep-alive", "proxy-authorization", "te", "trailer", "upgrade", "transfer-encoding"] {
                #expect(!seen.contains(name: dropped), "\(dropped) crossed the proxy")
            }
            #expect(seen.first(name: "x-custom") == "kept")
            #expect(seen.first(name: "accept") == "application/json")
            #expect(seen["connection"].allSatisfy { !$0.lowercased().contains("x-private-hop") })
        }
    }

    @Test("a response header named in Connection or hop-by-hop does not reach the client")
    func hopByHopStrippedFromResponses() async throws {
        let upstream = StubUpstream { _ in
            UpstreamResponse(
                status: .ok,
                headers: ["Connection": "X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=9", "Upgrade": "h2c", "X-End": "2", "Content-Type": "application/json"],
                body: .init(string: "{}"))
        }
        let raw = try await withStubProxy(upstream) { app, _ in
            try await rawExchange(port: app.port, Array("GET /v1/other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
        }
        let head = raw.text.lowercased()
        #expect(head.hasPrefix("http/1.1 200"))
        #expect(head.contains("x-end: 2"))
        #expect(!head.contains("x-hop"))
        #expect(!head.contains("keep-alive: timeout=9"))
        #expect(!head.contains("upgrade"))
        #expect(head.contains("via: 1.1 mixpeek-proxy"))
    }

    @Test("an upstream header that would split the response is never written: 500 in the error shape instead")
    func unsendableResponseHeader() async throws {
        for (name, value) in [("X-Evil", "a\r\nSet-Cookie: session=stolen"), ("X-Evil", "nul\u{0}byte"), ("Bad Name", "v"), ("X:Colon", "v")] {
            let upstream = StubUpstream { _ in
                UpstreamResponse(status: .ok, headers: ["Content-Type": "application/json", name: value], body: .init(string: "{}"))
            }
            let raw = try await withStubProxy(upstream) { app, _ in
                try await rawExchange(port: app.port, Array("GET /v1/other HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            }
            #expect(raw.text.hasPrefix("HTTP/1.1 500 Internal Server Error\r\n"), "\(name): \(value)")
            #expect(!raw.text.lowercased().contains("set-cookie"))
            #expect(!raw.text.contains("nul"))
            #expect(raw.text.contains(#""type":"#))
            #expect(raw.closed)
        }
    }

    @Test("an HTTP/1.0 client gets HTTP/1.0 responses, kept alive only when it asks")
    func http10() async throws {
        try await withTestProxy { proxy in
            let keepAlive = try await rawExchange(
                port: proxy.app.port,
                Array("GET /_proxy/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /_proxy/health HTTP/1.0\r\n\r\n".utf8))
            let heads = keepAlive.text.components(separatedBy: "HTTP/1.0 200 OK\r\n").dropFirst()
            #expect(heads.count == 2)
            #expect(heads.first?.lowercased().contains("connection: keep-alive") == true)
            #expect(heads.last?.lowercased().contains("connection: close") == true)
            #expect(keepAlive.closed)
        }
    }

    @Test("a body over 1 MiB gets 413 in the error shape and nothing is forwarded")
    func bodyTooLarge() async throws {
        try await withTestProxy { proxy in
            let big = "{\"name\": \"" + String(repeating: "a", count: (1 << 20) + 10) + "\"}"
            let response = try await proxy.request(.POST, TestProxy.path(), json: big)
            #expect(response.status == 413)
            #expect(response.json["status"] as? Int == 413)
            #expect(response.error?["type"] as? String == "payload_too_large")
            #expect(proxy.controls.totalCalls == 0)
            let audit = try AuditLog(path: proxy.dataDir + "/audit.sqlite", logger: .init(label: "t"))
            #expect(try audit.count() == 0)
        }
    }

    @Test("a chunked body over the limit gets 413 and nothing is forwarded")
    func chunkedBodyTooLarge() async throws {
        try await withTestProxy { proxy in
            var bytes = Array("POST /v1/organizations/users/a@b.c/api-keys HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer \(TestProxy.token)\r\n\r\n".utf8)
            let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 65536)
            for _ in 0..<20 {
                bytes += Array("10000\r\n".utf8) + chunk + Array("\r\n".utf8)
            }
            bytes += Array("0\r\n\r\n".utf8)
            let raw = try await rawExchange(port: proxy.app.port, bytes)
            #expect(raw.text.hasPrefix("HTTP/1.1 413"))
            #expect(raw.closed)
            #expect(proxy.controls.totalCalls == 0)
        }
    }

    @Test("an unreachable upstream gives 502 in the error shape")
    func unreachableUpstream() async throws {
        try await withTestProxy(configure: { $0.upstream = "http://127.0.0.1:1" }) { proxy in
            let response = try await proxy.list()
            #expect(response.status == 502)
            #expect(response.json["success"] as? Bool == false)
            #expect(response.error?["type"] as? String == "upstream_unreachable")
            #expect((response.error?["message"] as? String)?.contains("upstream") == true)
        }
    }

    @Test("an upstream slower than --upstream-timeout gives 504 in the error shape, once the timeout has passed and soon after")
    func slowUpstream() async throws {
        try await withTestProxy(configure: { $0.upstreamTimeout = 0.3 }) { proxy in
            proxy.controls.setFault(.delay(.seconds(2)), for: .update)
            let started = ContinuousClock.now
            let response = try await proxy.update(key: "k")
            let waited = ContinuousClock.now - started
            #expect(response.status == 504)
            #expect(response.error?["type"] as? String == "upstream_timeout")
            // The pool's sweep fails an exchange at most a tenth of the timeout late; the rest
            // of the margin is this machine's (the audit's appends, a loaded CI runner).
            #expect(waited >= .milliseconds(300) && waited < .milliseconds(1_200), "answered after \(waited)")
        }
    }

    @Test("absolute-form targets for another host and CONNECT are refused, nothing forwarded")
    func notAnOpenProxy() async throws {
        try await withTestProxy { proxy in
            let port = proxy.app.port
            let absolute = try await rawExchange(port: port, Array("GET http://example.com/v1/organizations/users/a@b.c/api-keys HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".utf8))
            #expect(absolute.text.hasPrefix("HTTP/1.1 403"))
            let otherHost = try await rawExchange(port: port, Array("GET http://evil.example/v1/x HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n\r\n".utf8))
            #expect(otherHost.text.hasPrefix("HTTP/1.1 403"))
            let connect = try await rawExchange(port: port, Array("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".utf8))
            #expect(connect.text.hasPrefix("HTTP/1.1 4"))
            #expect(proxy.controls.totalCalls == 0)
        }
    }

    @Test("an absolute-form target naming the proxy itself is served")
    func absoluteFormForSelf() async throws {
        try await withTestProxy { proxy in
            let port = proxy.app.port
            let raw = try await rawExchange(port: port, Array("GET http://127.0.0.1:\(port)/v1/organizations/users/a@b.c/api-keys HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nAuthorization: Bearer \(TestProxy.token)\r\nConnection: close\r\n\r\n".utf8))
            #expect(raw.text.hasPrefix("HTTP/1.1 200"))
            #expect(proxy.controls.lastRequest(.list)?.target == "/v1/organizations/users/a@b.c/api-keys")
        }
    }

    @Test("the target is forwarded byte for byte: escapes in either hex case, .. inside a name, + untouched")
    func targetNotRenormalised() async throws {
        try await withTestProxy { proxy in
            let target = "/v1/organizations/users/alice%2Bci%40example.com/api-keys/a%3ab..%3A+c/rotate"
            _ = try await proxy.request(.POST, target)
            #expect(proxy.controls.lastRequest(.rotate)?.target == target)
            let traversal = "/v1/collections/..%2F..%2Fadmin?x=a+b%20c"
            _ = try await proxy.request(.GET, traversal)
            #expect(proxy.controls.lastRequest(.other)?.target == traversal)
        }
    }

    @Test("other /v1 paths pass through unless pass-through is off")
    func passThroughSwitch() async throws {
        try await withTestProxy { proxy in
            let response = try await proxy.request(.GET, "/v1/collections")
            #expect(response.status == 404)
            #expect(proxy.controls.calls(.other) == 1)
        }
        try await withTestProxy(configure: { $0.passThrough = false }) { proxy in
            let response = try await proxy.request(.GET, "/v1/collections")
            #expect(response.status == 404)
            #expect(response.error?["type"] as? String == "not_found")
            #expect(proxy.controls.totalCalls == 0)
        }
    }

    @Test("a wrong method on an API-keys path is refused with 405 and Allow, not forwarded")
    func wrongMethod() async throws {
        try await withTestProxy { proxy in
            let response = try await proxy.request(.PUT, TestProxy.path(key: "k"), json: "{}")
            #expect(response.status == 405)
            #expect(response.header("allow") == "PATCH, DELETE")
            #expect(proxy.controls.totalCalls == 0)
        }
    }

    @Test("health answers 200 and the request id is echoed or generated")
    func healthAndRequestID() async throws {
        try await withTestProxy { proxy in
            let health = try await proxy.request(.GET, "/_proxy/health", token: nil)
            #expect(health.status == 200)
            #expect(health.json["status"] as? String == "ok")
            let echoed = try await proxy.list(headers: ["X-Request-Id": "job-42"])
            #expect(echoed.header("x-request-id") == "job-42")
            #expect(proxy.controls.lastRequest(.list)?.headers.first(name: "x-request-id") == "job-42")
            let generated = try await proxy.list(headers: ["X-Request-Id": String(repeating: "x", count: 129)])
            #expect(generated.header("x-request-id")?.count == 36)
        }
    }

    @Test("pipelined requests on one connection are answered in order")
    func pipelining() async throws {
        try await withTestProxy { proxy in
            proxy.controls.setFault(.delay(.milliseconds(200)), for: .other)
            let auth = "Authorization: Bearer \(TestProxy.token)\r\n"
            let requests = "GET /v1/slow HTTP/1.1\r\nHost: x\r\n\(auth)\r\n"
                + "GET /_proxy/health HTTP/1.1\r\nHost: x\r\n\r\n"
                + "GET /v1/organizations/users/a@b.c/api-keys HTTP/1.1\r\nHost: x\r\n\(auth)Connection: close\r\n\r\n"
            let raw = try await rawExchange(port: proxy.app.port, Array(requests.utf8))
            let statuses = raw.text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { String($0.prefix(3)) }
            #expect(statuses == ["404", "200", "200"])
            let slowBody = raw.text.range(of: "injected")
            let health = raw.text.range(of: "\"status\":\"ok\"")
            #expect(slowBody == nil)
            #expect(health != nil)
            #expect(raw.closed)
        }
    }
}

/// An upstream answering from a closure, for header and failure cases the fake does not play.
struct StubUpstream: Upstream {
    let answer: @Sendable (UpstreamRequest) async throws -> UpstreamResponse
    init(_ answer: @escaping @Sendable (UpstreamRequest) async throws -> UpstreamResponse) {
        self.answer = answer
    }
    func send(_ request: UpstreamRequest) async throws -> UpstreamResponse {
        try await answer(request)
    }
}
