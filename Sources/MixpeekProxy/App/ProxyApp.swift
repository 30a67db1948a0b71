import Foundation
import Logging
import MixpeekHTTP
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The running proxy, built by one function from a configuration: data dir, stores, cache,
/// upstream, responder, server. A `Service`, so `serve` runs it in a `ServiceGroup` that
/// shuts it down gracefully on SIGINT and SIGTERM.
public final class ProxyApp: Service, Sendable {
    public let config: ProxyConfig
    public let proxy: Proxy
    /// The audit log the proxy records mutations in (its `AuditSink`); nil when it could not
    /// be opened.
    public let audit: AuditLog?
    public let server: HTTPServer
    private let ownedUpstream: NIOUpstream?
    /// The proxy's event loops: clients' connections, and the upstream connections each
    /// loop's requests go out on (`NIOUpstream`: no hop between threads).
    public struct EventLoops: Sendable {
        public var server: any EventLoopGroup

        public init(server: any EventLoopGroup) {
            self.server = server
        }
    }

    private let eventLoops: EventLoops
    /// Whether the proxy made its event loops (`event_loops` threads each), and so shuts them down.
    private let ownsEventLoops: Bool
    private let counterFlush: Task<Void, Never>
    /// Closes a minute of the status page's history at each minute's end.
    private let minuteTicks: Task<Void, Never>
    /// In a group: listening and the lease (`GroupMember.run`), and the reaper.
    private let groupTasks: [Task<Void, Never>]
    /// `reconcile_interval`'s rounds, when on.
    private let reconcileRounds: Task<Void, Never>?
    private let logger: Logger

    /// The port the proxy listens on (the chosen one for port 0).
    public var port: Int { server.port }
    public var url: String { "http://\(config.host.contains(":") ? "[\(config.host)]" : config.host):\(port)" }

