import Foundation
import Logging
import MixpeekFake
@testable import MixpeekProxy
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

/// HTTP caching as clients expect it of a cache (RFC 9110 §13, RFC 9211): validators and 304,
/// HEAD, and `Cache-Status`, through the real proxy on a real socket.
@Suite("HTTP caching: ETag, 304, HEAD, Cache-Status")
struct ValidatorTests {
    static let auth = "Authorization: Bearer \(TestProxy.token)\r\n"

    static func get(_ path: String = TestProxy.path(), method: String = "GET", _ fields: String = "", auth: String = Self.auth) -> String {
        "\(method) \(path) HTTP/1.1\r\nHost: x\r\n\(auth)\(fields)Connection: close\r\n\r\n"
    }

    static func exchange(_ port: Int, _ request: String, head: Bool = false) async throws -> WireResponse {
        try WireResponse.parse(try await rawExchange(port: port, request).text, heads: [head])[0]
    }

    // MARK: ETag and 304

    @Test("a list carries a strong ETag; If-None-Match with it answers 304 from the cache: ETag, Cache-Status, Age, no body")
    func notModifiedFromCache() async throws {
        try await withTestProxy { proxy in
            let port = proxy.app.port
            let first = try await Self.exchange(port, Self.get())
            let etag = try #require(first.field("ETag"))
            #expect(etag.hasPrefix("\"") && etag.hasSuffix("\"") && !etag.hasPrefix("W/"), "strong: \(etag)")
            #expect(first.field("X-Cache") == "MISS")
            let again = try await Self.exchange(port, Self.get(TestProxy.path(), "If-None-Match: \(etag)\r\n"))
            #expect(again.statusLine == "HTTP/1.1 304 Not Modified")
            #expect(again.field("ETag") == etag)
            #expect(again.field("X-Cache") == "HIT")
            #expect(again.field("Cache-Status")?.hasPrefix("mixpeek-proxy; hit; ttl=") == true)
            #expect(again.field("Age") != nil)
            #expect(again.fields("content-length").isEmpty && again.body.isEmpty)
            // Among other tags, weak or not, and as `*`.
            for condition in ["\"other\", \(etag)", "W/\(etag)", "*"] {
                let matched = try await Self.exchange(port, Self.get(TestProxy.path(), "If-None-Match: \(condition)\r\n"))
                #expect(matched.statusLine == "HTTP/1.1 304 Not Modified", "\(condition)")
            }
            #expect(proxy.controls.calls(.list) == 1, "answered from the cache")
        }
    }

    @Test("an If-None-Match naming another tag gets the whole list, with its ETag")
    func nonMatchingTag() async throws {
        try await withTestProxy { proxy in
            let first = try await Self.exchange(proxy.app.port, Self.get())
            let other = try await Self.exchange(proxy.app.port, Self.get(TestProxy.path(), "If-None-Match: \"not-it\"\r\n"))
            #expect(other.statusLine == "HTTP/1.1 200 OK")
            #expect(other.body == first.body && !other.body.isEmpty)
            #expect(other.field("ETag") == first.field("ETag"))
        }
    }

