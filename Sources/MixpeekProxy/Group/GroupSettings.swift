import Foundation
import NIOCore
import NIOSSL
import PostgresNIO

/// How a proxy joins a group: the PostgreSQL it shares, its name in the group, its lease.
public struct GroupSettings: Sendable, Equatable {
    /// The database, from `postgres_url` (`postgres://user:password@host:port/db?sslmode=…`).
    public var database: PostgresURL
    /// This proxy's name in `mixpeek_proxies` and in the audit chain's `proxy_id` column.
    public var proxyID: String
    /// How long a lease lasts in PostgreSQL. A proxy renews it four times per lease; a proxy
    /// that stops renewing (frozen, cut off) holds up the others' mutations at most this long.
    public var leaseSeconds: Double
    /// `upstream_timeout`: an intent open longer than this, one lease and `reapMarginSeconds`
    /// (its proxy has surely given up on the upstream) is closed as `unknown` by any proxy.
    public var upstreamTimeoutSeconds: Double
    public var reapMarginSeconds: Double = 2
    /// `group_peer_ttl`: a member not heard from for this long is forgotten here, and its
    /// `mixpeek_proxies` row, its lease over that long, is deleted (`mixpeek_proxies_reap`).
    public var peerTTLSeconds: Double = 600
    /// How a hit makes sure its list is current: `lease` (the default: the lease and the
    /// announcements, no PostgreSQL call per hit) or `read` (one indexed read of the user's
    /// newest chain record per hit, the simple alternative `scripts/group_bench.py` compares).
    public var hitCheck = HitCheck.lease

    public enum HitCheck: String, Sendable, CaseIterable { case lease, read }

    /// `require_append_only_role`: refuse to start, and to join, as a role that could rewrite
    /// the chain (`GroupSchema.rewriteRights`).
    public var requireAppendOnlyRole = false

    public init(database: PostgresURL, proxyID: String, leaseSeconds: Double, upstreamTimeoutSeconds: Double) {
        self.database = database
        self.proxyID = proxyID
        self.leaseSeconds = leaseSeconds
        self.upstreamTimeoutSeconds = upstreamTimeoutSeconds
    }

    /// This process's name when none is given: host, process id and 4 random hex digits (two
    /// containers with one host name may both be pid 1; two proxies sharing a name would not
    /// wait for each other). Drawn once per process, so the name printed at start is the one
    /// the lease and the chain carry.
    public static let defaultProxyID: String = {
        let nonce = String(UInt16.random(in: .min ... .max), radix: 16)
        return "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-\(nonce)"
    }()
}

