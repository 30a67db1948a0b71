import AsyncHTTPClient
import Foundation
import GRDB
import Logging
import MixpeekFake
import MixpeekProxy
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Testing

/// The list cache, end to end: the real proxy on a socket in front of the fake upstream,
/// counting the list calls that reach the fake.
@Suite("List cache")
struct CacheTests {
    static let alice = "alice@example.com"
    static let bob = "bob@example.com"
    /// An upstream timeout for timeout cases: short, yet well above a normal answer's time on a
    /// loaded two-core machine running every suite at once.
    static let shortTimeout = 2.0
    /// A fake delay the proxy gives up on.
    static let pastTheTimeout = TimeAmount.seconds(5)

    // MARK: Hits and keys

    @Test("a second list is a HIT: one upstream call, the same body, with Age")
    func hitAfterMiss() async throws {
        try await withTestProxy { proxy in
            let first = try await proxy.list()
            #expect(first.status == 200)
            #expect(first.xCache == "MISS")
            let second = try await proxy.list()
            #expect(second.status == 200)
            #expect(second.xCache == "HIT")
            #expect(second.body == first.body)
            #expect(second.keyNames == ["admin-key"])
            #expect(second.header("content-type") == first.header("content-type"))
            #expect(second.header("age").flatMap { Int($0) }.map { $0 >= 0 } == true)
            #expect(second.header("via") == "1.1 mixpeek-proxy")
            #expect(proxy.controls.calls(.list) == 1)
        }
    }

    @Test("every list response carries X-Cache and Age, Age counted on the cache's clock")
    func verdictAndAgeOnEveryList() async throws {
        let clock = TestClock()
        try await withTestProxy(clock: clock.read, configure: { $0.cacheTTL = 10; $0.staleIfError = 60 }) { proxy in
            let miss = try await proxy.list()
            clock.advance(4)
            let hit = try await proxy.list()
            let bypass = try await proxy.list(query: "include_session_keys=true")
            clock.advance(20)
            proxy.controls.setFault(.status(.serviceUnavailable), for: .list)
            let stale = try await proxy.list()
            #expect([miss, hit, bypass, stale].map(\.xCache) == ["MISS", "HIT", "BYPASS", "STALE"])
            #expect(hit.header("age") != nil && stale.header("age") != nil)
            #expect(miss.header("age") == "0")
            #expect(bypass.header("age") == "0")
            #expect(hit.header("age") == "4")
            #expect(stale.header("age") == "24")
        }
    }

    @Test("include_revoked=false and include_revoked=true are cached apart")
    func includeRevokedCachedApart() async throws {
        try await withTestProxy { proxy in
            #expect(try await proxy.create(name: "gone").status == 200)
            #expect(try await proxy.delete(key: "gone").status == 200)
            let active = try await proxy.list(query: "include_revoked=false")
            let all = try await proxy.list(query: "include_revoked=true")
            #expect([active.xCache, all.xCache] == ["MISS", "MISS"])
            #expect(active.keyNames == ["admin-key"])
            #expect(all.keyNames == ["admin-key", "gone"])

            // No query is include_revoked=false.
            let activeAgain = try await proxy.list()
            let allAgain = try await proxy.list(query: "include_revoked=true")
            #expect([activeAgain.xCache, allAgain.xCache] == ["HIT", "HIT"])
            #expect(activeAgain.body == active.body)
            #expect(allAgain.body == all.body)
            #expect(proxy.controls.calls(.list) == 2)
        }
    }

    @Test("a list whose query the cache cannot key is BYPASS and forwarded every time", arguments: [
        "include_session_keys=true", "include_revoked=true&include_session_keys=true", "include_revoked=garbage",
        "include_revoked=true&include_revoked=false",
    ])
    func unkeyableQueryBypasses(query: String) async throws {
        try await withTestProxy { proxy in
            _ = try await proxy.list()
            for round in 1...3 {
                let response = try await proxy.list(query: query)
                #expect(response.xCache == "BYPASS")
                #expect(proxy.controls.calls(.list) == 1 + round)
                #expect(proxy.controls.lastRequest(.list)?.target == TestProxy.path(query: query))
            }
        }
    }

