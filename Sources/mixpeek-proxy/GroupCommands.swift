import ArgumentParser
import Foundation
import Logging
import MixpeekProxy

/// Where `audit query` and `audit verify` read: a data directory, or a group's PostgreSQL.
struct PostgresOption: ParsableArguments {
    @Option(help: "Read the group's chain in this PostgreSQL instead (default $MIXPEEK_PROXY_POSTGRES_URL when set and --data-dir is not). Give the password in PGPASSWORD or a passfile, not here.")
    var postgresUrl: String?

    /// The URL to read, if any: the flag, else the environment when no data dir was named.
    func url(dataDirGiven: Bool) throws -> PostgresURL? {
        if let postgresUrl { return try PostgresFlag.parse(postgresUrl) }
        guard !dataDirGiven, let text = ProcessInfo.processInfo.environment["MIXPEEK_PROXY_POSTGRES_URL"] else { return nil }
        do {
            return try PostgresURL(text)
        } catch let error as ConfigError {
            throw ValidationError(error.message)
        }
    }
}

/// A PostgreSQL URL given as a flag, where every user of the machine can read it (`ps`).
enum PostgresFlag {
    static let passwordWarning = "warning: the --postgres-url flag holds a password, which anyone on this machine can read in the process list; give it in PGPASSWORD, a passfile (PGPASSFILE, ~/.pgpass or passfile= in the URL) or MIXPEEK_PROXY_POSTGRES_URL instead"

    /// Parses `text`, saying on stderr when it holds a password.
    static func parse(_ text: String) throws -> PostgresURL {
        let url: PostgresURL
        do {
            url = try PostgresURL(text)
        } catch let error as ConfigError {
            throw ValidationError(error.message)
        }
        if url.password != nil { warn() }
        return url
    }

    static func warn() {
        FileHandle.standardError.write(Data((passwordWarning + "\n").utf8))
    }
}

struct Group: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set up PostgreSQL for a group of proxies.",
        subcommands: [Migrate.self, Setup.self])

    /// `group migrate` and its older name `group setup`.
    static func migrate(_ text: String, grant role: String?) async throws {
        let url = try PostgresFlag.parse(text)
        do {
            try await GroupSchema.migrate(url: url, grant: role, logger: Logs.quiet("mixpeek-proxy.group"))
        } catch {
            printFlushed("group migrate failed: \(error)")
            throw ExitCode(1)
        }
        printFlushed("group schema ready in \(url)" + (role.map {
            "; role \($0) may append to the audit chain and read it, not change it, disable its triggers or drop it"
        } ?? ""))
    }

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create or upgrade the group's tables as their owner, and grant the proxies' role what serving needs, no more.",
            discussion: """
                Run it as the role that is to own the tables (the database's owner), and again after an
                upgrade. With --grant, ROLE may then add to the audit chain and read it, but not change
                or delete a record, disable the chain's triggers or drop it; the command fails if ROLE
                could still (it is a superuser, or owns the chain's tables, functions or schema).
                Example:
                  psql -c "CREATE ROLE mixpeek_proxy LOGIN PASSWORD '…'"
                  PGPASSWORD=… mixpeek-proxy group migrate --postgres-url postgres://postgres@db:5432/mixpeek --grant mixpeek_proxy
                  PGPASSWORD=… MIXPEEK_PROXY_POSTGRES_URL=postgres://mixpeek_proxy@db:5432/mixpeek mixpeek-proxy serve --append-only-role
                """)

        @Option(help: "A URL of the role to own the tables (the database's owner); the password in PGPASSWORD or a passfile.")
        var postgresUrl: String
        @Option(help: "The role the proxies connect as: granted SELECT and INSERT on the chain and what serving needs on the rest.")
        var grant: String?

        func run() async throws {
            try await Group.migrate(postgresUrl, grant: grant)
        }
    }

    struct Setup: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The older name of `group migrate`: --role ROLE is --grant ROLE.")

        @Option(help: "A URL of the role to own the tables (the database's owner).") var postgresUrl: String
        @Option(help: "The role the proxies connect as (as `group migrate --grant`).") var role: String?

        func run() async throws {
            try await Group.migrate(postgresUrl, grant: role)
        }
    }
}