    @Test("two credentials never share a minted tag, even for the same body")
    func tagPerCredential() async throws {
        let upstream = StubUpstream { _ in
            UpstreamResponse(status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(string: #"{"keys":[],"total":0}"#))
        }
        let (a, b) = try await withStubProxy(upstream) { app, _ in
            (try await Self.exchange(app.port, Self.get()),
             try await Self.exchange(app.port, Self.get(auth: "Authorization: Bearer \(TestProxy.otherToken)\r\n")))
        }
        #expect(a.body == b.body)
        let tagA = try #require(a.field("ETag"))
        let tagB = try #require(b.field("ETag"))
        #expect(tagA != tagB)
    }

    @Test("a mutation makes the old tag stale: If-None-Match with it gets the new list and a new tag")
    func mutationMakesTagStale() async throws {
        try await withTestProxy { proxy in
            let port = proxy.app.port
            let before = try await Self.exchange(port, Self.get())
            let etag = try #require(before.field("ETag"))
            #expect(try await proxy.create(name: "new-key").status == 200)
            let after = try await Self.exchange(port, Self.get(TestProxy.path(), "If-None-Match: \(etag)\r\n"))
            #expect(after.statusLine == "HTTP/1.1 200 OK")
            #expect(after.body.contains("new-key"))
            #expect(after.field("ETag") != etag)
            #expect(after.field("Cache-Status") == "mixpeek-proxy; fwd=uri-miss; stored")
        }
    }

    @Test("a list fetched for the cache never carries the client's If-None-Match upstream; a fetched list the client holds is a 304")
    func conditionsNotForwarded() async throws {
        try await withTestProxy { proxy in
            let port = proxy.app.port
            let first = try await Self.exchange(port, Self.get())
            let etag = try #require(first.field("ETag"))
            // A refresh goes upstream: the tag is the proxy's own and means nothing there.
            let refreshed = try await Self.exchange(
                port, Self.get(TestProxy.path(), "If-None-Match: \(etag)\r\nIf-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\nCache-Control: no-cache\r\n"))
            let forwarded = try #require(proxy.controls.lastRequest(.list))
            #expect(proxy.controls.calls(.list) == 2)
            #expect(!forwarded.headers.contains(name: "if-none-match") && !forwarded.headers.contains(name: "if-modified-since"))
            // The fake's list is the same again (no mutation between), so the client's copy is current.
            #expect(refreshed.statusLine == "HTTP/1.1 304 Not Modified")
            #expect(refreshed.field("Cache-Status") == "mixpeek-proxy; fwd=request; stored")
            #expect(refreshed.field("ETag") == etag)
        }
    }

    @Test("the upstream's own ETag is kept, stored and matched")
    func upstreamTag() async throws {
        let upstream = StubUpstream { _ in
            UpstreamResponse(
                status: .ok, headers: ["content-type": "application/json", "ETag": "\"up-1\""],
                body: ByteBuffer(string: #"{"keys":[],"total":0}"#))
        }
        let (miss, hit) = try await withStubProxy(upstream) { app, _ in
            (try await Self.exchange(app.port, Self.get()),
             try await Self.exchange(app.port, Self.get(TestProxy.path(), "If-None-Match: \"up-1\"\r\n")))
        }
        #expect(miss.fields("etag") == ["\"up-1\""])
        #expect(hit.statusLine == "HTTP/1.1 304 Not Modified")
        #expect(hit.field("ETag") == "\"up-1\"")
    }

    @Test("If-None-Match is read as RFC 9110 says: lists, weak tags, *; a malformed one matches nothing")
    func ifNoneMatchParsing() {
        let tag = "\"mpx-abc\""
        func matches(_ values: [String]) -> Bool {
            Validators.ifNoneMatch(HTTPHeaders(values.map { ("If-None-Match", $0) }), matches: tag)
        }
        #expect(matches([tag]))
        #expect(matches(["\"a\" , W/\"mpx-abc\""]))
        #expect(matches(["\"a\"", tag]))
        #expect(matches(["*"]))
        #expect(!matches(["\"a\", \"b\""]))
        #expect(!matches(["mpx-abc"]))
        #expect(!matches(["\"mpx-ab"]))
        #expect(!matches([]))
        #expect(Validators.ifNoneMatch(["If-None-Match": "\"v\""], matches: "W/\"v\""), "weak comparison")
        let body = ByteBuffer(string: "{}")
        #expect(Validators.mint(credential: "a", body: body) != Validators.mint(credential: "b", body: body))
        #expect(Validators.mint(credential: "a", body: body) == Validators.mint(credential: "a", body: body))
    }

    // MARK: HEAD

    @Test("HEAD on a list is served like GET: fetched as a GET once, then from the cache; same fields, the GET's Content-Length, no body")
    func headOnList() async throws {
        try await withTestProxy { proxy in
            let path = TestProxy.path()
            let reply = try await rawExchange(
                port: proxy.app.port,
                "HEAD \(path) HTTP/1.1\r\nHost: x\r\n\(Self.auth)\r\nHEAD \(path) HTTP/1.1\r\nHost: x\r\n\(Self.auth)\r\n"
                    + "GET \(path) HTTP/1.1\r\nHost: x\r\n\(Self.auth)Connection: close\r\n\r\n")
            let responses = try WireResponse.parse(reply.text, heads: [true, true, false])
            #expect(responses.map(\.statusLine) == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK"])
            #expect(responses.map { $0.field("X-Cache") } == ["MISS", "HIT", "HIT"])
            #expect(proxy.controls.calls(.list) == 1)
            #expect(proxy.controls.lastRequest(.list)?.method == .GET, "fetched whole, to be stored")
            let get = responses[2]
            for head in responses[0...1] {
                #expect(head.body.isEmpty)
                #expect(head.fields("content-length") == [String(get.body.utf8.count)])
                #expect(head.field("ETag") == get.field("ETag"))
                #expect(head.field("Content-Type") == get.field("Content-Type"))
            }
            #expect(responses[1].field("Cache-Status") == get.field("Cache-Status") || responses[1].field("Cache-Status")?.hasPrefix("mixpeek-proxy; hit") == true)
        }
    }

    @Test("HEAD with a matching If-None-Match answers 304")
    func headNotModified() async throws {
        try await withTestProxy { proxy in
            let etag = try #require(try await Self.exchange(proxy.app.port, Self.get()).field("ETag"))
            let head = try await Self.exchange(proxy.app.port, Self.get(TestProxy.path(), method: "HEAD", "If-None-Match: \(etag)\r\n"), head: true)
            #expect(head.statusLine == "HTTP/1.1 304 Not Modified")
            #expect(head.field("ETag") == etag)
        }
    }

    // MARK: Cache-Status

    @Test("Cache-Status says what the cache did: fwd=uri-miss; stored, hit with the ttl left, fwd=request on no-cache, fwd=stale past the TTL, fwd=bypass")
    func cacheStatusValues() async throws {
        let clock = TestClock()
        try await withTestProxy(clock: clock.read, configure: { $0.cacheTTL = 30 }) { proxy in
            let port = proxy.app.port
            #expect(try await Self.exchange(port, Self.get()).field("Cache-Status") == "mixpeek-proxy; fwd=uri-miss; stored")
            clock.advance(10)
            let hit = try await Self.exchange(port, Self.get())
            #expect(hit.field("Cache-Status") == "mixpeek-proxy; hit; ttl=20")
            #expect(hit.field("X-Cache") == "HIT" && hit.field("Age") == "10")
            #expect(try await Self.exchange(port, Self.get(TestProxy.path(), "Cache-Control: no-cache\r\n")).field("Cache-Status")
                    == "mixpeek-proxy; fwd=request; stored")
            clock.advance(31)
            #expect(try await Self.exchange(port, Self.get()).field("Cache-Status") == "mixpeek-proxy; fwd=stale; stored")
            // The upstream fails past the TTL: the stale entry is served, and says so.
            clock.advance(31)
            proxy.controls.setFault(.status(.serviceUnavailable), for: .list)
            let stale = try await Self.exchange(port, Self.get())
            #expect(stale.field("X-Cache") == "STALE")
            #expect(stale.field("Cache-Status") == "mixpeek-proxy; fwd=stale; ttl=-1; detail=stale-if-error")
            proxy.controls.setFault(nil)
            let bypass = try await Self.exchange(port, Self.get(TestProxy.path(query: "limit=10")))
            #expect(bypass.field("X-Cache") == "BYPASS")
            #expect(bypass.field("Cache-Status") == "mixpeek-proxy; fwd=bypass; detail=query")
        }
    }

    @Test("Cache-Status names why a list was not stored: no-store, an error status")
    func cacheStatusNotStored() async throws {
        let status = NIOLockedValueBox(HTTPResponseStatus.ok)
        let upstream = StubUpstream { _ in
            UpstreamResponse(
                status: status.withLockedValue { $0 }, headers: ["content-type": "application/json", "cache-control": "no-store"],
                body: ByteBuffer(string: #"{"keys":[],"total":0}"#))
        }
        let (noStore, refused) = try await withStubProxy(upstream) { app, _ in
            let noStore = try await Self.exchange(app.port, Self.get())
            status.withLockedValue { $0 = .unauthorized }
            return (noStore, try await Self.exchange(app.port, Self.get()))
        }
        #expect(noStore.field("Cache-Status") == "mixpeek-proxy; fwd=uri-miss; detail=no-store")
        #expect(noStore.field("ETag") == nil, "nothing stored, no tag minted")
        #expect(refused.field("Cache-Status") == "mixpeek-proxy; fwd=uri-miss; detail=status")
    }

    @Test("a list the upstream could not answer, with nothing cached: 502 in the error shape, and Cache-Status says so")
    func cacheStatusUpstreamFailed() async throws {
        let upstream = StubUpstream { _ in throw UpstreamError.unreachable("connection refused") }
        let failed = try await withStubProxy(upstream) { app, _ in try await Self.exchange(app.port, Self.get()) }
        #expect(failed.statusLine == "HTTP/1.1 502 Bad Gateway")
        #expect(failed.field("Cache-Status") == "mixpeek-proxy; fwd=uri-miss; detail=upstream-failed")
    }

    @Test("concurrent misses: the request that shared the leader's fetch is collapsed; both get the stored list's tag")
    func collapsedFetch() async throws {
        let cache = ProxyListCache(settings: .init(ttl: 60, staleIfError: 0, memoryBytes: 1 << 20), store: nil, logger: Logger(label: "test"))
        let looked = cache.lookup(authorization: "Bearer sk_a", user: "alice@example.com", includeRevoked: false, refresh: false)
        let key = looked.key
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let upstream = loop.makePromise(of: ProxyListCache.FetchOutcome.self)
        let fetches = NIOLockedValueBox(0)
        let fetch: @Sendable () -> EventLoopFuture<ProxyListCache.FetchOutcome> = {
            fetches.withLockedValue { $0 += 1 }
            return upstream.futureResult
        }
        // Both asked before the upstream answers: the second joins the first's fetch.
        let first = cache.answer(key, credential: looked.credential, refresh: false, on: loop, fetch: fetch)
        let second = cache.answer(key, credential: looked.credential, refresh: false, on: loop, fetch: fetch)
        upstream.succeed(.response(UpstreamResponse(
            status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(string: #"{"keys":[],"total":0}"#))))
        var forwards: [ListForward] = []
        var tags: [String?] = []
        for answer in [try await first.get(), try await second.get()] {
            guard case .fetched(let fetched, let forward) = answer else {
                Issue.record("a miss must be fetched: \(answer)")
                return
            }
            forwards.append(forward)
            tags.append(fetched.entry?.etag)
            #expect(fetched.notStored == nil)
        }
        #expect(fetches.withLockedValue { $0 } == 1)
        #expect(forwards == [ListForward(reason: .uriMiss, coalesced: false), ListForward(reason: .uriMiss, coalesced: true)])
        #expect(CacheStatus.forwarded(forwards[1], stored: true, detail: nil) == "mixpeek-proxy; fwd=uri-miss; stored; collapsed")
        #expect(tags[0] != nil && tags[0] == tags[1])
    }
}