/// A `postgres://` URL, parsed. Its `description` never shows the password.
public struct PostgresURL: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String?
    /// libpq's `sslmode`: disable, prefer, require (encrypted, server not checked), verify-ca,
    /// verify-full. Unless given: `prefer` for a loopback host, `verify-full` for any other
    /// (`defaultSSLMode`), where libpq's `prefer` would check no certificate.
    public var sslMode: String
    /// `sslrootcert`: CA certificates to check the server with (verify-ca, verify-full).
    public var sslRootCert: String?
    /// `passfile`: a file in libpq's `.pgpass` format to find the password in when the URL has
    /// none and `PGPASSWORD` is unset (else `PGPASSFILE`, else `~/.pgpass`).
    public var passFile: String?

    static let sslModes = ["disable", "prefer", "require", "verify-ca", "verify-full"]

    public init(_ text: String) throws {
        guard let components = URLComponents(string: text), ["postgres", "postgresql"].contains(components.scheme ?? ""),
              let host = components.host, !host.isEmpty else {
            throw ConfigError(message: "postgres_url: expected postgres://user:password@host:port/database")
        }
        self.host = host
        port = components.port ?? 5432
        user = components.percentEncodedUser.flatMap { $0.removingPercentEncoding } ?? "postgres"
        password = components.percentEncodedPassword.flatMap { $0.removingPercentEncoding }
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        database = path.isEmpty ? nil : path
        sslMode = Self.defaultSSLMode(host: host)
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let value = item.value, Self.sslModes.contains(value) else {
                    throw ConfigError(message: "postgres_url: sslmode must be one of \(Self.sslModes.joined(separator: ", "))")
                }
                sslMode = value
            case "sslrootcert": sslRootCert = item.value
            case "passfile": passFile = item.value.flatMap { $0.isEmpty ? nil : $0 }
            case "application_name", "connect_timeout": break
            default: throw ConfigError(message: "postgres_url: unknown parameter \(item.name); known: sslmode, sslrootcert, passfile")
            }
        }
    }

    /// `sslmode` when the URL names none: `prefer` on loopback (an IP literal in 127.0.0.0/8,
    /// `::1` or `localhost`: nobody in between to check a certificate against), `verify-full`
    /// anywhere else, so that a remote server is encrypted and checked unless the URL says otherwise.
    static func defaultSSLMode(host: String) -> String {
        isLoopback(host) ? "prefer" : "verify-full"
    }

    static func isLoopback(_ host: String) -> Bool {
        let name = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if name.lowercased() == "localhost" { return true }
        guard let address = try? SocketAddress(ipAddress: name, port: 0), let canonical = address.ipAddress else { return false }
        switch address {
        case .v4: return canonical.hasPrefix("127.")
        case .v6: return canonical == "::1"
        case .unixDomainSocket: return false
        }
    }

    /// The password to connect with: the URL's, else `PGPASSWORD`, else the first matching line
    /// of the passfile (`passfile`, `PGPASSFILE`, `~/.pgpass`), as libpq looks for it. Read at
    /// each connect, so a rotated password in the file is used at the next reconnect. A passfile
    /// that its group or others may read is refused (libpq ignores it), saying so.
    func resolvedPassword(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String? {
        if let password { return password }
        if let password = environment["PGPASSWORD"], !password.isEmpty { return password }
        let file = passFile ?? environment["PGPASSFILE"] ?? environment["HOME"].map { $0 + "/.pgpass" }
        guard let file, let text = try? String(contentsOfFile: file, encoding: .utf8) else { return nil }
        if let mode = (try? FileManager.default.attributesOfItem(atPath: file))?[.posixPermissions] as? Int, mode & 0o077 != 0 {
            throw ConfigError(message: "the passfile \(file) may be read by its group or others (mode \(String(mode & 0o777, radix: 8))): chmod 600 it")
        }
        return PassFile.password(in: text, host: host, port: port, database: database ?? user, user: user)
    }

    /// The URL without its password, for logs and messages.
    public var description: String {
        "postgres://\(user)@\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database ?? "")?sslmode=\(sslMode)"
    }

    /// The TLS `sslMode` asks for, nil for `disable`: `prefer` and `require` check no
    /// certificate (as libpq), `verify-ca` the chain, `verify-full` the chain and the host name.
    func tlsConfiguration() -> TLSConfiguration? {
        guard sslMode != "disable" else { return nil }
        var configuration = TLSConfiguration.makeClientConfiguration()
        switch sslMode {
        case "prefer", "require": configuration.certificateVerification = .none
        case "verify-ca": configuration.certificateVerification = .noHostnameVerification
        default: configuration.certificateVerification = .fullVerification
        }
        if let sslRootCert { configuration.trustRoots = .file(sslRootCert) }
        return configuration
    }

    /// A connection configuration named `applicationName` in `pg_stat_activity`.
    func connectionConfiguration(applicationName: String) throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        if let configuration = tlsConfiguration() {
            let context = try NIOSSLContext(configuration: configuration)
            tls = sslMode == "prefer" ? .prefer(context) : .require(context)
        } else {
            tls = .disable
        }
        var configuration = PostgresConnection.Configuration(
            host: host, port: port, username: user, password: try resolvedPassword(), database: database, tls: tls)
        configuration.options.connectTimeout = .seconds(3)
        configuration.options.additionalStartupParameters = [("application_name", applicationName)]
        return configuration
    }
}

/// libpq's password file (`.pgpass`): `hostname:port:database:username:password` a line, each
/// of the first four a value or `*`; `\:` and `\\` escape a colon and a backslash; `#` starts a
/// comment line. The first line that matches wins.
enum PassFile {
    static func password(in text: String, host: String, port: Int, database: String, user: String) -> String? {
        let wanted = [host, String(port), database, user]
        for line in text.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }) {
            if line.hasPrefix("#") { continue }
            let fields = split(line)
            guard fields.count == 5 else { continue }
            let matches = zip(fields.prefix(4), wanted).allSatisfy { field, value in
                field == "*" || field == value
            }
            if matches { return fields[4] }
        }
        return nil
    }

    /// A line's fields, split at the colons no backslash escapes.
    static func split(_ line: Substring) -> [String] {
        var fields = [""]
        var escaped = false
        for character in line {
            if escaped {
                fields[fields.count - 1].append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == ":" && fields.count < 5 {
                fields.append("")
            } else {
                fields[fields.count - 1].append(character)
            }
        }
        return fields
    }
}
