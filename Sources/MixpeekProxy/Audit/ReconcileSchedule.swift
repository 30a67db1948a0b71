import Foundation
import Logging
import NIOConcurrencyHelpers

/// `reconcile_interval`: `audit reconcile` run by the proxy itself every so many seconds, over
/// the last 24 hours, against its own audit log (a group's chain in a group), with the admin
/// key in `MIXPEEK_PROXY_RECONCILE_TOKEN` (read at start, never stored). Resolutions are
/// appended as the command appends them. The last result is what the status page and
/// `/metrics` show (`mixpeek_proxy_changes_around_proxy`). Off by default.
public final class ReconcileSchedule: Sendable {
    /// The window each round holds against the upstream's log.
    public static let window: TimeInterval = 24 * 3600

    /// The last round, as the status page shows it.
    public struct Result: Sendable, Equatable {
        /// Seconds since 1970.
        public var at: Double
        public var aroundProxy: Int
        public var unconfirmed: Int
        public var resolved: Int
        public var events: Int
        /// Why the round found nothing (the upstream's log unreadable, the token refused);
        /// nil when it ran.
        public var problem: String?
    }

    public let interval: TimeInterval
    private let source: UpstreamAuditLog
    private let log: @Sendable () async throws -> (log: any ReconciledLog, close: @Sendable () async -> Void)
    private let logger: Logger
    private let last = NIOLockedValueBox<Result?>(nil)

    /// `log` opens the log a round reads and settles (and says how to close it after).
    public init(interval: TimeInterval, upstream: String, token: String, logger: Logger,
                log: @escaping @Sendable () async throws -> (log: any ReconciledLog, close: @Sendable () async -> Void)) {
        self.interval = interval
        source = UpstreamAuditLog(baseURL: upstream, token: token)
        self.log = log
        self.logger = logger
    }

    public var lastResult: Result? { last.withLockedValue { $0 } }

    /// One round now: the last 24 hours.
    @discardableResult
    public func round() async -> Result {
        let now = Date()
        let reconciliation = Reconciliation(since: now - Self.window, until: now, slack: 5)
        var result = Result(at: now.timeIntervalSince1970, aroundProxy: 0, unconfirmed: 0, resolved: 0, events: 0, problem: nil)
        do {
            let opened = try await log()
            do {
                let run = try await reconciliation.run(against: opened.log, source: source)
                result.aroundProxy = run.count(.around_proxy)
                result.unconfirmed = run.count(.unconfirmed)
                result.resolved = run.count(.resolved_unknown)
                result.events = run.events
                await opened.close()
            } catch {
                await opened.close()
                throw error
            }
            if result.aroundProxy > 0 || result.unconfirmed > 0 {
                logger.warning("reconcile: the upstream's audit log shows what the proxy's does not", metadata: [
                    "around_proxy": "\(result.aroundProxy)", "unconfirmed": "\(result.unconfirmed)", "resolved_unknown": "\(result.resolved)"])
            }
        } catch {
            result.problem = error is UpstreamAuditError || error is ReconcileHeadMismatch ? "\(error)" : GroupError.describe(error)
            logger.error("reconcile: the round could not run", metadata: ["error": "\(result.problem ?? "")"])
        }
        last.withLockedValue { $0 = result }
        return result
    }

    /// A round at once, then one every `interval`, until cancelled.
    public func run() async {
        while !Task.isCancelled {
            await round()
            try? await Task.sleep(for: .seconds(interval))
        }
    }
}
