import ArgumentParser
import Foundation
import Logging
import MixpeekAPI
import MixpeekFake
import MixpeekProxy
import ServiceLifecycle

@main
struct MixpeekProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mixpeek-proxy",
        abstract: "A local caching, auditing proxy for the Mixpeek API-keys API.",
        discussion: """
            Point scripts and the Mixpeek SDK at http://127.0.0.1:8080 instead of https://api.mixpeek.com.
            Lists are cached (and invalidated by every mutation made through the proxy); every create,
            update, rotate and delete is written to a tamper-evident audit log.

            Try it with no account:  mixpeek-proxy demo
            """,
        subcommands: [Serve.self, Demo.self, FakeUpstream.self, Audit.self, Cache.self, Group.self])
}

/// The settings `serve` and `demo` share; every one is also a config-file key and a
/// `MIXPEEK_PROXY_*` environment variable (flags win).
struct ServerOptions: ParsableArguments {
    @Option(help: "Config file of `key = value` lines (see config/mixpeek-proxy.conf).")
    var config: String?
    @Option(help: "Address to listen on (default 127.0.0.1; non-loopback needs --allow-non-loopback true).")
    var host: String?
    @Option(help: "Port to listen on (default 8080); 0 picks a free port and prints it.")
    var port: String?
    @Option(help: "Mixpeek API base URL (default https://api.mixpeek.com).")
    var upstream: String?
    @Option(help: "Directory for cache.sqlite and audit.sqlite (default ./mixpeek-proxy-data).")
    var dataDir: String?
    @Option(help: "Seconds a cached list is served as a HIT (default 30).")
    var cacheTtl: String?
    @Option(help: "Seconds past the TTL a list may be served STALE when the upstream fails (default 300).")
    var staleIfError: String?
    @Option(help: "Keep lists whatever the upstream's Cache-Control says but no-store: true or false (default false).")
    var cacheIgnoreUpstreamDirectives: String?
    @Option(help: "Seconds a mutation's answer waits for its outcome record to be written before 503 audit_incomplete (default 10).")
    var auditOutcomeWait: String?
    @Option(help: "Seconds a credential is answered from cache without the upstream confirming it; then its next list is forwarded (default 30; 0 = always).")
    var credentialRecheck: String?
    @Option(help: "Seconds between the proxy's own audit reconcile rounds over the last 24 h, with the admin key in $MIXPEEK_PROXY_RECONCILE_TOKEN (default 0: off).")
    var reconcileInterval: String?
    @Option(help: "Seconds to wait for the upstream before answering 504 (default 30).")
    var upstreamTimeout: String?
    @Option(help: "PEM file of CA certificates to trust for the upstream.")
    var upstreamCaFile: String?
    @Option(help: "Largest request body accepted, in bytes (default 1048576).")
    var maxBodyBytes: String?
    @Option(help: "Most cached lists kept on disk (default 100000).")
    var cacheMaxEntries: String?
    @Option(help: "Most bytes of cached bodies kept on disk (default 268435456).")
    var cacheMaxBytes: String?
    @Option(help: "Bytes of cached bodies kept in memory for hits (default 67108864).")
    var cacheMemoryBytes: String?
    @Option(help: "Forward other /v1/... paths unchanged: true or false (default true).")
    var passThrough: String?
    @Option(help: "Allow a non-loopback --host: true or false (default false).")
    var allowNonLoopback: String?
    @Option(help: "Seconds a client has to send a whole request (default 30).")
    var clientTimeout: String?
    @Option(help: "Event-loop threads for clients, and as many for upstream connections; 0 = one per CPU this process may use (default 1).")
    var eventLoops: String?
    @Option(help: "The request log, one line per request: stderr, a file path (reopened on SIGHUP) or off (default stderr).")
    var accessLog: String?
    @Option(help: "Diagnostics: trace, debug, info, notice, warning, error or critical (default info); the request log is apart.")
    var logLevel: String?
    @Option(help: "text or json, for the request log and the diagnostics (default text).")
    var logFormat: String?
    @Option(help: "Who may see the status page at /_proxy/: loopback, on or off (default loopback).")
    var statusPage: String?
    @Option(help: "Join a group of proxies sharing this PostgreSQL (postgres://user@host:port/db?sslmode=verify-full); the password in PGPASSWORD, a passfile or MIXPEEK_PROXY_POSTGRES_URL, not in this flag.")
    var postgresUrl: String?
    @Option(help: "This proxy's name in its group (default: host name and process id).")
    var proxyId: String?
    @Option(help: "Seconds a group lease lasts: the longest a frozen proxy holds up the others' mutations (default 2).")
    var groupLease: String?
    @Option(help: "Seconds after which a group member not heard from is forgotten and its row reaped (default 600).")
    var groupPeerTtl: String?
    @Option(help: "In a group, how a hit makes sure its list is current: lease (default; no database call per hit) or read (one database read per hit, for comparison).")
    var groupHitCheck: String?
    @Flag(name: [.customLong("append-only-role"), .customLong("require-append-only-role")],
          help: "In a group, refuse to start when the PostgreSQL role could rewrite the audit chain (it owns the chain's tables or is a superuser); see `group migrate --grant`.")
    var appendOnlyRole = false
    @Option(help: "The audit log's origin, the first line of its signed checkpoints (default mixpeek-proxy/<host>/<data dir>).")
    var logOrigin: String?
    @Option(help: "The Ed25519 key the audit log's checkpoints are signed with (default log-signing.key in the data dir, made at the first start).")
    var logSigningKeyFile: String?