    @Test("two credentials on one user never see each other's list, and each costs its own call")
    func credentialsKeptApart() async throws {
        try await withTestProxy { proxy in
            let mine = try await proxy.list(token: TestProxy.token)
            let theirs = try await proxy.list(token: TestProxy.otherToken)
            #expect([mine.xCache, theirs.xCache] == ["MISS", "MISS"])
            #expect(mine.status == 200 && theirs.status == 200)
            #expect(mine.body != theirs.body)
            #expect(proxy.controls.calls(.list) == 2)
            for _ in 0..<2 {
                let mineAgain = try await proxy.list(token: TestProxy.token)
                let theirsAgain = try await proxy.list(token: TestProxy.otherToken)
                #expect([mineAgain.xCache, theirsAgain.xCache] == ["HIT", "HIT"])
                #expect(mineAgain.body == mine.body)
                #expect(theirsAgain.body == theirs.body)
            }
            #expect(proxy.controls.calls(.list) == 2)

            // Without a credential, or with one the upstream refuses, nothing cached is handed out.
            let anonymous = try await proxy.list(token: nil)
            let basic = try await proxy.list(token: nil, headers: ["Authorization": "Basic YWxpY2U6c2VjcmV0"])
            #expect(anonymous.status == 401)
            #expect(basic.status == 401)
            #expect(proxy.controls.calls(.list) == 4)
            #expect(try await proxy.list(token: nil).status == 401)
            #expect(proxy.controls.calls(.list) == 5)
        }
    }

    // MARK: Freshness

    @Test("an entry is a HIT until its TTL has passed, then a MISS", arguments: [64 << 20, 0])
    func ttlExpiry(memoryBytes: Int) async throws {
        let clock = TestClock()
        try await withTestProxy(clock: clock.read, configure: { $0.cacheTTL = 10; $0.cacheMemoryBytes = memoryBytes }) { proxy in
            try await proxy.expectVerdict("MISS")
            clock.advance(9.5)
            try await proxy.expectVerdict("HIT")
            #expect(proxy.controls.calls(.list) == 1)
            clock.advance(1)
            try await proxy.expectVerdict("MISS")
            #expect(proxy.controls.calls(.list) == 2)
            try await proxy.expectVerdict("HIT")
            #expect(proxy.controls.calls(.list) == 2)
        }
    }

    @Test("client no-cache, max-age=0 or Pragma: no-cache refreshes, and the fresh answer is stored", arguments: [
        "Cache-Control: no-cache", "Cache-Control: max-age=0", "Cache-Control: private, no-cache", "Pragma: no-cache",
    ])
    func clientRefresh(header: String) async throws {
        let parts = header.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        try await withTestProxy { proxy in
            let old = try await proxy.list()
            #expect(old.xCache == "MISS")
            // A change made past the proxy (the dashboard, another proxy): only TTL or a refresh shows it.
            try await createPastTheProxy(proxy, name: "outside")
            #expect(try await proxy.list().keyNames == ["admin-key"])

            let refreshed = try await proxy.list(headers: [parts[0]: parts[1]])
            #expect(refreshed.xCache == "MISS")
            #expect(refreshed.keyNames == ["admin-key", "outside"])
            #expect(proxy.controls.calls(.list) == 2)

            let after = try await proxy.list()
            #expect(after.xCache == "HIT")
            #expect(after.keyNames == ["admin-key", "outside"])
            #expect(proxy.controls.calls(.list) == 2)
        }
    }

