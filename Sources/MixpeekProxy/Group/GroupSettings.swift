import Foundation
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
    /// How a hit makes sure its list is current: `lease` (the default: the lease and the
    /// announcements, no PostgreSQL call per hit) or `read` (one indexed read of the user's
    /// newest chain record per hit, the simple alternative `scripts/group_bench.py` compares).
    public var hitCheck = HitCheck.lease

    public enum HitCheck: String, Sendable, CaseIterable { case lease, read }

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
    /// libpq's `sslmode`: disable, prefer (the default), require (encrypted, server not
    /// checked), verify-ca, verify-full.
    public var sslMode: String
    /// `sslrootcert`: CA certificates to check the server with (verify-ca, verify-full).
    public var sslRootCert: String?

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
        sslMode = "prefer"
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let value = item.value, Self.sslModes.contains(value) else {
                    throw ConfigError(message: "postgres_url: sslmode must be one of \(Self.sslModes.joined(separator: ", "))")
                }
                sslMode = value
            case "sslrootcert": sslRootCert = item.value
            case "application_name", "connect_timeout": break
            default: throw ConfigError(message: "postgres_url: unknown parameter \(item.name); known: sslmode, sslrootcert")
            }
        }
    }

    /// The URL without its password, for logs and messages.
    public var description: String {
        "postgres://\(user)@\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database ?? "")?sslmode=\(sslMode)"
    }

    /// A connection configuration named `applicationName` in `pg_stat_activity`.
    func connectionConfiguration(applicationName: String) throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        switch sslMode {
        case "disable":
            tls = .disable
        default:
            var configuration = TLSConfiguration.makeClientConfiguration()
            switch sslMode {
            case "prefer", "require": configuration.certificateVerification = .none
            case "verify-ca": configuration.certificateVerification = .noHostnameVerification
            default: configuration.certificateVerification = .fullVerification
            }
            if let sslRootCert { configuration.trustRoots = .file(sslRootCert) }
            let context = try NIOSSLContext(configuration: configuration)
            tls = sslMode == "prefer" ? .prefer(context) : .require(context)
        }
        var configuration = PostgresConnection.Configuration(
            host: host, port: port, username: user, password: password, database: database, tls: tls)
        configuration.options.connectTimeout = .seconds(3)
        configuration.options.additionalStartupParameters = [("application_name", applicationName)]
        return configuration
    }
}
