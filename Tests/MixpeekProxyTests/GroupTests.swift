import Foundation
import Logging
@testable import MixpeekProxy
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing

/// The parts of a group that run without PostgreSQL: the list cache's gate, the URL and the
/// settings. The group itself, against a real PostgreSQL and real proxy processes, is
/// `scripts/group_check.py`.
@Suite("Group of proxies (no database)")
struct GroupTests {
    /// A gate the test opens and closes, per user.
    final class TestGate: ListGate {
        let closed = NIOLockedValueBox<Set<String>>([])
        func admits(user: String) -> Bool { !closed.withLockedValue { $0.contains(user) } }
    }

    static let body = #"{"keys":[{"name":"k1"}],"total":1}"#

    static func cache(gate: TestGate) -> ProxyListCache {
        ProxyListCache(settings: .init(ttl: 60, staleIfError: 0, memoryBytes: 1 << 20), store: nil, gate: gate, logger: Logger(label: "test"))
    }

    /// Answers `key` through `cache`, counting the upstream fetches in `fetches`.
    static func answer(_ cache: ProxyListCache, _ key: CacheKey, fetches: NIOLockedValueBox<Int>) async throws -> ProxyListCache.Answer {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        return try await cache.answer(key, credential: cache.credential(for: "Bearer sk_a"), refresh: false, on: loop) {
            fetches.withLockedValue { $0 += 1 }
            return loop.makeSucceededFuture(.response(UpstreamResponse(
                status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(string: body))))
        }.get()
    }