    @Test("a list answer with Cache-Control no-store or private is never stored, on disk or in memory; public with max-age is", arguments: [
        ("no-store", "MISS"), ("private, No-Store", "MISS"), ("private, max-age=60", "MISS"), ("public, max-age=60", "HIT"),
    ])
    func upstreamNoStore(cacheControl: String, secondResult: String) async throws {
        let calls = NIOLockedValueBox(0)
        let upstream = StubUpstream { _ in
            calls.withLockedValue { $0 += 1 }
            return UpstreamResponse(
                status: .ok, headers: ["content-type": "application/json", "cache-control": cacheControl],
                body: ByteBuffer(string: #"{"keys": [], "total": 0}"#))
        }
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let request = Array("GET \(TestProxy.path()) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(TestProxy.token)\r\nConnection: close\r\n\r\n".utf8)
        let (first, second) = try await withStubProxy(upstream, dataDir: dataDir, logger: Self.quietLogger) { app, _ in
            (try await rawExchange(port: app.port, request).text.lowercased(), try await rawExchange(port: app.port, request).text.lowercased())
        }
        #expect(first.hasPrefix("http/1.1 200"))
        #expect(first.contains("x-cache: miss"))
        #expect(second.contains("x-cache: \(secondResult.lowercased())"))
        #expect(calls.withLockedValue { $0 } == (secondResult == "HIT" ? 1 : 2))
        #expect(try cachedUsers(dataDir).count == (secondResult == "HIT" ? 1 : 0))
    }

    // MARK: Invalidation

    /// A mutation through the proxy, and the status it gets.
    enum Mutation: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case create, update, rotate, delete
        /// 403: the fake protects `admin-key`.
        case refusedDelete
        /// 422: a create without a name.
        case rejectedCreate
        /// 500 injected at the fake.
        case failingUpdate
        /// 504: the fake answers after the proxy gave up.
        case timedOutRotate

        var testDescription: String { rawValue }

        var expectedStatus: Int {
            switch self {
            case .create, .update, .rotate, .delete: 200
            case .refusedDelete: 403
            case .rejectedCreate: 422
            case .failingUpdate: 500
            case .timedOutRotate: 504
            }
        }

        func perform(on proxy: TestProxy) async throws -> TestResponse {
            switch self {
            case .create:
                return try await proxy.create(name: "new-key")
            case .update:
                return try await proxy.update(key: "existing")
            case .rotate:
                return try await proxy.rotate(key: "existing")
            case .delete:
                return try await proxy.delete(key: "existing")
            case .refusedDelete:
                return try await proxy.delete(key: "admin-key")
            case .rejectedCreate:
                return try await proxy.request(.POST, TestProxy.path(), json: "{}")
            case .failingUpdate:
                proxy.controls.setFault(.status(.internalServerError), for: .update)
                return try await proxy.update(key: "existing")
            case .timedOutRotate:
                proxy.controls.setFault(.delay(CacheTests.pastTheTimeout), for: .rotate)
                return try await proxy.rotate(key: "existing")
            }
        }
    }

    @Test("a mutation drops the user's lists for every credential, whatever its outcome, and no other user's",
          arguments: Mutation.allCases)
    func mutationInvalidates(mutation: Mutation) async throws {
        try await withTestProxy(configure: { if mutation == .timedOutRotate { $0.upstreamTimeout = CacheTests.shortTimeout } }) { proxy in
            #expect(try await proxy.create(name: "existing").status == 200)
            let aliceLists: [(token: String, query: String?)] = [
                (TestProxy.token, nil), (TestProxy.token, "include_revoked=true"), (TestProxy.otherToken, nil),
            ]
            for (result, expectedCalls) in [("MISS", 4), ("HIT", 4)] {
                for list in aliceLists {
                    try await proxy.expectVerdict(result, query: list.query, token: list.token)
                }
                try await proxy.expectVerdict(result, user: Self.bob)
                #expect(proxy.controls.calls(.list) == expectedCalls)
            }

            let response = try await mutation.perform(on: proxy)
            #expect(response.status == mutation.expectedStatus)

            for list in aliceLists {
                let after = try await proxy.list(query: list.query, token: list.token)
                #expect(after.xCache == "MISS", "\(list.token.suffix(4)) \(list.query ?? "")")
            }
            #expect(proxy.controls.calls(.list) == 7)
            try await proxy.expectVerdict("HIT", user: Self.bob)
            #expect(proxy.controls.calls(.list) == 7)
        }
    }

    @Test("a list that left before a create and comes back after it is not stored; the next list shows the key")
    func heldListAcrossCreate() async throws {
        try await withTestProxy { proxy in
            proxy.controls.hold(.list)
            let held = Task { try await proxy.list() }
            let listWasHeld = await eventually { proxy.controls.heldCount(.list) == 1 }
            let created = try await proxy.create(name: "fresh")
            proxy.controls.release(.list)
            let old = try await held.value
            #expect(listWasHeld)
            #expect(created.status == 200)
            #expect(old.status == 200)
            // The fake computed the held answer on arrival: this is the race the cache must survive.
            #expect(old.keyNames == ["admin-key"])

            let next = try await proxy.list()
            #expect(next.xCache == "MISS")
            #expect(next.keyNames == ["admin-key", "fresh"])
            let after = try await proxy.list()
            #expect(after.xCache == "HIT")
            #expect(after.keyNames == ["admin-key", "fresh"])
            #expect(proxy.controls.calls(.list) == 2)
        }
    }

    @Test("a list sent after a create's response does not join a fetch that left before it")
    func noJoiningAFetchFromBeforeAMutation() async throws {
        try await withTestProxy { proxy in
            proxy.controls.hold(.list)
            let early = Task { try await proxy.list() }
            let earlyHeld = await eventually { proxy.controls.heldCount(.list) == 1 }
            let created = try await proxy.create(name: "fresh")
            let late = Task { try await proxy.list() }
            let lateHeld = await eventually { proxy.controls.heldCount(.list) == 2 }
            proxy.controls.release(.list)
            let (earlyAnswer, lateAnswer) = (try await early.value, try await late.value)
            #expect(earlyHeld && lateHeld)
            #expect(created.status == 200)
            #expect(earlyAnswer.keyNames == ["admin-key"])
            #expect(lateAnswer.keyNames == ["admin-key", "fresh"])
            #expect(try await proxy.list().keyNames == ["admin-key", "fresh"])
            #expect(proxy.controls.calls(.list) == 2)
        }
    }

    // MARK: Coalescing

    @Test("50 concurrent misses for one key make one upstream call and all get the same answer")
    func concurrentMissesCoalesce() async throws {
        try await withTestProxy { proxy in
            let responses = try await concurrentLists(proxy, count: 50)
            #expect(responses.count == 50)
            #expect(responses.allSatisfy { $0.status == 200 })
            #expect(Set(responses.map(\.body)).count == 1)
            #expect(responses.first?.keyNames == ["admin-key"])
            #expect(responses.filter { $0.xCache == "MISS" }.count == 1)
            #expect(proxy.controls.calls(.list) == 1)
            try await proxy.expectVerdict("HIT")
            #expect(proxy.controls.calls(.list) == 1)
        }
    }

    @Test("concurrent misses share one failed upstream call and all get its error; the next list tries again")
    func concurrentMissesShareAFailure() async throws {
        try await withTestProxy { proxy in
            proxy.controls.setFault(.status(.badGateway), for: .list)
            let responses = try await concurrentLists(proxy, count: 20)
            #expect(responses.count == 20)
            #expect(responses.allSatisfy { $0.status == 502 && $0.error?["type"] as? String == "injected_fault" })
            #expect(proxy.controls.calls(.list) == 1)

            proxy.controls.setFault(nil, for: .list)
            let next = try await proxy.list()
            #expect(next.status == 200)
            #expect(next.xCache == "MISS")
            #expect(proxy.controls.calls(.list) == 2)
        }
    }

    // MARK: Stale if error

    enum Trouble: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case serviceUnavailable, internalServerError, dropConnection, timeout

        var testDescription: String { rawValue }

        var fault: FakeFault {
            switch self {
            case .serviceUnavailable: .status(.serviceUnavailable)
            case .internalServerError: .status(.internalServerError)
            case .dropConnection: .dropConnection
            case .timeout: .delay(CacheTests.pastTheTimeout)
            }
        }

        /// What the client gets once the entry is too old to be served.
        var errorStatus: Int {
            switch self {
            case .serviceUnavailable: 503
            case .internalServerError: 500
            case .dropConnection: 502
            case .timeout: 504
            }
        }
    }