    var flags: [String: String] {
        let all: [(String, String?)] = [
            ("host", host), ("port", port), ("upstream", upstream), ("data_dir", dataDir), ("cache_ttl", cacheTtl),
            ("stale_if_error", staleIfError), ("upstream_timeout", upstreamTimeout), ("upstream_ca_file", upstreamCaFile),
            ("cache_ignore_upstream_directives", cacheIgnoreUpstreamDirectives), ("audit_outcome_wait", auditOutcomeWait),
            ("credential_recheck", credentialRecheck), ("reconcile_interval", reconcileInterval),
            ("max_body_bytes", maxBodyBytes), ("cache_max_entries", cacheMaxEntries), ("cache_max_bytes", cacheMaxBytes),
            ("cache_memory_bytes", cacheMemoryBytes), ("pass_through", passThrough), ("allow_non_loopback", allowNonLoopback),
            ("client_timeout", clientTimeout), ("event_loops", eventLoops), ("access_log", accessLog), ("log_level", logLevel),
            ("log_format", logFormat), ("status_page", statusPage), ("postgres_url", postgresUrl), ("proxy_id", proxyId),
            ("group_lease", groupLease), ("group_peer_ttl", groupPeerTtl), ("group_hit_check", groupHitCheck),
            ("require_append_only_role", appendOnlyRole ? "true" : nil),
            ("log_origin", logOrigin), ("log_signing_key_file", logSigningKeyFile),
        ]
        return Dictionary(uniqueKeysWithValues: all.compactMap { name, value in value.map { (name, $0) } })
    }

    func load(defaults: [String: String] = [:]) throws -> ProxyConfig {
        let environment = ProcessInfo.processInfo.environment
        do {
            let config = try ProxyConfig.load(
                defaults: defaults, file: config ?? environment["MIXPEEK_PROXY_CONFIG"], environment: environment, flags: flags)
            Logs.bootstrap(level: config.logLevel, format: config.logFormat)
            if let postgresUrl, (try? PostgresURL(postgresUrl))?.password != nil {
                Logger(label: "mixpeek-proxy").warning("\(PostgresFlag.passwordWarning.dropFirst("warning: ".count))")
            }
            return config
        } catch let error as ConfigError {
            throw ValidationError(error.message)
        }
    }
}

/// Runs `app` until SIGINT or SIGTERM, then lets requests in flight finish.
func runUntilSignalled(_ app: ProxyApp, also other: [any Service] = [], logger: Logger) async throws {
    let group = ServiceGroup(
        configuration: .init(
            services: ([app] + other).map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
}

func printFlushed(_ text: String) {
    print(text)
    fflush(nil)
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the proxy in front of the Mixpeek API.",
        discussion: """
            Examples:
              mixpeek-proxy serve
              mixpeek-proxy serve --port 0 --data-dir /var/lib/mixpeek-proxy
              mixpeek-proxy serve --config config/mixpeek-proxy.conf --log-format json
              MIXPEEK_PROXY_CACHE_TTL=10 mixpeek-proxy serve
            """)

    @OptionGroup var options: ServerOptions

    func run() async throws {
        let config = try options.load()
        let logger = Logger(label: "mixpeek-proxy")
        let app = try await ProxyApp.start(config: config, logger: logger)
        let group = config.group.map { ", group \($0.database) as \($0.proxyID)" } ?? ""
        printFlushed("mixpeek-proxy listening on \(app.url) (upstream \(config.upstream), data \(config.dataDir)\(group))")
        try await runUntilSignalled(app, logger: logger)
    }
}

/// The fake upstream as a `Service`, for `demo` and `fake-upstream`.
struct FakeService: Service {
    let server: FakeUpstreamServer
    func run() async throws {
        try? await gracefulShutdown()
        await server.shutdown()
    }
}

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the proxy in front of a built-in fake Mixpeek: no account, no network.",
        discussion: """
            Examples:
              mixpeek-proxy demo
              mixpeek-proxy demo --port 0 --data-dir /tmp/mixpeek-demo
            """)

    @OptionGroup var options: ServerOptions

    func run() async throws {
        let fake = try await FakeUpstreamServer.start()
        var config = try options.load(defaults: ["data_dir": "./mixpeek-demo-data"])
        config.upstream = fake.url
        let logger = Logger(label: "mixpeek-proxy")
        let app = try await ProxyApp.start(config: config, logger: logger)
        printFlushed(DemoTour.text(proxy: app.url, dataDir: config.dataDir, upstream: fake.url, since: String(Timestamp.string(Date()).prefix(10))))
        try await runUntilSignalled(app, also: [FakeService(server: fake)], logger: logger)
    }
}

struct FakeUpstream: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fake-upstream",
        abstract: "Run the fake Mixpeek API-keys server on its own.",
        discussion: """
            Any `Authorization: Bearer sk_...` token is accepted and is its own organisation.
            Examples:
              mixpeek-proxy fake-upstream --port 9000
              mixpeek-proxy serve --upstream http://127.0.0.1:9000
            """)

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on; 0 picks a free port and prints it.") var port = 9000
    @Option(help: "Answer every request this many milliseconds late (to play a slow upstream).") var delayMs = 0
    @Flag(help: "Treat addresses that differ only in letter case as one user, as many identity stores do.")
    var caseInsensitiveUsers = false

    func run() async throws {
        Logs.bootstrap(level: .info, format: .text)
        let fake = try await FakeUpstreamServer.start(host: host, port: port)
        if delayMs > 0 { fake.controls.setFault(.delay(.milliseconds(Int64(delayMs)))) }
        fake.controls.matchUsersCaseInsensitively(caseInsensitiveUsers)
        printFlushed("fake Mixpeek upstream listening on \(fake.url)")
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: FakeService(server: fake))],
                                 gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "fake-upstream")))
        try await group.run()
    }
}