    @Test("a closed gate serves no hit and stores nothing; the same list is a hit once it opens")
    func gateStopsHitsAndStores() async throws {
        let gate = TestGate()
        let cache = Self.cache(gate: gate)
        let fetches = NIOLockedValueBox(0)
        gate.closed.withLockedValue { $0 = ["alice@example.com"] }
        let looked = cache.lookup(authorization: "Bearer sk_a", user: "alice@example.com", includeRevoked: false, refresh: false)
        let (key, none) = (looked.key, looked.remembered)
        #expect(none == nil)
        // Closed: forwarded every time, never kept.
        for _ in 0..<2 {
            guard case .fetched(let fetched, let forward) = try await Self.answer(cache, key, fetches: fetches),
                  case .response = fetched.outcome, !forward.coalesced else {
                Issue.record("a list under a closed gate must be fetched")
                return
            }
            #expect(fetched.notStored == "group-closed")
        }
        #expect(fetches.withLockedValue { $0 } == 2)
        gate.closed.withLockedValue { $0 = [] }
        #expect(cache.lookup(authorization: "Bearer sk_a", user: "alice@example.com", includeRevoked: false, refresh: false).remembered == nil,
                "a list fetched while the gate was closed was stored")
        // Open: fetched once, then a hit.
        _ = try await Self.answer(cache, key, fetches: fetches)
        #expect(fetches.withLockedValue { $0 } == 3)
        #expect(cache.lookup(authorization: "Bearer sk_a", user: "alice@example.com", includeRevoked: false, refresh: false).remembered != nil)
        // Closed again for this user only: no hit from memory, no hit through `answer`; others unaffected.
        gate.closed.withLockedValue { $0 = ["alice@example.com"] }
        #expect(cache.lookup(authorization: "Bearer sk_a", user: "alice@example.com", includeRevoked: false, refresh: false).remembered == nil)
        _ = try await Self.answer(cache, key, fetches: fetches)
        #expect(fetches.withLockedValue { $0 } == 4)
        let bobKey = cache.lookup(authorization: "Bearer sk_a", user: "bob@example.com", includeRevoked: false, refresh: false).key
        _ = try await Self.answer(cache, bobKey, fetches: fetches)
        #expect(cache.lookup(authorization: "Bearer sk_a", user: "bob@example.com", includeRevoked: false, refresh: false).remembered != nil)
        // Reopened: the entry stored before is served again.
        gate.closed.withLockedValue { $0 = [] }
        #expect(cache.lookup(authorization: "Bearer sk_a", user: "alice@example.com", includeRevoked: false, refresh: false).remembered != nil)
    }

    @Test("a closed gate still coalesces lists, but only onto a fetch that started after the request arrived")
    func closedGateCoalescesOntoTheNextFetch() async throws {
        let gate = TestGate()
        let cache = Self.cache(gate: gate)
        gate.closed.withLockedValue { $0 = ["alice@example.com"] }
        let key = cache.lookup(authorization: "Bearer sk_a", user: "alice@example.com", includeRevoked: false, refresh: false).key
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        // Each fetch waits for the test to answer it, with the upstream's list as it is then.
        let held = NIOLockedValueBox<[EventLoopPromise<ProxyListCache.FetchOutcome>]>([])
        func ask() -> EventLoopFuture<ProxyListCache.Answer> {
            cache.answer(key, credential: cache.credential(for: "Bearer sk_a"), refresh: false, on: loop) {
                let promise = loop.makePromise(of: ProxyListCache.FetchOutcome.self)
                held.withLockedValue { $0.append(promise) }
                return promise.futureResult
            }
        }
        func release(_ index: Int, version: Int) async throws {
            #expect(await eventually { held.withLockedValue { $0.count } > index })
            held.withLockedValue { $0[index] }.succeed(.response(UpstreamResponse(
                status: .ok, headers: ["content-type": "application/json"],
                body: ByteBuffer(string: #"{"keys":[{"name":"v\#(version)"}],"total":1}"#))))
        }
        func body(_ answer: ProxyListCache.Answer) -> (String, Bool)? {
            guard case .fetched(let fetched, let forward) = answer, case .response(let response) = fetched.outcome else { return nil }
            return (String(buffer: response.body), forward.coalesced)
        }
        let first = ask()
        #expect(await eventually { held.withLockedValue { $0.count } == 1 })
        // These arrive while the first fetch is on its way (a mutation may be answered in
        // between): they wait for the next one rather than share it.
        let second = ask(), third = ask()
        try await Task.sleep(for: .milliseconds(50))
        #expect(held.withLockedValue { $0.count } == 1, "a fetch started for requests that could have joined the next one")
        try await release(0, version: 1)
        #expect(body(try await first.get())?.0.contains("v1") == true)
        try await release(1, version: 2)
        let (two, three) = (body(try await second.get()), body(try await third.get()))
        #expect(two?.0.contains("v2") == true && two?.1 == false)
        #expect(three?.0.contains("v2") == true && three?.1 == true, "the third did not share the second's fetch")
        #expect(held.withLockedValue { $0.count } == 2)
        #expect(cache.counters.coalesced == 1)
    }

    @Test("the schema is current with every known migration, in any order; one missing is older, one unknown is newer and refused")
    func schemaVersions() throws {
        let known = GroupSchema.migrations.map(\.version)
        #expect(known.last == GroupSchema.reapVersion)
        #expect(GroupSchema.isCurrent(known))
        // v5 applied again by hand (its tree rebuilt) comes last.
        #expect(GroupSchema.isCurrent(known.filter { $0 != GroupLogTree.version } + [GroupLogTree.version]))
        #expect(!GroupSchema.isCurrent(Array(known.dropLast())))
        #expect(!GroupSchema.isCurrent(known + ["v99-from-the-future"]))
        #expect(throws: GroupError.self) { try GroupSchema.refuseNewer(known + ["v99-from-the-future"]) }
        try GroupSchema.refuseNewer(known)
    }

    @Test("an acknowledgement is a NOTIFY with the payload written in, quotes doubled; pg_notify for a backslash")
    func acknowledgementQuery() {
        #expect(GroupMember.acknowledgement(id: "runner-7.ci:eu", 42).sql == "NOTIFY mixpeek_proxy, 'a runner-7.ci:eu 42'")
        #expect(GroupMember.acknowledgement(id: "o'brien", 1).sql == "NOTIFY mixpeek_proxy, 'a o''brien 1'")
        let escaped = GroupMember.acknowledgement(id: #"back\slash"#, 3)
        #expect(escaped.sql == "SELECT pg_notify('mixpeek_proxy', $1)")
        #expect(escaped.binds.count == 1)
    }

    @Test("postgres_url: user, password, port, database and sslmode are read; the description never shows the password")
    func postgresURL() throws {
        let url = try PostgresURL("postgres://mixpeek_proxy:s%40cret@db.internal:6543/mixpeek?sslmode=verify-full&sslrootcert=/etc/ca.pem")
        #expect(url.user == "mixpeek_proxy")
        #expect(url.password == "s@cret")
        #expect(url.host == "db.internal")
        #expect(url.port == 6543)
        #expect(url.database == "mixpeek")
        #expect(url.sslMode == "verify-full")
        #expect(url.sslRootCert == "/etc/ca.pem")
        #expect(!url.description.contains("cret"))
        #expect(try PostgresURL("postgresql://u@127.0.0.1/db").sslMode == "prefer")
        #expect(try PostgresURL("postgresql://u@127.0.0.1/db").port == 5432)
        for bad in ["http://u@h/db", "postgres:///db", "postgres://u@h/db?sslmode=sometimes", "postgres://u@h/db?sslcert=x"] {
            #expect(throws: ConfigError.self, "\(bad)") { try PostgresURL(bad) }
        }
    }

    @Test("group settings come from postgres_url, proxy_id and group_lease; a bad URL's error does not repeat it")
    func settings() throws {
        var config = try ProxyConfig.load(file: nil, environment: [:], flags: [:])
        #expect(config.group == nil, "a lone proxy by default")
        config = try ProxyConfig.load(
            file: nil, environment: ["MIXPEEK_PROXY_POSTGRES_URL": "postgres://p:pw@127.0.0.1:5433/g?sslmode=disable"],
            flags: ["proxy_id": "runner-7", "group_lease": "3", "upstream_timeout": "4"])
        let group = try #require(config.group)
        #expect(group.proxyID == "runner-7")
        #expect(group.leaseSeconds == 3)
        #expect(group.upstreamTimeoutSeconds == 4)
        #expect(group.database.port == 5433)
        do {
            _ = try ProxyConfig.load(file: nil, environment: [:], flags: ["postgres_url": "mysql://root:hunter2@db/x"])
            Issue.record("a non-postgres URL was accepted")
        } catch let error as ConfigError {
            #expect(!error.message.contains("hunter2"))
        }
        #expect(throws: ConfigError.self) { try ProxyConfig.load(file: nil, environment: [:], flags: ["proxy_id": "a b"]) }
        #expect(throws: ConfigError.self) { try ProxyConfig.load(file: nil, environment: [:], flags: ["group_lease": "0"]) }
    }

    @Test("without proxy_id, the group's proxy id is drawn once: the one printed at start is the one used")
    func defaultProxyIDIsStable() throws {
        let config = try ProxyConfig.load(
            file: nil, environment: ["MIXPEEK_PROXY_POSTGRES_URL": "postgres://p@127.0.0.1:5433/g?sslmode=disable"], flags: [:])
        let first = try #require(config.group).proxyID
        #expect(try #require(config.group).proxyID == first)
        #expect(try #require(config.group).proxyID == first)
        #expect(first.hasPrefix(ProcessInfo.processInfo.hostName))
    }

    @Test("sslmode unless given: prefer on loopback, verify-full (chain and host name checked) anywhere else")
    func defaultSSLMode() throws {
        for host in ["127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "[::1]"] {
            let url = try PostgresURL("postgres://u@\(host):5432/db")
            #expect(url.sslMode == "prefer", "\(host)")
            #expect(url.tlsConfiguration()?.certificateVerification == CertificateVerification.none, "\(host)")
        }
        for host in ["db.internal", "10.0.0.5", "127.example.com", "[2001:db8::1]", "localhost.example.com"] {
            let url = try PostgresURL("postgres://u@\(host):5432/db")
            #expect(url.sslMode == "verify-full", "\(host)")
            #expect(url.tlsConfiguration()?.certificateVerification == .fullVerification, "\(host)")
        }
        // Said in the URL, it stands.
        #expect(try PostgresURL("postgres://u@db.internal/db?sslmode=require").tlsConfiguration()?.certificateVerification == CertificateVerification.none)
        #expect(try PostgresURL("postgres://u@db.internal/db?sslmode=verify-ca").tlsConfiguration()?.certificateVerification == .noHostnameVerification)
        #expect(try PostgresURL("postgres://u@db.internal/db?sslmode=disable").tlsConfiguration() == nil)
        #expect(try PostgresURL("postgres://u@127.0.0.1/db?sslmode=verify-full").tlsConfiguration()?.certificateVerification == .fullVerification)
        // The TLS PostgresNIO is given follows: required for verify-full, preferred on loopback.
        let remote = try PostgresURL("postgres://u@db.internal/db").connectionConfiguration(applicationName: "t")
        #expect(remote.tls.isEnforced)
        let local = try PostgresURL("postgres://u@127.0.0.1/db").connectionConfiguration(applicationName: "t")
        #expect(local.tls.isAllowed && !local.tls.isEnforced)
    }

    @Test("a .pgpass file: host:port:database:user:password, `*` matches anything, `\\:` and `\\\\` escape, the first match wins")
    func passFile() {
        let text = """
            # comment:line:that:looks:like-one
            other.host:5432:*:alice:wrong
            db.internal:6543:mixpeek:alice:p\\:ss\\\\word
            db.internal:*:*:alice:second
            *:*:*:*:fallback
            """
        #expect(PassFile.password(in: text, host: "db.internal", port: 6543, database: "mixpeek", user: "alice") == "p:ss\\word")
        #expect(PassFile.password(in: text, host: "db.internal", port: 5432, database: "mixpeek", user: "alice") == "second")
        #expect(PassFile.password(in: text, host: "elsewhere", port: 1, database: "x", user: "bob") == "fallback")
        #expect(PassFile.password(in: "db:5432:x:alice:pw", host: "db", port: 5432, database: "x", user: "bob") == nil)
        #expect(PassFile.password(in: "db:5432:x:alice", host: "db", port: 5432, database: "x", user: "alice") == nil, "four fields are no line")
    }

    @Test("the password: the URL's, else PGPASSWORD, else the passfile (passfile=, PGPASSFILE, ~/.pgpass), matched on the database or the user")
    func passwordSources() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pgpass-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let named = directory.appendingPathComponent("named").path
        let environmentFile = directory.appendingPathComponent("env").path
        try "db.internal:5432:mixpeek:proxy:from-named\n".write(toFile: named, atomically: true, encoding: .utf8)
        try "db.internal:5432:*:proxy:from-env-file\n".write(toFile: environmentFile, atomically: true, encoding: .utf8)
        try "db.internal:5432:proxy:proxy:from-home\n".write(to: directory.appendingPathComponent(".pgpass"), atomically: true, encoding: .utf8)
        for file in [named, environmentFile, directory.appendingPathComponent(".pgpass").path] {
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file)
        }
        let withFile = try PostgresURL("postgres://proxy@db.internal/mixpeek?passfile=\(named)")
        let plain = try PostgresURL("postgres://proxy@db.internal/mixpeek")
        #expect(try PostgresURL("postgres://proxy:in-url@db.internal/mixpeek").resolvedPassword(environment: ["PGPASSWORD": "env"]) == "in-url")
        #expect(try withFile.resolvedPassword(environment: ["PGPASSWORD": "env", "PGPASSFILE": environmentFile]) == "env")
        #expect(try withFile.resolvedPassword(environment: ["PGPASSFILE": environmentFile]) == "from-named")
        #expect(try plain.resolvedPassword(environment: ["PGPASSFILE": environmentFile, "HOME": directory.path]) == "from-env-file")
        // No database in the URL: the server's default, the user's name, is the one matched.
        #expect(try PostgresURL("postgres://proxy@db.internal").resolvedPassword(environment: ["HOME": directory.path]) == "from-home")
        #expect(try plain.resolvedPassword(environment: ["HOME": directory.path]) == nil)
        #expect(!withFile.description.contains("from-named"))
        // Readable by others, as libpq: not used, and said so (never with the password).
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: named)
        let error = #expect(throws: ConfigError.self) { try withFile.resolvedPassword(environment: [:]) }
        #expect(error?.message.contains("chmod 600") == true && error?.message.contains("from-named") == false)
    }

    @Test("/_proxy/metrics says whether a group member's role can rewrite the chain, and a lone proxy says nothing of it")
    func roleMetric() {
        let metrics = ProxyMetrics()
        func text(_ group: ProxyMetrics.GroupFigures?) -> String {
            metrics.exposition(cache: CacheCounters(), entries: 0, bytes: 0, logLinesDropped: 0, group: group)
        }
        #expect(text(.init(auditRoleCanRewrite: true, witnessFailures: 0)).contains("\nmixpeek_proxy_audit_role_can_rewrite 1\n"))
        #expect(text(.init(auditRoleCanRewrite: false, witnessFailures: 2)).contains("\nmixpeek_proxy_audit_role_can_rewrite 0\n"))
        #expect(text(.init(auditRoleCanRewrite: false, witnessFailures: 2)).contains("\nmixpeek_proxy_witness_failures_total 2\n"))
        #expect(!text(.init(auditRoleCanRewrite: nil, witnessFailures: 0)).contains("mixpeek_proxy_audit_role_can_rewrite"), "not known before the first join")
        #expect(!text(nil).contains("mixpeek_proxy_audit_role_can_rewrite"))
        #expect(!text(nil).contains("mixpeek_proxy_witness_failures_total"))
    }

    @Test("the role check's refusal names the role, why, and the command that sets a role up")
    func rewriteRefusal() {
        let message = GroupMember.rewriteRefusal(user: "mixpeek", why: "it owns mixpeek_audit")
        #expect(message.contains("mixpeek") && message.contains("it owns mixpeek_audit") && message.contains("group migrate"))
        #expect(GroupSchema.grants(to: "p").first == "REVOKE ALL ON mixpeek_audit FROM \"p\"")
        #expect(GroupSchema.grants(to: "p").contains("GRANT SELECT, INSERT ON mixpeek_audit TO \"p\""))
        #expect(!GroupSchema.grants(to: "p").contains { $0.contains("UPDATE ON mixpeek_audit") || $0.contains("ALL ON mixpeek_audit TO") })
    }
}