    @Test("past its TTL but inside stale-if-error an entry is served STALE when the upstream fails; later, the error",
          arguments: Trouble.allCases)
    func staleIfError(trouble: Trouble) async throws {
        let clock = TestClock()
        try await withTestProxy(clock: clock.read, configure: { config in
            config.cacheTTL = 10
            config.staleIfError = 60
            if trouble == .timeout { config.upstreamTimeout = CacheTests.shortTimeout }
        }) { proxy in
            let fresh = try await proxy.list()
            #expect(fresh.xCache == "MISS")
            clock.advance(40)
            proxy.controls.setFault(trouble.fault, for: .list)
            let stale = try await proxy.list()
            #expect(stale.status == 200)
            #expect(stale.xCache == "STALE")
            #expect(stale.body == fresh.body)
            #expect(proxy.controls.calls(.list) == 2)

            clock.advance(31)
            let failed = try await proxy.list()
            #expect(failed.status == trouble.errorStatus)
            #expect(failed.xCache != "STALE")
            #expect(proxy.controls.calls(.list) == 3)
        }
    }

    @Test("an unreachable upstream gets a stored entry served STALE, also after a restart")
    func staleWhenUnreachable() async throws {
        let clock = TestClock()
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let settings = { (config: inout ProxyConfig) in
            config.cacheTTL = 10
            config.staleIfError = 60
        }
        let first = try await TestProxy.start(dataDir: dataDir, clock: clock.read, configure: settings)
        let fresh = try await first.list()
        await first.stop()
        clock.advance(40)
        let second = try await TestProxy.start(dataDir: dataDir, clock: clock.read) { config in
            settings(&config)
            config.upstream = "http://127.0.0.1:1"
        }
        let stale = try await second.list()
        clock.advance(31)
        let failed = try await second.list()
        await second.stop()
        #expect(fresh.xCache == "MISS")
        #expect(stale.status == 200)
        #expect(stale.xCache == "STALE")
        #expect(stale.body == fresh.body)
        #expect(failed.status == 502)
        #expect(failed.error?["type"] as? String == "upstream_unreachable")
    }

