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
            let connection = try await Self.connect(url, applicationName: name, within: 10, id: id, logger: logger)
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
    /// Past `timeout` seconds the connection is closed under it and the wait ends (`bounded`):
    /// a network gone quiet would otherwise hold it until TCP gives up, minutes later.
    func run<T: Sendable>(timeout: Double = 10, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let connection = try await connected()
        do {
            return try await Self.bounded(timeout, on: connection.eventLoop, "for a query", onTimeout: { let _: EventLoopFuture<Void> = connection.close() }) {
                try await body(connection)
            }
        } catch {
            if self.connection === connection {
                self.connection = nil
                try? await connection.close()
            }
            throw error
        }
    }

    /// Runs `body` in a task of its own and waits for it at most `seconds`: then `onTimeout`
    /// runs (it closes the connection, which fails whatever waits on it) and this throws,
    /// leaving `body` cancelled, to end on its own. Closing is not always enough: PostgresNIO
    /// drops a query written just as its connection closes, and whoever awaits that query then
    /// waits forever (a proxy's LISTEN session did, once the server stopped). So every wait on
    /// PostgreSQL in a group is bounded this way.
    static func bounded<T: Sendable>(_ seconds: Double, on eventLoop: any EventLoop, _ what: String,
                                     onTimeout: @escaping @Sendable () -> Void = {},
                                     _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let waiting = NIOLockedValueBox<CheckedContinuation<T, any Error>?>(nil)
        let work = NIOLockedValueBox<Task<Void, Never>?>(nil)
        @Sendable func finish(_ result: Result<T, any Error>) -> Bool {
            guard let continuation = waiting.withLockedValue({ waiting in defer { waiting = nil }; return waiting }) else { return false }
            continuation.resume(with: result)
            return true
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                waiting.withLockedValue { $0 = continuation }
                let timer = eventLoop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) {
                    onTimeout()
                    if finish(.failure(GroupError.unavailable("no answer from PostgreSQL within \(seconds) s \(what)"))) {
                        work.withLockedValue { $0 }?.cancel()
                    }
                }
                let task = Task {
                    let result: Result<T, any Error>
                    do {
                        result = .success(try await body())
                    } catch {
                        result = .failure(error)
                    }
                    timer.cancel()
                    _ = finish(result)
                }
                work.withLockedValue { $0 = task }
            }
        } onCancel: {
            work.withLockedValue { $0 }?.cancel()
        }
    }

    /// A new connection, or an error after `seconds`: the connect timeout covers TCP only, and
    /// a server (or something in between) that accepts and then says nothing would hold the
    /// start-up handshake forever.
    static func connect(_ url: PostgresURL, applicationName: String, within seconds: Double, id: Int = 0,
                        logger: Logger) async throws -> PostgresConnection {
        let configuration = try url.connectionConfiguration(applicationName: applicationName)
        return try await withThrowingTaskGroup(of: PostgresConnection?.self) { group in
            group.addTask { try await PostgresConnection.connect(configuration: configuration, id: id, logger: logger) }
            group.addTask {
                try await Task.sleep(for: .seconds(seconds))
                return nil
            }
            defer { group.cancelAll() }
            guard let connection = try await group.next() ?? nil else {
                throw GroupError.unavailable("no answer from PostgreSQL within \(seconds) s of connecting")
            }
            return connection
        }
    }

    func close() async {
        try? await connection?.close()
        connection = nil
    }
}

