import Logging
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO

/// One PostgreSQL connection, opened when first needed and again after it broke. Queries from
/// several tasks share it (PostgresNIO queues them on the connection).
actor GroupLink {
    private let url: PostgresURL
    private let applicationName: String
    private let logger: Logger
    private var connection: PostgresConnection?
    private var connecting: Task<PostgresConnection, any Error>?
    private static let ids = NIOLockedValueBox(0)

    /// Run on every new connection (session settings).
    private let setup: [PostgresQuery]

    init(url: PostgresURL, applicationName: String, setup: [PostgresQuery] = [], logger: Logger) {
        self.setup = setup
        self.url = url
        self.applicationName = applicationName
        self.logger = logger
    }

    /// The open connection, or a new one.
    func connected() async throws -> PostgresConnection {
        if let connection, !connection.isClosed { return connection }
        if let connecting { return try await connecting.value }
        let (url, name, logger, setup) = (url, applicationName, logger, setup)
        let id = Self.ids.withLockedValue { $0 += 1; return $0 }
        let task = Task { () throws -> PostgresConnection in
            let connection = try await PostgresConnection.connect(
                configuration: url.connectionConfiguration(applicationName: name), id: id, logger: logger)
            do {
                for query in setup { let _: PostgresRowSequence = try await connection.query(query, logger: logger) }
            } catch {
                try? await connection.closeGracefully()
                throw error
            }
            return connection
        }
        connecting = task
        defer { connecting = nil }
        let made = try await task.value
        connection = made
        return made
    }

    /// Runs `body` on the connection; a failure closes it, so the next call connects again.
    func run<T: Sendable>(_ body: @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let connection = try await connected()
        do {
            return try await body(connection)
        } catch {
            if self.connection === connection {
                self.connection = nil
                try? await connection.close()
            }
            throw error
        }
    }

    func close() async {
        try? await connection?.close()
        connection = nil
    }
}

/// `body`, or `GroupError.unavailable` when it takes longer than `seconds`: a connection
/// whose network went quiet would otherwise hang until TCP gives up, minutes later.
func withTimeout<T: Sendable>(_ seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            throw GroupError.unavailable("\(what): no answer from PostgreSQL within \(seconds) s")
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