    @Test("a 4xx from the upstream is never masked by a stale entry", arguments: [400, 401, 403, 404, 429])
    func clientErrorsNotMasked(status: Int) async throws {
        let clock = TestClock()
        try await withTestProxy(clock: clock.read, configure: { $0.cacheTTL = 10; $0.staleIfError = 60 }) { proxy in
            #expect(try await proxy.list().status == 200)
            clock.advance(20)
            proxy.controls.setFault(.status(HTTPResponseStatus(statusCode: status)), for: .list)
            let response = try await proxy.list()
            #expect(response.status == status)
            #expect(response.xCache == "MISS")
            #expect(response.error?["type"] as? String == "injected_fault")
        }
    }

    @Test("after a mutation an upstream failure is an error, never the list from before it")
    func noStaleAcrossAMutation() async throws {
        let clock = TestClock()
        try await withTestProxy(clock: clock.read, configure: { $0.cacheTTL = 10; $0.staleIfError = 60 }) { proxy in
            #expect(try await proxy.list().status == 200)
            clock.advance(20)
            #expect(try await proxy.create(name: "fresh").status == 200)
            proxy.controls.setFault(.status(.serviceUnavailable), for: .list)
            let response = try await proxy.list()
            #expect(response.status == 503)
            #expect(response.xCache != "STALE")
        }
    }

    // MARK: The file

    @Test("entries and counters survive a restart: the new proxy answers a HIT without an upstream call")
    func survivesRestart() async throws {
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let first = try await TestProxy.start(dataDir: dataDir)
        let miss = try await first.list()
        let revoked = try await first.list(query: "include_revoked=true")
        await first.stop(keepFake: true)
        let second = try await TestProxy.start(dataDir: dataDir, fake: first.fake)
        let hit = try await second.list()
        let revokedHit = try await second.list(query: "include_revoked=true")
        let stats = try await cacheStats(second)
        let calls = second.controls.calls(.list)
        await second.stop()
        #expect(miss.xCache == "MISS")
        #expect(hit.xCache == "HIT")
        #expect(hit.body == miss.body)
        #expect(revokedHit.xCache == "HIT")
        #expect(revokedHit.body == revoked.body)
        #expect(calls == 2)
        #expect(stats["misses"] as? Int == 2)
        #expect(stats["hits"] as? Int == 2)
    }

    @Test("after a restart, a mutation still drops the lists the last run stored, once the file is indexed and before")
    func mutationAfterRestart() async throws {
        for waitForIndex in [true, false] {
            let dataDir = TestProxy.makeDataDir()
            defer { try? FileManager.default.removeItem(atPath: dataDir) }
            let first = try await TestProxy.start(dataDir: dataDir)
            let before = try await first.list()
            await first.stop(keepFake: true)
            let second = try await TestProxy.start(dataDir: dataDir, fake: first.fake)
            if waitForIndex { try await Task.sleep(for: .milliseconds(200)) }
            let created = try await second.create(name: "after-restart")
            let after = try await second.list()
            await second.stop()
            #expect(before.xCache == "MISS")
            #expect(created.status == 200)
            #expect(after.xCache == "MISS", "waited for the index: \(waitForIndex)")
            #expect(after.body.contains("after-restart"))
        }
    }

    @Test("the file keeps at most cache_max_entries lists, evicting the oldest")
    func evictionAtTheEntryBound() async throws {
        let clock = TestClock()
        try await withTestProxy(clock: clock.read, configure: { $0.cacheMaxEntries = 3; $0.cacheMemoryBytes = 0 }) { proxy in
            let users = (0..<5).map { "user\($0)@example.com" }
            for user in users {
                try await proxy.expectVerdict("MISS", user: user)
                clock.advance(1)
            }
            let kept = await eventually { (try? cachedUsers(proxy.dataDir)) == Array(users.suffix(3)) }
            #expect(kept, "\((try? cachedUsers(proxy.dataDir)) ?? [])")

            // Memory keeps nothing, so these come from the file.
            try await proxy.expectVerdict("HIT", user: users[4])
            try await proxy.expectVerdict("HIT", user: users[2])
            #expect(proxy.controls.calls(.list) == 5)
            try await proxy.expectVerdict("MISS", user: users[0])
            #expect(proxy.controls.calls(.list) == 6)
            #expect(await eventually { (try? cachedUsers(proxy.dataDir).count) == 3 })
        }
    }

