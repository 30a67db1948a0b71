import Foundation
import Logging
import MixpeekLog
import NIOCore

/// Every setting of `serve` (and `demo`), with its defaults. Values come from, in rising
/// precedence: the defaults, a config file (`--config`), `MIXPEEK_PROXY_*` environment
/// variables, and flags.
public struct ProxyConfig: Sendable, Equatable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var upstream = "https://api.mixpeek.com"
    public var dataDir = "./mixpeek-proxy-data"
    /// 30 s: key lists change rarely and every change made through the proxy invalidates at
    /// once, so the TTL only bounds how long a change made elsewhere (the dashboard, another
    /// proxy) stays unseen, while a CI loop listing several times a second still hits.
    public var cacheTTL: Double = 30
    public var staleIfError: Double = 300
    /// Keep lists whatever the upstream's `Cache-Control` says but `no-store` (nginx's
    /// `proxy_ignore_headers Cache-Control`); by default the proxy keeps what RFC 9111 lets a
    /// shared cache keep.
    public var cacheIgnoreUpstreamDirectives = false
    /// Seconds a credential is answered from cache without the upstream confirming it (a 2xx
    /// to it); past that its next list is forwarded, which bounds how long a key revoked
    /// elsewhere (the dashboard) is served. 0: every list is forwarded.
    public var credentialRecheck: Double = 30
    /// Seconds a mutation's answer is held while its outcome record cannot be written; past
    /// that the client gets 503 `mixpeek_proxy.audit_incomplete` and the write goes on.
    public var auditOutcomeWait: Double = 10
    public var upstreamTimeout: Double = 30
    public var upstreamCAFile: String?
    public var maxBodyBytes = 1 << 20
    public var cacheMaxEntries = 100_000
    public var cacheMaxBytes = 256 << 20
    public var cacheMemoryBytes = 64 << 20
    public var passThrough = true
    public var allowNonLoopback = false
    public var clientTimeout: Double = 30
    /// One event loop for clients, like nginx's one worker: it serves more than 50,000 cache
    /// hits a second on this project's 2-core machine with a shorter tail than two loops (which
    /// add about a quarter more hits a second but share the cores with everything else). The
    /// upstream client gets as many loops of its own, so list misses use a second core. 0 means
    /// one per CPU this process may run on.
    public var eventLoops = 1
    /// The request log: one line per request, on by default, apart from `logLevel` (which
    /// governs the diagnostics only).
    public var accessLog = AccessLogTarget.stderr
    public var logLevel = Logger.Level.info
    public var logFormat = LogFormat.text
    public var statusPage = StatusPageAccess.loopback
    /// A group of proxies: the PostgreSQL they share (nil: a lone proxy, SQLite only).
    public var postgresURL: PostgresURL?
    /// This proxy's name in its group (default: host name and process id).
    public var proxyID: String?
    /// Seconds a group lease lasts.
    public var groupLease: Double = 2
    /// `group_peer_ttl`: seconds after which a member not heard from is forgotten and its row reaped.
    public var groupPeerTTL: Double = 600
    /// How a hit in a group makes sure its list is current (`GroupSettings.HitCheck`).
    public var groupHitCheck = GroupSettings.HitCheck.lease
    /// In a group: refuse to start (and to join) when the role of `postgres_url` could rewrite
    /// the audit chain (it owns the chain's tables or functions, or is a superuser).
    public var requireAppendOnlyRole = false
    /// The verifiable log's origin, the first line of its checkpoints (nil:
    /// `LogSigning.defaultOrigin`, from the host name and the data dir).
    public var logOrigin: String?
    /// The Ed25519 key checkpoints are signed with (nil: `log-signing.key` in the data dir,
    /// made at the first start).
    public var logSigningKeyFile: String?

    public enum LogFormat: String, Sendable, CaseIterable { case text, json }

    /// The audit chain's HMAC key: from the environment only, never from a file or a flag
    /// (where it would be on disk or in `ps`).
    public var auditHMACKey: String?
    public static let auditHMACKeyVariable = "MIXPEEK_PROXY_AUDIT_HMAC_KEY"

    /// Seconds between the proxy's own `audit reconcile` rounds over the last 24 h (0: off, the
    /// default). Needs `reconcileToken`.
    public var reconcileInterval: Double = 0
    /// The admin key reconcile reads the upstream's audit log with: from the environment only
    /// (`MIXPEEK_PROXY_RECONCILE_TOKEN`), never stored, logged or shown.
    public var reconcileToken: String?
    public static let reconcileTokenVariable = "MIXPEEK_PROXY_RECONCILE_TOKEN"

    /// Where request-log lines go.
    public enum AccessLogTarget: Sendable, Equatable {
        case stderr
        /// A file opened for appending, opened again on SIGHUP (after logrotate renamed it).
        case file(String)
        case off
    }

    public init() {}

    /// One setting: its key in the file, and its environment variable. Each is documented in
    /// `config/mixpeek-proxy.conf` and the README's configuration table (a test checks both).
    public struct Key: Sendable {
        public var name: String
        public var environment: String { "MIXPEEK_PROXY_" + name.uppercased() }
    }

    public static let keys: [Key] = [
        "host", "port", "upstream", "data_dir", "cache_ttl", "stale_if_error", "upstream_timeout",
        "upstream_ca_file", "cache_ignore_upstream_directives", "audit_outcome_wait", "credential_recheck", "max_body_bytes", "cache_max_entries", "cache_max_bytes", "cache_memory_bytes",
        "pass_through", "allow_non_loopback", "client_timeout", "event_loops", "access_log", "log_level",
        "log_format", "status_page", "postgres_url", "proxy_id", "group_lease", "group_peer_ttl", "group_hit_check",
        "require_append_only_role", "reconcile_interval", "log_origin", "log_signing_key_file",
    ].map { Key(name: $0) }

    /// Builds the configuration from the layers, each a map from key name to raw text.
    /// Throws `ConfigError` naming the key and where its value came from.
    public static func load(
        defaults: [String: String] = [:], file: String?, environment: [String: String], flags: [String: String]
    ) throws -> ProxyConfig {
        var config = ProxyConfig()
        for (name, value) in defaults {
            try config.set(name, value, source: "defaults")
        }
        if let file {
            for (name, (value, line)) in try parseFile(file) {
                try config.set(name, value, source: "\(file) line \(line)")
            }
        }
        for key in keys {
            if let value = environment[key.environment] {
                try config.set(key.name, value, source: "environment variable \(key.environment)")
            }
        }
        for (name, value) in flags.sorted(by: { $0.key < $1.key }) {
            try config.set(name, value, source: "flag --\(name.replacingOccurrences(of: "_", with: "-"))")
        }
        config.auditHMACKey = environment[auditHMACKeyVariable].flatMap { $0.isEmpty ? nil : $0 }
        config.reconcileToken = environment[reconcileTokenVariable].flatMap { $0.isEmpty ? nil : $0 }
        if config.reconcileInterval > 0 && config.reconcileToken == nil {
            throw ConfigError(message: "reconcile_interval needs the upstream's admin key in \(reconcileTokenVariable) (ADMIN permission; read from the environment only)")
        }
        return config
    }

    mutating func set(_ name: String, _ raw: String, source: String) throws {
        func fail(_ expected: String) -> ConfigError {
            ConfigError(message: "\(name) = \(raw.debugDescription) in \(source): expected \(expected)")
        }
        func number(_ range: ClosedRange<Double>) throws -> Double {
            guard let value = Double(raw), range.contains(value) else { throw fail("a number from \(range.lowerBound) to \(range.upperBound)") }
            return value
        }
        func integer(_ range: ClosedRange<Int>) throws -> Int {
            guard let value = Int(raw), range.contains(value) else { throw fail("a whole number from \(range.lowerBound) to \(range.upperBound)") }
            return value
        }
        func boolean() throws -> Bool {
            switch raw.lowercased() {
            case "true", "1", "yes", "on": return true
            case "false", "0", "no", "off": return false
            default: throw fail("true or false")
            }
        }
        switch name {
        case "host":
            guard !raw.isEmpty else { throw fail("an address") }
            host = raw
        case "port": port = try integer(0...65535)
        case "upstream":
            guard let url = URL(string: raw), ["http", "https"].contains(url.scheme ?? ""), url.host?.isEmpty == false else {
                throw fail("an http:// or https:// URL")
            }
            upstream = raw
        case "data_dir":
            guard !raw.isEmpty else { throw fail("a directory") }
            dataDir = raw
        case "cache_ttl": cacheTTL = try number(0...86_400)
        case "stale_if_error": staleIfError = try number(0...604_800)
        case "cache_ignore_upstream_directives": cacheIgnoreUpstreamDirectives = try boolean()
        case "audit_outcome_wait": auditOutcomeWait = try number(0...3_600)
        case "credential_recheck": credentialRecheck = try number(0...86_400)
        case "reconcile_interval": reconcileInterval = try number(0...604_800)
        case "upstream_timeout": upstreamTimeout = try number(0.001...3_600)
        case "upstream_ca_file": upstreamCAFile = raw.isEmpty ? nil : raw
        case "max_body_bytes": maxBodyBytes = try integer(1...(64 << 20))
        case "cache_max_entries": cacheMaxEntries = try integer(1...10_000_000)
        case "cache_max_bytes": cacheMaxBytes = try integer(1...(1 << 40))
        case "cache_memory_bytes": cacheMemoryBytes = try integer(0...(1 << 36))
        case "pass_through": passThrough = try boolean()
        case "allow_non_loopback": allowNonLoopback = try boolean()
        case "client_timeout": clientTimeout = try number(0.1...3_600)
        case "event_loops": eventLoops = try integer(0...256)
        case "access_log":
            switch raw.lowercased() {
            case "stderr": accessLog = .stderr
            case "off": accessLog = .off
            default:
                var isDirectory: ObjCBool = false
                guard !raw.isEmpty, !raw.hasSuffix("/"), !raw.utf8.contains(where: { $0 < 0x20 }),
                      !(FileManager.default.fileExists(atPath: raw, isDirectory: &isDirectory) && isDirectory.boolValue) else {
                    throw fail("stderr, off or the path of a file")
                }
                accessLog = .file(raw)
            }
        case "log_level":
            guard let level = Logger.Level(rawValue: raw.lowercased()) else { throw fail("one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))") }
            logLevel = level
        case "log_format":
            guard let format = LogFormat(rawValue: raw.lowercased()) else { throw fail("text or json") }
            logFormat = format
        case "status_page":
            guard let access = StatusPageAccess(rawValue: raw.lowercased()) else { throw fail("loopback, on or off") }
            statusPage = access
        case "postgres_url":
            do {
                postgresURL = raw.isEmpty ? nil : try PostgresURL(raw)
            } catch let error as ConfigError {
                // The message never repeats the URL: it may hold a password.
                throw ConfigError(message: "postgres_url in \(source): \(error.message.replacingOccurrences(of: "postgres_url: ", with: ""))")
            }
        case "proxy_id":
            guard !raw.isEmpty, raw.count <= 64, raw.allSatisfy({ $0.isLetter || $0.isNumber || "-_.:".contains($0) }) else {
                throw fail("up to 64 letters, digits, '-', '_', '.' or ':'")
            }
            proxyID = raw
        case "group_lease": groupLease = try number(0.2...60)
        case "group_peer_ttl": groupPeerTTL = try number(10...604_800)
        case "group_hit_check":
            guard let check = GroupSettings.HitCheck(rawValue: raw.lowercased()) else { throw fail("lease or read") }
            groupHitCheck = check
        case "require_append_only_role": requireAppendOnlyRole = try boolean()
        case "log_origin":
            guard SignedNote.isValidName(raw) else { throw fail("a signed-note name: not empty, no spaces, no '+'") }
            logOrigin = raw
        case "log_signing_key_file": logSigningKeyFile = raw.isEmpty ? nil : raw
        default:
            throw ConfigError(message: "unknown setting '\(name)' in \(source); known: \(Self.keys.map(\.name).joined(separator: ", "))")
        }
    }

    /// Reads `key = value` lines; `#` starts a comment; strings may be quoted.
    static func parseFile(_ path: String) throws -> [(String, (String, Int))] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError(message: "cannot read config file \(path)")
        }
        var settings: [(String, (String, Int))] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("#") || line.isEmpty { continue }
            guard let equals = line.firstIndex(of: "=") else {
                throw ConfigError(message: "\(path) line \(index + 1): expected `key = value`")
            }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            line = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            var value: String
            if line.hasPrefix("\"") {
                guard let close = line.dropFirst().firstIndex(of: "\"") else {
                    throw ConfigError(message: "\(path) line \(index + 1): unterminated string for \(name)")
                }
                value = String(line[line.index(after: line.startIndex)..<close])
            } else {
                value = String(line.prefix { $0 != "#" }).trimmingCharacters(in: .whitespaces)
            }
            if value.isEmpty && !line.hasPrefix("\"") {
                throw ConfigError(message: "\(path) line \(index + 1): \(name) has no value")
            }
            settings.append((name, (value, index + 1)))
        }
        return settings
    }

    /// The group this proxy joins, when `postgres_url` is set.
    public var group: GroupSettings? {
        postgresURL.map {
            var settings = GroupSettings(database: $0, proxyID: proxyID ?? GroupSettings.defaultProxyID, leaseSeconds: groupLease,
                                         upstreamTimeoutSeconds: upstreamTimeout)
            settings.hitCheck = groupHitCheck
            settings.peerTTLSeconds = groupPeerTTL
            settings.requireAppendOnlyRole = requireAppendOnlyRole
            return settings
        }
    }

    /// What the lone proxy signs its checkpoints with: the key of `log_signing_key_file`
    /// (made at the first start when it is the data dir's default) and `log_origin`.
    public func logSigning() throws -> LogSigning {
        try signing(origin: logOrigin ?? LogSigning.defaultOrigin(dataDir: dataDir), named: "log origin", from: "the host name and data_dir",
                    defaultKeyFile: LogSigning.defaultKeyFile(dataDir: dataDir))
    }

    /// A group member's key for the group's one log, whose origin is `log_origin` or, by
    /// default, `mixpeek-proxy/<PostgreSQL host>/<database>` (the same for every member). The
    /// key is `log_signing_key_file` or `group-log-signing.key` in the data dir, made at the
    /// first start and named as the origin: each member signs as the log, with a key of its own.
    public func groupLogSigning(_ database: PostgresURL) throws -> LogSigning {
        try signing(origin: logOrigin ?? "mixpeek-proxy/\(database.host)/\(database.database ?? database.user)", named: "group log origin",
                    from: "postgres_url",
                    defaultKeyFile: LogSigning.defaultGroupKeyFile(dataDir: dataDir))
    }

    /// The key of `log_signing_key_file`, or of `defaultKeyFile` (made when missing), for `origin`.
    private func signing(origin: String, named name: String, from source: String, defaultKeyFile: String) throws -> LogSigning {
        guard SignedNote.isValidName(origin) else {
            throw ConfigError(message: "the \(name) \(origin.debugDescription) (from \(source)) is not a valid signed-note name (no spaces, no '+'); set log_origin")
        }
        do {
            return try LogSigning.load(keyFile: logSigningKeyFile ?? defaultKeyFile, origin: origin, create: logSigningKeyFile == nil)
        } catch let error as LogKeyError {
            throw ConfigError(message: "log_signing_key_file: \(error.description)")
        }
    }

    /// The number of event-loop threads to start: `eventLoops`, or for 0 the CPUs this process
    /// may run on (its affinity mask, so `taskset -c 0` means one).
    public var resolvedEventLoops: Int {
        eventLoops > 0 ? eventLoops : Self.availableCPUs()
    }

    static func availableCPUs() -> Int {
        // `Cpus_allowed:` in /proc/self/status is the affinity mask in hex (comma-grouped).
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") }) {
            let count = line.dropFirst("Cpus_allowed:".count).compactMap { $0.hexDigitValue?.nonzeroBitCount }.reduce(0, +)
            if count > 0 { return count }
        }
        return ProcessInfo.processInfo.activeProcessorCount
    }

    /// Loopback addresses, the only ones served unless `allow_non_loopback` is set: an IP
    /// literal in 127.0.0.0/8, `::1`, or exactly `localhost`. Any other name, `127.example.com`
    /// included, resolves to wherever its owner points it.
    public var hostIsLoopback: Bool {
        if host == "localhost" { return true }
        // Parsed as a literal (inet_pton: four decimal parts, no name lookup), then read back
        // in its one canonical spelling.
        guard let address = try? SocketAddress(ipAddress: host, port: 0), let canonical = address.ipAddress else { return false }
        switch address {
        case .v4: return canonical.hasPrefix("127.")
        case .v6: return canonical == "::1"
        case .unixDomainSocket: return false
        }
    }
}

public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { "configuration error: \(message)" }
}
