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
        subcommands: [Setup.self])

    struct Setup: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the group's tables (as an owner) and grant a proxies' role what it needs, no more.",
            discussion: """
                The role may then add to the audit chain and read it, but never change or delete it.
                Example:
                  psql -c "CREATE ROLE mixpeek_proxy LOGIN PASSWORD '…'"
                  mixpeek-proxy group setup --postgres-url postgres://postgres@db:5432/mixpeek --role mixpeek_proxy
                  MIXPEEK_PROXY_POSTGRES_URL=postgres://mixpeek_proxy:…@db:5432/mixpeek mixpeek-proxy serve
                """)

        @Option(help: "A URL of a role that may create tables (the database's owner).") var postgresUrl: String
        @Option(help: "The role the proxies connect as, to grant SELECT and INSERT on the chain.") var role: String?

        func run() async throws {
            let url = try PostgresFlag.parse(postgresUrl)
            do {
                try await GroupSchema.setUp(url: url, role: role, logger: Logs.quiet("mixpeek-proxy.group"))
            } catch {
                printFlushed("group setup failed: \(error)")
                throw ExitCode(1)
            }
            printFlushed("group schema ready in \(url)" + (role.map { "; role \($0) may append to and read the chain, not change it" } ?? ""))
        }
    }
}