    @Test("the file keeps at most cache_max_bytes of bodies, evicting the oldest")
    func evictionAtTheByteBound() async throws {
        // Every user's first list has the same size: measure it once.
        var bodySize = 0
        try await withTestProxy { proxy in bodySize = try await proxy.list(user: "user0@example.com").body.utf8.count }
        #expect(bodySize > 100)
        let clock = TestClock()
        try await withTestProxy(clock: clock.read, configure: { $0.cacheMaxBytes = bodySize * 5 / 2; $0.cacheMemoryBytes = 0 }) { proxy in
            let users = (0..<4).map { "user\($0)@example.com" }
            for user in users {
                try await proxy.expectVerdict("MISS", user: user)
                clock.advance(1)
            }
            let kept = await eventually { (try? cachedUsers(proxy.dataDir)) == Array(users.suffix(2)) }
            #expect(kept, "\((try? cachedUsers(proxy.dataDir)) ?? [])")
            try await proxy.expectVerdict("HIT", user: users[3])
            try await proxy.expectVerdict("MISS", user: users[1])
        }
    }

    @Test("memory holds no more than cache_memory_bytes of bodies and of what the cache knows of credentials and keys", arguments: [0, 1])
    func memoryBound(entries: Int) async throws {
        var bodySize = 0
        var credentialBytes = 0
        let users = (0..<3).map { "user\($0)@example.com" }
        try await withTestProxy { proxy in
            bodySize = try await proxy.list(user: users[0]).body.utf8.count
            for user in users.dropFirst() { _ = try await proxy.list(user: user) }
            credentialBytes = try await cacheStats(proxy)["credential_bytes_in_memory"] as? Int ?? 0
        }
        #expect(credentialBytes > 0, "the credential and the keys it read are counted")
        let bound = entries == 0 ? 0 : bodySize * entries + bodySize / 2 + credentialBytes
        try await withTestProxy(configure: { $0.cacheMemoryBytes = bound }) { proxy in
            for user in users {
                _ = try await proxy.list(user: user)
                let stats = try await cacheStats(proxy)
                #expect((stats["bytes_in_memory"] as? Int ?? .max) + (stats["credential_bytes_in_memory"] as? Int ?? .max) <= max(bound, credentialBytes))
                #expect((stats["entries_in_memory"] as? Int ?? .max) <= entries + 1, "fewer keys known yet leave room for at most one more")
            }
            #expect(try await cacheStats(proxy)["entries_in_memory"] as? Int == entries, "once it knows every key it will, the budget holds this many lists")
            try await proxy.expectVerdict("HIT", user: "user2@example.com")
        }
    }

    /// Ways a cache file can be broken.
    enum Damage: String, CaseIterable, Sendable, CustomTestStringConvertible {
        /// Not a database at all.
        case garbage
        /// SQLite's magic string, then garbage.
        case badHeader
        /// A sound header, but a table's page overwritten: only an integrity check sees it.
        case damagedPage

        var testDescription: String { rawValue }

