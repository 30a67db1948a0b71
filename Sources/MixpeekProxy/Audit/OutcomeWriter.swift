import Foundation
import Logging
import MixpeekAPI
import NIOConcurrencyHelpers
import Synchronization

/// Where "a mutation's answer reaches its client only after its outcome is durable" lives
/// (CONTRACT §5): Vault's rule, that a request whose audit cannot be completed is not answered
/// as a success.
///
/// The outcome is written, and written again with backoff while the write fails, for up to
/// `audit_outcome_wait`, the answer held meanwhile. Past that the client is told so (503
/// `mixpeek_proxy.audit_incomplete`, `Proxy.mutate`) and the write goes on in the background
/// until the outcome lands as its own chained record. From the first failed write until it
/// lands, the user's lists are neither served from nor kept in the cache (`PendingOutcomes`),
/// since nothing durable says yet how the mutation ended.
public final class OutcomeWriter: Sendable {
    public enum Delivery: Sendable, Equatable {
        case written(AuditRecord)
        /// Not written within the wait; still being written in the background.
        case incomplete
    }

    let pending: PendingOutcomes
    let wait: Double
    private let invalidation: any Invalidation
    private let logger: Logger
    /// Outcome writes still going on in the background (`/_proxy/metrics`).
    private let backlog = Atomic<Int>(0)

    public init(pending: PendingOutcomes, wait: Double, invalidation: any Invalidation, logger: Logger) {
        self.pending = pending
        self.wait = wait
        self.invalidation = invalidation
        self.logger = logger
    }

    /// Outcomes of mutations already answered `audit_incomplete` that are not written yet.
    public var incompleteCount: Int { backlog.load(ordering: .relaxed) }

    /// Writes the outcome through `write` (one append of the outcome record) before the answer.
    public func deliver(user: String, intentSeq: Int64, requestID: String,
                        _ write: @escaping @Sendable () async throws -> AuditRecord) async -> Delivery {
        do {
            return .written(try await write())
        } catch {
            logger.error("audit outcome could not be written; retrying before answering",
                         metadata: ["request_id": "\(requestID)", "intent_seq": "\(intentSeq)", "error": "\(error)"])
        }
        pending.open(user: user)
        let deadline = Date().addingTimeInterval(wait)
        var delay = 0.05
        while Date().addingTimeInterval(delay) < deadline {
            try? await Task.sleep(for: .seconds(delay))
            if let record = try? await write() {
                await landed(user: user)
                return .written(record)
            }
            delay = min(delay * 2, 1)
        }
        backlog.add(1, ordering: .relaxed)
        logger.error("audit outcome still not written; answered audit_incomplete, writing on in the background",
                     metadata: ["request_id": "\(requestID)", "intent_seq": "\(intentSeq)"])
        Task {
            var delay = 0.5
            while true {
                if (try? await write()) != nil { break }
                try? await Task.sleep(for: .seconds(delay))
                delay = min(delay * 2, 5)
            }
            backlog.subtract(1, ordering: .relaxed)
            logger.notice("audit outcome written after its mutation was answered audit_incomplete",
                          metadata: ["request_id": "\(requestID)", "intent_seq": "\(intentSeq)"])
            await landed(user: user)
        }
        return .incomplete
    }

    /// The outcome is durable: the user's lists may be cached again, from a fresh start.
    private func landed(user: String) async {
        await invalidation.invalidate(user: user)
        pending.close(user: user)
    }
}

/// Users with a mutation whose outcome is not yet durable: their lists are forwarded and not
/// kept. The `ListGate` of every proxy, in front of the group's when there is one.
public final class PendingOutcomes: ListGate {
    private let next: (any ListGate)?
    /// Open marks by folded user (a user may have several mutations pending).
    private let open = NIOLockedValueBox([String: Int]())
    /// How many marks there are: a hit reads only this while there are none.
    private let count = Atomic<Int>(0)

    public init(then next: (any ListGate)? = nil) {
        self.next = next
    }

    @inline(__always)
    public func admits(user: String) -> Bool {
        if count.load(ordering: .acquiring) != 0 {
            let folded = UserIdentity.folded(user)
            if open.withLockedValue({ $0[folded] != nil }) { return false }
        }
        return next?.admits(user: user) ?? true
    }

    /// Why `user`'s lists are not admitted, as `Cache-Status`'s `detail` says it:
    /// `outcome-pending` for a mutation of theirs whose outcome is not durable yet, else
    /// `group-closed` (the group's gate).
    func closedReason(user: String) -> String {
        let folded = UserIdentity.folded(user)
        return open.withLockedValue { $0[folded] != nil } ? "outcome-pending" : "group-closed"
    }

    func open(user: String) {
        let folded = UserIdentity.folded(user)
        open.withLockedValue { $0[folded, default: 0] += 1 }
        count.add(1, ordering: .releasing)
    }

    func close(user: String) {
        let folded = UserIdentity.folded(user)
        open.withLockedValue { open in
            guard let marks = open[folded] else { return }
            open[folded] = marks > 1 ? marks - 1 : nil
        }
        count.subtract(1, ordering: .releasing)
    }

    /// Users whose lists are held back for an outcome not yet written.
    public var users: Int { open.withLockedValue { $0.count } }
}