    private init(config: ProxyConfig, proxy: Proxy, audit: AuditLog?, server: HTTPServer, ownedUpstream: NIOUpstream?,
                 eventLoops: EventLoops, ownsEventLoops: Bool, logger: Logger) {
        self.config = config
        self.audit = audit
        self.eventLoops = eventLoops
        self.ownsEventLoops = ownsEventLoops
        self.proxy = proxy
        self.server = server
        self.ownedUpstream = ownedUpstream
        self.logger = logger
        let cache = proxy.cache
        if let member = proxy.group {
            var tasks = [Task { await member.run(dropping: cache) }]
            if let groupAudit = proxy.audit as? GroupAuditLog {
                tasks.append(Task { await groupAudit.reap() })
                if let cosigner = groupAudit.cosigner { tasks.append(Task { await cosigner.run() }) }
            }
            groupTasks = tasks
        } else {
            groupTasks = []
        }
        reconcileRounds = proxy.status?.reconcile.map { schedule in Task { await schedule.run() } }
        counterFlush = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(5))
                cache.persistCounters()
            }
        }
        let status = proxy.status
        minuteTicks = Task {
            while !Task.isCancelled {
                let intoMinute = Date().timeIntervalSince1970.truncatingRemainder(dividingBy: 60)
                try? await Task.sleep(for: .seconds(60 - intoMinute))
                if !Task.isCancelled { status?.recordMinute() }
            }
        }
    }

    /// Builds and starts the whole proxy. `upstream` replaces the HTTP client (tests);
    /// `clock` replaces the wall clock of the cache (tests); `accessLogSink` receives the
    /// request log in place of standard error or the file (tests; unused when it is `off`);
    /// `eventLoops`, when given, are used instead of `event_loops` threads of the proxy's own,
    /// and left running at shutdown.
    public static func start(
        config: ProxyConfig, upstream: (any Upstream)? = nil, logger: Logger = Logger(label: "mixpeek-proxy"),
        clock: (@Sendable () -> Double)? = nil, accessLogSink: (any AccessLogSink)? = nil, eventLoops given: EventLoops? = nil
    ) async throws -> ProxyApp {
        if !config.hostIsLoopback && !config.allowNonLoopback {
            throw ConfigError(message: "host \(config.host) is not a loopback address; set allow_non_loopback (--allow-non-loopback) to listen on it")
        }
        try DataFiles.createPrivateDirectory(at: config.dataDir)
        let dataDir = URL(fileURLWithPath: config.dataDir)
        // The log key and origin (a lone proxy's, or this member's for the group's log): one
        // that cannot sign is a configuration error, said at start. Its verifier key is public;
        // the key itself is never logged.
        let signing = try config.group.map { try config.groupLogSigning($0.database) } ?? config.logSigning()
        logger.info("audit log checkpoints are signed", metadata: ["origin": "\(signing.origin)", "verifier_key": "\(signing.verifierKey)"])
        if signing.signer.name != signing.origin {
            // Verifiers (Go's sumdb/note among them) take a checkpoint whose origin is not its
            // key's name for another log's.
            logger.warning("the log origin is not the signing key's name: verifiers will take its checkpoints for another log's; set log_origin to the key's name", metadata: [
                "origin": "\(signing.origin)", "key_name": "\(signing.signer.name)"])
        }

        // In a group, the cache serves a user's lists only while the group says it may.
        let member = config.group.map { GroupMember(settings: $0, logger: logger) }
        if let member, member.settings.requireAppendOnlyRole {
            try await member.requireAppendOnlyRoleAtStart()
        }

        let store: CacheStore?
        do {
            store = try CacheStore.open(
                path: dataDir.appendingPathComponent("cache.sqlite").path,
                bounds: .init(maxEntries: config.cacheMaxEntries, maxBytes: config.cacheMaxBytes), logger: logger)
        } catch {
            logger.error("cache file unusable; caching in memory only", metadata: ["error": "\(error)"])
            store = nil
        }
        let cache = ListCache(
            settings: .init(ttl: config.cacheTTL, staleIfError: config.staleIfError, memoryBytes: config.cacheMemoryBytes,
                            ignoreUpstreamDirectives: config.cacheIgnoreUpstreamDirectives, credentialRecheck: config.credentialRecheck),
            store: store, gate: member, logger: logger, clock: clock ?? { Date().timeIntervalSince1970 })

        let audit: AuditLog?
        let auditPath = dataDir.appendingPathComponent("audit.sqlite").path
        let hmacKey = config.auditHMACKey
        var groupAudit: GroupAuditLog?
        if let member {
            // The group's chain in PostgreSQL replaces audit.sqlite; this proxy keeps a witness.
            audit = nil
            do {
                let cosigner = GroupCosigner(signing: signing, proxyID: member.settings.proxyID, database: member.settings.database,
                                             dataDir: config.dataDir, logger: logger)
                groupAudit = GroupAuditLog(
                    member: member, hmacKey: hmacKey, witness: try WitnessFile(directory: config.dataDir), cosigner: cosigner, logger: logger)
            } catch {
                logger.critical("the group witness file cannot be opened; mutations will be refused", metadata: ["error": "\(error)"])
            }
        } else {
            do {
                let log = try AuditLog(path: auditPath, hmacKey: hmacKey, signing: signing, logger: logger)
                try await log.closeOrphans()
                audit = log
            } catch {
                // Fail closed: lists are still served, every mutation is refused with 503.
                logger.critical("audit log cannot be opened; mutations will be refused", metadata: ["error": "\(error)"])
                audit = nil
            }
        }
        // `reconcile_interval`: the proxy's own reconcile rounds, against the log it writes.
        var reconcile: ReconcileSchedule?
        if config.reconcileInterval > 0, let token = config.reconcileToken {
            let log: @Sendable () async throws -> (log: any ReconciledLog, close: @Sendable () async -> Void)
            if let member {
                let database = member.settings.database
                log = {
                    let connection = try await GroupChain.connect(database, logger: logger)
                    return (GroupChainLog(connection: connection, hmacKey: hmacKey, logger: logger), { try? await connection.close() })
                }
            } else if let audit {
                log = { (audit, {}) }
            } else {
                log = { throw ConfigError(message: "the audit log is not open") }
            }
            reconcile = ReconcileSchedule(interval: config.reconcileInterval, upstream: config.upstream, token: token, logger: logger, log: log)
        }
        // The status page and the tiles read the audit file through the log's own pool (its
        // reader connections, beside the appends): one `DatabasePool` for the file.
        let status = StatusBoard(
            cache: cache, audit: audit, group: member, groupAudit: member.map { _ in (hmacKey, config.dataDir) }, reconcile: reconcile,
            limits: .init(upstreamURL: config.upstream, cacheMaxEntries: config.cacheMaxEntries, cacheMaxBytes: config.cacheMaxBytes),
            logVerifierKey: signing.verifierKey, logProblem: { [cosigner = groupAudit?.cosigner] in cosigner?.problem })

        let eventLoops = given ?? EventLoops(server: MultiThreadedEventLoopGroup(numberOfThreads: config.resolvedEventLoops))
        let ownsEventLoops = given == nil
        let group = eventLoops.server
        @Sendable func shutdownOwnedEventLoops() async {
            guard ownsEventLoops else { return }
            try? await group.shutdownGracefully()
        }
        var ownedUpstream: NIOUpstream?
        let chosenUpstream: any Upstream
        let accessLog: AccessLog?
        do {
            accessLog = try Self.accessLog(config, sink: accessLogSink, eventLoops: Array(group.makeIterator()), logger: logger)
            if let upstream {
                chosenUpstream = upstream
            } else {
                let client = try NIOUpstream(
                    url: config.upstream, timeout: .milliseconds(Int64(config.upstreamTimeout * 1000)),
                    caFile: config.upstreamCAFile, group: group)
                ownedUpstream = client
                chosenUpstream = client
            }
        } catch {
            await shutdownOwnedEventLoops()
            throw error
        }

        var settings = Proxy.Settings()
        settings.policy.passThrough = config.passThrough
        settings.upstreamTimeoutSeconds = config.upstreamTimeout
        settings.upstream = config.upstream
        settings.statusPage = config.statusPage
        settings.auditOutcomeWait = config.auditOutcomeWait
        let proxy = Proxy(
            upstream: chosenUpstream, cache: cache, audit: groupAudit ?? audit, settings: settings, metrics: ProxyMetrics(),
            accessLog: accessLog, logger: logger, status: status, group: member, log: audit)

        var limits = ServerLimits()
        limits.maxBodyBytes = config.maxBodyBytes
        limits.requestReadTimeout = .milliseconds(Int64(config.clientTimeout * 1000))
        let server: HTTPServer
        do {
            server = try await HTTPServer.start(host: config.host, port: config.port, responder: proxy, limits: limits, group: group)
        } catch {
            await accessLog?.close()
            await ownedUpstream?.shutdown()
            await shutdownOwnedEventLoops()
            throw error
        }
        return ProxyApp(
            config: config, proxy: proxy, audit: audit, server: server, ownedUpstream: ownedUpstream, eventLoops: eventLoops,
            ownsEventLoops: ownsEventLoops, logger: logger)
    }

    /// The request log for `config`: nil when it is off; `sink`, when given, in place of its
    /// standard error or file.
    static func accessLog(_ config: ProxyConfig, sink: (any AccessLogSink)?, eventLoops: [any EventLoop],
                          logger: Logger) throws -> AccessLog? {
        let chosen: any AccessLogSink
        switch config.accessLog {
        case .off: return nil
        case .stderr: chosen = sink ?? FileSink.standardError()
        case .file(let path):
            do {
                chosen = try sink ?? FileSink(path: path)
            } catch let error as AccessLogError {
                throw ConfigError(message: "access_log: \(error.message)")
            }
        }
        var settings = AccessLog.Settings()
        settings.format = config.logFormat
        return AccessLog(sink: chosen, eventLoops: eventLoops, settings: settings, logger: logger)
    }

    /// Runs until graceful shutdown (SIGTERM, SIGINT); meanwhile SIGHUP reopens a request-log file.
    public func run() async throws {
        var hangUp: HangUpSignal?
        if case .file = config.accessLog, let accessLog = proxy.accessLog {
            hangUp = HangUpSignal(reopening: accessLog)
        }
        try? await gracefulShutdown()
        hangUp?.cancel()
        await shutdown()
    }

    /// Stops accepting, lets requests in flight finish (10 s at most), writes out the request
    /// log, saves the counters.
    public func shutdown() async {
        logger.info("shutting down: finishing requests in flight")
        await server.shutdown(grace: .seconds(10))
        await proxy.accessLog?.close()
        counterFlush.cancel()
        minuteTicks.cancel()
        // Not awaited: a round may be reading the upstream's log; its append is one transaction.
        reconcileRounds?.cancel()
        for task in groupTasks { task.cancel() }
        if let member = proxy.group {
            for task in groupTasks { await task.value }
            await member.leave()
            await (proxy.audit as? GroupAuditLog)?.close()
            await proxy.status?.close()
        }
        proxy.cache.persistCounters()
        await ownedUpstream?.shutdown()
        if ownsEventLoops {
            try? await eventLoops.server.shutdownGracefully()
        }
    }
}