        func write(to path: String) throws {
            let noise = Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 13) })
            var bytes = noise
            switch self {
            case .garbage:
                break
            case .badHeader:
                bytes.replaceSubrange(0..<16, with: Data("SQLite format 3\0".utf8))
            case .damagedPage:
                let queue = try DatabaseQueue(path: path)
                try queue.write { db in
                    try db.execute(sql: "CREATE TABLE t(x TEXT)")
                    for i in 0..<300 {
                        try db.execute(sql: "INSERT INTO t VALUES (?)", arguments: [String(repeating: "x", count: 100) + "\(i)"])
                    }
                }
                try queue.close()
                bytes = try Data(contentsOf: URL(fileURLWithPath: path))
                let pageSize = 4096
                bytes.replaceSubrange(pageSize..<(2 * pageSize), with: noise.prefix(pageSize))
            }
            try bytes.write(to: URL(fileURLWithPath: path))
        }
    }

    @Test("a corrupt cache file is moved aside and replaced by an empty one; lists still work",
          arguments: Damage.allCases)
    func corruptFileRecovered(damage: Damage) async throws {
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        try DataFiles.createPrivateDirectory(at: dataDir)
        try damage.write(to: dataDir + "/cache.sqlite")
        let garbage = try Data(contentsOf: URL(fileURLWithPath: dataDir + "/cache.sqlite"))

        let proxy = try await TestProxy.start(dataDir: dataDir)
        let miss = try await proxy.list()
        let hit = try await proxy.list()
        let stored = await eventually { (try? cachedUsers(dataDir)) == [Self.alice] }
        await proxy.stop()
        #expect(miss.status == 200)
        #expect(miss.xCache == "MISS")
        #expect(hit.xCache == "HIT")
        #expect(stored)
        let aside = try FileManager.default.contentsOfDirectory(atPath: dataDir).filter { $0.hasPrefix("cache.sqlite.corrupt-") }
        #expect(aside.count == 1)
        // Opening a damaged database may already have written to it, so only its size is checked.
        let asideSize = aside.first.flatMap { FileManager.default.contents(atPath: dataDir + "/" + $0)?.count } ?? 0
        #expect(asideSize >= garbage.count)
    }

    @Test("the data dir is 0700, its files 0600, and no byte of any file holds a bearer token")
    func filesArePrivateAndTokenFree() async throws {
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let proxy = try await TestProxy.start(dataDir: dataDir)
        for token in [TestProxy.token, TestProxy.otherToken] {
            _ = try await proxy.list(token: token)
            _ = try await proxy.list(query: "include_revoked=true", token: token)
            _ = try await proxy.list(user: Self.bob, token: token)
        }
        _ = try await proxy.create(name: "ci", token: TestProxy.token)
        _ = try await proxy.list()
        // The create dropped alice's four lists; bob's two and alice's new one remain.
        let stored = await eventually { (try? cachedUsers(dataDir).count) == 3 }
        let whileRunning = try privateFileProblems(in: dataDir)
        await proxy.stop()
        let afterStop = try privateFileProblems(in: dataDir)
        #expect(stored)
        #expect(whileRunning.isEmpty, "\(whileRunning)")
        #expect(afterStop.isEmpty, "\(afterStop)")
        #expect(FileManager.default.fileExists(atPath: dataDir + "/cache.sqlite"))
    }

    // MARK: Figures

    @Test("/_proxy/stats counts hits, misses, stale serves, bypasses and the upstream list calls saved")
    func statsMatchTheTraffic() async throws {
        let clock = TestClock()
        try await withTestProxy(clock: clock.read, configure: { $0.cacheTTL = 10; $0.staleIfError = 60 }) { proxy in
            _ = try await proxy.list()                                   // MISS
            _ = try await proxy.list()                                   // HIT
            _ = try await proxy.list()                                   // HIT
            _ = try await proxy.list(query: "include_session_keys=true") // BYPASS
            clock.advance(20)
            proxy.controls.setFault(.status(.serviceUnavailable), for: .list)
            try await proxy.expectVerdict("STALE")  // a failed upstream call
            proxy.controls.setFault(nil, for: .list)
            _ = try await concurrentLists(proxy, count: 4)               // 1 MISS, 3 coalesced

            let stats = try await cacheStats(proxy)
            #expect(stats["hits"] as? Int == 2)
            #expect(stats["misses"] as? Int == 3)
            #expect(stats["stale"] as? Int == 1)
            #expect(stats["bypass"] as? Int == 1)
            #expect(stats["coalesced"] as? Int == 3)
            #expect(stats["upstream_list_calls"] as? Int == 3)
            // Every list but the bypass went through the cache: 8 of them, 3 reached the upstream.
            #expect(proxy.controls.calls(.list) == 3 + 1)
            #expect(stats["upstream_list_calls_saved"] as? Int == 8 - 3)
            #expect(stats["hit_ratio"] as? Double == 0.625)
        }
    }
}

// MARK: Helpers

extension TestResponse {
    /// The proxy's `X-Cache` verdict.
    var xCache: String? { headers.first(name: "x-cache") }
}

extension TestProxy {
    /// Lists and expects the proxy's `X-Cache` verdict to be `expected`.
    func expectVerdict(
        _ expected: String, user: String = CacheTests.alice, query: String? = nil, token: String? = TestProxy.token,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let response = try await list(user: user, query: query, token: token)
        #expect(response.xCache == expected, "\(user) \(query ?? "")", sourceLocation: sourceLocation)
    }
}

extension CacheTests {
    static var quietLogger: Logger {
        var logger = Logger(label: "cache-tests")
        logger.logLevel = .critical
        return logger
    }

    /// The `cache` object of `/_proxy/stats`.
    func cacheStats(_ proxy: TestProxy) async throws -> [String: Any] {
        let response = try await proxy.request(.GET, "/_proxy/stats", token: nil)
        return response.json["cache"] as? [String: Any] ?? [:]
    }

    /// The users of the entries in the cache file, oldest first.
    func cachedUsers(_ dataDir: String) throws -> [String] {
        var configuration = GRDB.Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(2)
        let queue = try DatabaseQueue(path: dataDir + "/cache.sqlite", configuration: configuration)
        return try queue.read { db in
            try String.fetchAll(db, sql: "SELECT user_email FROM cache_entries ORDER BY stored_at, user_email")
        }
    }

    /// Creates a key at the fake directly, as a change made past the proxy would.
    func createPastTheProxy(_ proxy: TestProxy, name: String) async throws {
        var request = HTTPClientRequest(url: proxy.fake.url + TestProxy.path())
        request.method = .POST
        request.headers = ["authorization": "Bearer \(TestProxy.token)", "content-type": "application/json"]
        request.body = .bytes(ByteBuffer(string: #"{"name": "\#(name)"}"#))
        let response = try await proxy.client.execute(request, timeout: .seconds(5))
        _ = try await response.body.collect(upTo: 1 << 20)
        #expect(response.status == .ok)
    }

    /// Sends `count` lists of alice's keys at once, each on its own connection, while the fake
    /// holds list answers; releases them once one has reached the fake and every other request
    /// has joined it.
    func concurrentLists(_ proxy: TestProxy, count: Int) async throws -> [TestResponse] {
        var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow)
        configuration.httpVersion = .http1Only
        configuration.connectionPool = .init(idleTimeout: .seconds(10), concurrentHTTP1ConnectionsPerHostSoftLimit: count + 1)
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let before = try await cacheStats(proxy)["coalesced"] as? Int ?? 0
        let url = proxy.url + TestProxy.path()
        proxy.controls.hold(.list)
        do {
            let responses = try await withThrowingTaskGroup(of: TestResponse.self) { group in
                for _ in 0..<count {
                    group.addTask {
                        var request = HTTPClientRequest(url: url)
                        request.headers = ["authorization": "Bearer \(TestProxy.token)"]
                        let response = try await client.execute(request, timeout: .seconds(10))
                        let body = try await response.body.collect(upTo: 1 << 20)
                        return TestResponse(status: Int(response.status.code), headers: response.headers, body: String(buffer: body))
                    }
                }
                let allJoined = await eventually {
                    let coalesced = try? await cacheStats(proxy)["coalesced"] as? Int
                    return proxy.controls.heldCount(.list) == 1 && coalesced == before + count - 1
                }
                // A moment for a request that would wrongly make a second upstream call.
                try? await Task.sleep(for: .milliseconds(50))
                proxy.controls.release(.list)
                #expect(allJoined, "requests did not all wait on one upstream call")
                return try await group.reduce(into: [TestResponse]()) { $0.append($1) }
            }
            try? await client.shutdown()
            return responses
        } catch {
            proxy.controls.release(.list)
            try? await client.shutdown()
            throw error
        }
    }

    /// What is wrong with the data dir: a mode that is not private, or a file holding a token.
    func privateFileProblems(in dataDir: String) throws -> [String] {
        var problems: [String] = []
        let manager = FileManager.default
        let directoryMode = (try manager.attributesOfItem(atPath: dataDir)[.posixPermissions] as? NSNumber)?.intValue
        if directoryMode.map({ $0 & 0o777 }) != 0o700 { problems.append("data dir mode \(String(directoryMode ?? -1, radix: 8))") }
        let names = try manager.contentsOfDirectory(atPath: dataDir)
        if !names.contains("cache.sqlite") { problems.append("cache.sqlite missing") }
        for name in names {
            let path = dataDir + "/" + name
            let mode = (try manager.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue
            if mode.map({ $0 & 0o777 }) != 0o600 { problems.append("\(name) mode \(String(mode ?? -1, radix: 8))") }
            let bytes = manager.contents(atPath: path) ?? Data()
            for token in [TestProxy.token, TestProxy.otherToken] where bytes.range(of: Data(token.utf8)) != nil {
                problems.append("\(name) holds a bearer token")
            }
        }
        return problems
    }
}
