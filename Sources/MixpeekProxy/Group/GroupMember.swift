import Foundation
import Logging
import MixpeekAPI
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO
import Synchronization

/// This proxy's membership in a group: the guarantee that once any proxy has answered a
/// mutation, no proxy serves a list of that user that predates it. The protocol's decisions
/// are `GroupState`'s (a value, no I/O); this type feeds it events (`step`) and performs its
/// actions (`perform`) on PostgreSQL, the cache and the gate.
///
/// How (docs/GROUP.md argues it):
/// - Every record appended to the chain is announced on the `mixpeek_proxy` channel. This
///   proxy LISTENs on a connection of its own; for an intent it marks the user *open* (no hit,
///   nothing stored) and drops the user's lists; for an outcome it drops them again and clears
///   the mark. Then it writes how far it has read (`read_seq`).
/// - It holds a lease in `mixpeek_proxies`, renewed on that same connection every quarter
///   lease. It serves hits only while its own reckoning of the lease (from before it sent the
///   renewal, shortened by a tenth) holds; after a lapse or a new connection it catches up:
///   drops every cached list and reloads the open intents before serving a hit again.
/// - A proxy that appended an intent forwards the mutation only when every proxy whose lease
///   is live (in PostgreSQL's clock) has read past it (`awaitPeers`). So from then until the
///   outcome is read, every live proxy forwards that user's lists uncached, and a proxy that
///   was not live serves no hit until it has caught up.
public final class GroupMember: ListGate, Sendable {
    public let settings: GroupSettings
    private let logger: Logger
    /// Misc queries: the peers' positions, the open intents, the reaper's reads.
    let link: GroupLink
    /// Until when (`NIODeadline` uptime, ns) hits may be served; 0 while they may not.
    private let servingUntil = Atomic<UInt64>(0)
    /// Open intents anywhere in the group: while 0, `admits` folds no name.
    private let openCount = Atomic<Int>(0)
    /// The protocol (`GroupState`): every event goes through `step`, under this lock.
    private let state: NIOLockedValueBox<GroupState>
    /// Barriers waiting in `awaitPeers`: resumed with `true` once their peers have read past
    /// the intent, `false` to ask PostgreSQL again; and the timer that wakes them.
    private let barriers = NIOLockedValueBox<[Int: (waiting: CheckedContinuation<Bool, Never>, timer: Scheduled<Void>?)]>([:])
    private let nextBarrier = Atomic<Int>(0)
    /// The chain's head as last known here (this proxy's appends, the announcements, a refused
    /// append): what `GroupAuditLog` chains the next batch on.
    private let head = NIOLockedValueBox((seq: Int64(0), hash: AuditRecord.genesis))
    /// `GroupSchema.rewriteRights` of this proxy's role, as found at the last join.
    private let roleRights = NIOLockedValueBox<[String]?>(nil)

    /// What this build says and understands on the channel (`mixpeek_proxies.protocol`): 2 is
    /// announcements with the record's hash and acknowledgements by announcement; 3 sends each
    /// record's log entry (`log_middle`, schema v5-log-tree).
    static let channelProtocol: Int32 = 3

    /// `hit_check = read`: connections for the per-hit reads, used in turn.
    private let readers: [GroupLink]
    private let nextReader = Atomic<Int>(0)

    public init(settings: GroupSettings, logger: Logger) {
        self.settings = settings
        readers = settings.hitCheck == .read
            ? (0..<4).map { _ in GroupLink(url: settings.database, applicationName: "mixpeek-proxy \(settings.proxyID) hits", logger: logger) }
            : []
        self.logger = logger
        state = NIOLockedValueBox(GroupState(settings: GroupState.Settings(
            proxyID: settings.proxyID, leaseSeconds: settings.leaseSeconds,
            peerTTL: .nanoseconds(Int64(settings.peerTTLSeconds * 1e9)))))
        link = GroupLink(url: settings.database, applicationName: "mixpeek-proxy \(settings.proxyID)", logger: logger)
    }

    // MARK: The gate (event loops)

    public func admits(user: String) -> Bool {
        guard NIODeadline.now().uptimeNanoseconds < servingUntil.load(ordering: .acquiring) else { return false }
        if openCount.load(ordering: .relaxed) == 0 { return true }
        let folded = UserIdentity.folded(user)
        return state.withLockedValue { !$0.isOpen(folded) }
    }

    /// Whether this proxy's role could rewrite the chain (`GroupSchema.rewriteRights`), as found
    /// when it last joined; nil until it has. `/_proxy/metrics` and the status page show it.
    public var auditRoleCanRewrite: Bool? { roleRights.withLockedValue { $0.map { !$0.isEmpty } } }

    /// Why this proxy's role could rewrite the chain, in words (empty when it cannot); nil until known.
    public var auditRoleRights: [String]? { roleRights.withLockedValue { $0 } }

    /// Migrates (a role that may create the tables does, as before) and then finds whether this
    /// role could rewrite the chain: said once in the log when first found or changed, and with
    /// `require_append_only_role` a refusal to join (thrown: no hit served, mutations refused).
    func migrateAndCheckRole(_ connection: PostgresConnection) async throws {
        try await GroupSchema.migrate(connection, logger: logger)
        let rights = try await GroupSchema.rewriteRights(connection, logger: logger) ?? []
        let changed = roleRights.withLockedValue { known in
            defer { known = rights }
            return known != rights
        }
        if !rights.isEmpty {
            let why = rights.joined(separator: ", ")
            if settings.requireAppendOnlyRole {
                throw GroupError.schema(Self.rewriteRefusal(user: settings.database.user, why: why))
            }
            if changed {
                logger.warning("group: this proxy's PostgreSQL role can rewrite the audit chain; set the schema up with `mixpeek-proxy group migrate --grant ROLE` and connect as ROLE, or start with --append-only-role to refuse this", metadata: [
                    "role": "\(settings.database.user)", "why": "\(why)"])
            }
        } else if changed {
            logger.info("group: this proxy's PostgreSQL role may append to the audit chain and read it, not rewrite it", metadata: [
                "role": "\(settings.database.user)"])
        }
    }

    static func rewriteRefusal(user: String, why: String) -> String {
        "the PostgreSQL role \(user) can rewrite the audit chain (\(why)), and require_append_only_role (--append-only-role) is set: connect as a role set up with `mixpeek-proxy group migrate --postgres-url <an owner's URL> --grant <role>`"
    }

    /// With `require_append_only_role`, at start: connects, migrates and checks the role, within
    /// `seconds`, and throws when the role could rewrite the chain or PostgreSQL cannot say:
    /// a proxy that must run append-only does not start unsure.
    public func requireAppendOnlyRoleAtStart(within seconds: Double = 10) async throws {
        let connection: PostgresConnection
        do {
            connection = try await GroupLink.connect(settings.database, applicationName: "mixpeek-proxy \(settings.proxyID) start",
                                                     within: seconds, logger: logger)
        } catch {
            throw GroupError.unavailable("cannot check that the PostgreSQL role \(settings.database.user) cannot rewrite the audit chain (require_append_only_role): PostgreSQL at \(settings.database) did not answer (\(GroupError.describe(error)))")
        }
        do {
            try await GroupLink.bounded(seconds, on: connection.eventLoop, "to check the role",
                                        onTimeout: { let _: EventLoopFuture<Void> = connection.close() }) {
                try await self.migrateAndCheckRole(connection)
            }
        } catch {
            try? await connection.close()
            throw error
        }
        try? await connection.close()
    }

    /// `ok` while this proxy hears the group and holds its lease, else `unreachable`. Why it
    /// is unreachable goes to the log only (`run`).
    public var health: (ok: Bool, state: String) {
        let serving = NIODeadline.now().uptimeNanoseconds < servingUntil.load(ordering: .acquiring)
        return serving && state.withLockedValue({ $0.connected }) ? (true, "ok") : (false, "unreachable")
    }

    // MARK: The protocol's steps

    /// Feeds `event` to the protocol and returns what to do. The gate's atomics follow the
    /// state under its lock, so a session given up cannot open a gate another closed.
    @discardableResult
    private func step(_ event: GroupState.Event) -> [GroupState.Action] {
        state.withLockedValue { state in
            let actions = state.on(event, now: .now())
            for action in actions {
                switch action {
                case .closeGate: servingUntil.store(0, ordering: .releasing)
                case .openGate(let until): servingUntil.store(until.uptimeNanoseconds, ordering: .releasing)
                default: break
                }
            }
            openCount.store(state.open.count, ordering: .relaxed)
            return actions
        }
    }

    /// Performs `actions` (the gate's are done already, in `step`). Throws on `abandon`;
    /// returns whether a catch-up is asked for.
    @discardableResult
    private func perform(_ actions: [GroupState.Action], on connection: PostgresConnection?,
                         _ local: (any Invalidation)?) throws -> Bool {
        var catchUp = false
        for action in actions {
            switch action {
            case .closeGate, .openGate: break
            case .catchUp: catchUp = true
            case .abandon: throw CancellationError()
            case .dropLists(let user, let closing):
                local?.drop(user: user)
                if let closing { step(.listsDropped(intentSeq: closing)) }
            case .scheduleAcknowledgement:
                // After the rest of what the connection delivered with it, so that one carries them all.
                connection?.eventLoop.execute {
                    _ = try? self.perform(self.step(.acknowledging), on: connection, local)
                }
            case .acknowledge(let position):
                connection?.query(Self.acknowledgement(id: settings.proxyID, position), logger: logger).whenComplete { result in
                    let ok = if case .success = result { true } else { false }
                    _ = try? self.perform(self.step(.acknowledged(position: position, ok: ok)), on: connection, local)
                }
            case .release(let id, let read):
                let barrier = barriers.withLockedValue { $0.removeValue(forKey: id) }
                barrier?.timer?.cancel()
                barrier?.waiting.resume(returning: read)
            case .wake(let id, let at):
                let timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(deadline: at) {
                    _ = try? self.perform(self.step(.barrierTimer(id: id)), on: nil, nil)
                }
                barriers.withLockedValue { $0[id]?.timer = timer }
            case .warn(let message):
                logger.warning("\(message)", metadata: ["proxy_id": "\(settings.proxyID)"])
            }
        }
        return catchUp
    }

    // MARK: Listening

    /// Listens, renews the lease and reconnects after a failure, until cancelled. `local` is
    /// this proxy's cache (`ListCache`), whose lists what it hears drops.
    public func run(dropping local: any Invalidation) async {
        while !Task.isCancelled {
            do {
                try await session(local)
            } catch is CancellationError {
                break
            } catch {
                if !Task.isCancelled {
                    logger.error("group: PostgreSQL connection lost; serving no hits until caught up", metadata: [
                        "postgres": "\(settings.database)", "error": "\(GroupError.describe(error))"])
                }
            }
            step(.listenDropped)
            try? await Task.sleep(for: .seconds(1))
        }
    }

    private func session(_ local: any Invalidation) async throws {
        let session = state.withLockedValue { $0.session }
        let connection = try await GroupLink.connect(
            settings.database, applicationName: "mixpeek-proxy listen \(settings.proxyID)", within: settings.leaseSeconds + 3,
            logger: logger)
        let close: @Sendable () -> Void = { let _: EventLoopFuture<Void> = connection.close() }
        do {
            // Joined within a few leases, or the connection is closed and the session given up.
            let listening = try await GroupLink.bounded(settings.leaseSeconds * 2 + 5, on: connection.eventLoop, "to join the group",
                                                        onTimeout: close) {
                try await self.migrateAndCheckRole(connection)
                try await connection.query("SET synchronous_commit = off", logger: self.logger)
                // Announcements are heard on the connection's event loop, as they arrive: no
                // task per announcement.
                let listening = connection.addListener(channel: "mixpeek_proxy") { _, notification in
                    self.heard(notification.payload, on: connection, local)
                }
                do {
                    // Sent after the listener's own LISTEN: once this returns, LISTEN is in effect
                    // and whatever is appended from now on will be heard.
                    try await connection.query("LISTEN mixpeek_proxy", logger: self.logger)
                    try await self.catchUp(connection, local, session: session)
                } catch {
                    listening.stop()
                    throw error
                }
                return listening
            }
            defer { listening.stop() }
            logger.info("group: joined", metadata: ["proxy_id": "\(settings.proxyID)", "postgres": "\(settings.database)"])
            try await renewLease(connection, local, session: session, close: close)
        } catch {
            // Awaited: a connection is to be closed before it is let go.
            try? await connection.close()
            throw error
        }
    }

    /// Renews the lease every quarter lease until a renewal fails, takes a whole lease (the
    /// connection is then closed and the renewal given up) or the connection closes. Once a
    /// minute (or `group_peer_ttl`, if shorter) it also deletes the rows of members gone longer
    /// than `group_peer_ttl`.
    private func renewLease(_ connection: PostgresConnection, _ local: any Invalidation, session: Int,
                            close: @escaping @Sendable () -> Void) async throws {
        let ended = SessionEnd()
        connection.closeFuture.whenComplete { _ in ended.finish(GroupError.unavailable("the LISTEN connection closed")) }
        let reapEvery = TimeAmount.nanoseconds(Int64(min(60, settings.peerTTLSeconds) * 1e9))
        let renewing = Task {
            do {
                // At the first renewal, then every `reapEvery`.
                var reaped = NIODeadline.uptimeNanoseconds(0)
                while true {
                    try await Task.sleep(for: .seconds(self.settings.leaseSeconds / 4))
                    let reap = NIODeadline.now() - reaped >= reapEvery
                    if reap { reaped = .now() }
                    try await GroupLink.bounded(self.settings.leaseSeconds, on: connection.eventLoop, "to renew the lease",
                                                onTimeout: close) {
                        try await self.renew(connection, local, catchingUp: false, session: session)
                        self.step(.tick)
                        if reap {
                            try await connection.query(
                                "SELECT mixpeek_proxies_reap(\(self.settings.peerTTLSeconds))", logger: self.logger)
                        }
                    }
                }
            } catch {
                ended.finish(error)
            }
        }
        defer { renewing.cancel() }
        try await withTaskCancellationHandler {
            try await ended.wait()
        } onCancel: {
            ended.finish(CancellationError())
        }
    }

    /// Drops every cached list (any may predate what this proxy did not hear), loads the open
    /// intents, then takes the lease: only then are hits served.
    private func catchUp(_ connection: PostgresConnection, _ local: any Invalidation, session: Int) async throws {
        // The gate closes; what is heard meanwhile waits until the reading below is in place.
        try perform(step(.catchUpBegins(session: session)), on: connection, local)
        // First a live lease that says "read nothing yet", so that from here on every intent's
        // proxy waits for this one (which hears it, LISTEN being in effect) or finds it in the
        // open intents read below.
        try await connection.query("""
            INSERT INTO mixpeek_proxies (proxy_id, lease_until, read_seq, protocol)
            VALUES (\(settings.proxyID), now() + make_interval(secs => \(settings.leaseSeconds)), 0, \(Self.channelProtocol))
            ON CONFLICT (proxy_id) DO UPDATE SET lease_until = EXCLUDED.lease_until, read_seq = 0, protocol = EXCLUDED.protocol
            """, logger: logger)
        // An append that took the chain's lock before that lease was visible may have read the
        // live proxies without this one: wait for it to commit, so that the open intents read
        // below include its records.
        try await connection.query("SELECT pg_advisory_xact_lock(\(GroupSchema.appendLock))", logger: logger)
        var head: Int64 = 0
        for try await value in try await connection.query("SELECT coalesce(max(seq), 0)::bigint FROM mixpeek_audit", logger: logger).decode(Int64.self) {
            head = value
        }
        var open: [Int64: String] = [:]
        for try await (seq, user) in try await connection.query("""
            SELECT i.seq, i.user_fold FROM mixpeek_audit i WHERE i.kind = 'intent'
            AND NOT EXISTS (SELECT 1 FROM mixpeek_audit o WHERE o.intent_seq = i.seq)
            """, logger: logger).decode((Int64, String).self) {
            open[seq] = user
        }
        await local.invalidate(user: nil)
        // The reading in place, then what was heard meanwhile, in order.
        try perform(step(.caughtUp(session: session, head: head, open: open)), on: connection, local)
        try await renew(connection, local, catchingUp: true, session: session)
    }

    /// One renewal: hits may be served until the lease ends by this proxy's clock, counted
    /// from before the renewal was sent (`GroupState`). One that comes back after the previous
    /// lease ran out is a lapse: catch up first.
    private func renew(_ connection: PostgresConnection, _ local: any Invalidation, catchingUp: Bool, session: Int) async throws {
        let sent = NIODeadline.now()
        let processed = state.withLockedValue { $0.processed }
        try await connection.query("""
            INSERT INTO mixpeek_proxies (proxy_id, lease_until, read_seq, protocol)
            VALUES (\(settings.proxyID), now() + make_interval(secs => \(settings.leaseSeconds)), \(processed), \(Self.channelProtocol))
            ON CONFLICT (proxy_id) DO UPDATE SET lease_until = EXCLUDED.lease_until,
                read_seq = greatest(mixpeek_proxies.read_seq, EXCLUDED.read_seq), protocol = EXCLUDED.protocol
            """, logger: logger)
        if try perform(step(.renewed(session: session, sentAt: sent, catchingUp: catchingUp)), on: connection, local) {
            try await catchUp(connection, local, session: session)
        }
    }

    /// An announcement as it arrives, on the connection's event loop.
    private func heard(_ payload: String, on connection: PostgresConnection, _ local: any Invalidation) {
        guard let announcement = GroupAnnouncement(payload) else {
            return logger.warning("group: unreadable announcement", metadata: ["payload": "\(payload.prefix(80))"])
        }
        if case .record(let seq, _, _, let hash, _) = announcement { noteHead(seq, hash) }
        _ = try? perform(step(.heard(announcement)), on: connection, local)
    }

    /// The chain's head as last known here.
    var chainHead: (seq: Int64, hash: String) { head.withLockedValue { $0 } }

    /// A record known to be in the chain: the head, if newer than the one known. With
    /// `truth`, the head PostgreSQL just reported, which may be older (records lost).
    func noteHead(_ seq: Int64, _ hash: String, truth: Bool = false) {
        head.withLockedValue { if truth || seq > $0.seq { $0 = (seq, hash) } }
    }

    /// This proxy appended intent `seq`: no list of the user is cached here from now on.
    func noteOpen(_ seq: Int64, user: String) {
        step(.appended(seq: seq, user: user))
    }

    /// The reaper found intent `seq` closed in the chain.
    func noteClosed(_ intentSeq: Int64) {
        step(.foundClosed(intentSeq: intentSeq))
    }

    /// `a proxy_id read_seq` on the channel: a `NOTIFY` with the payload written in, for which
    /// PostgreSQL makes no plan and sends no row back (a proxy id is letters, digits and `-_.:`,
    /// or a host name; a quote would be doubled), or `pg_notify` for an id with a backslash.
    static func acknowledgement(id: String, _ position: Int64) -> PostgresQuery {
        let payload = "a \(id) \(position)"
        guard !payload.contains("\\") else { return "SELECT pg_notify('mixpeek_proxy', \(payload))" }
        return PostgresQuery(unsafeSQL: "NOTIFY mixpeek_proxy, '\(payload.replacingOccurrences(of: "'", with: "''"))'")
    }

    // MARK: Mutations

    /// Returns when every other proxy whose lease is live has read past record `seq`, or its
    /// lease has run out (PostgreSQL's clock decides both). Throws when PostgreSQL cannot say.
    ///
    /// `live`, when given, are the other proxies whose lease was live when the record was known
    /// to be committed, with their `read_seq` then (`GroupAuditLog` reads them with the flush),
    /// which saves the first query. A barrier wakes on the peers' acknowledgements; it asks
    /// PostgreSQL again only after a second, or just after a lagging peer's lease lapses.
    func awaitPeers(pastSeq seq: Int64, live: [String: Int64]? = nil, until deadline: NIODeadline) async throws {
        let me = settings.proxyID
        var known = live.map { $0.filter { $0.value < seq }.mapValues { _ -> NIODeadline? in nil } }
        while true {
            guard NIODeadline.now() < deadline else {
                throw GroupError.unavailable("other proxies did not read the intent within a lease")
            }
            var lagging: [String: NIODeadline?]
            if let peers = known {
                lagging = peers
                known = nil
            } else {
                lagging = try await link.run(timeout: settings.leaseSeconds + 3) { connection in
                    var ids: [String: NIODeadline?] = [:]
                    let asked = NIODeadline.now()
                    for try await (id, left) in try await connection.query("""
                        SELECT proxy_id, extract(epoch FROM lease_until - now())::float8 FROM mixpeek_proxies
                        WHERE proxy_id <> \(me) AND lease_until > now() AND read_seq < \(seq)
                        """, logger: self.logger).decode((String, Double).self) {
                        ids[id] = asked + .nanoseconds(Int64(left * 1e9))
                    }
                    return ids
                }
            }
            if lagging.isEmpty { return }
            let id = nextBarrier.wrappingAdd(1, ordering: .relaxed).oldValue
            let read = await withCheckedContinuation { continuation in
                barriers.withLockedValue { $0[id] = (continuation, nil) }
                _ = try? perform(step(.barrierBegins(id: id, seq: seq, lagging: lagging)), on: nil, nil)
            }
            if read { return }
        }
    }

    /// `hit_check = read`: true when the chain's newest record for `user` is one this proxy has
    /// acted on (so it has dropped every list older than it), read from PostgreSQL now.
    func confirmHit(user: String, on eventLoop: any EventLoop) -> EventLoopFuture<Bool> {
        let folded = UserIdentity.folded(user)
        let reader = readers[nextReader.wrappingAdd(1, ordering: .relaxed).oldValue % readers.count]
        let promise = eventLoop.makePromise(of: Bool.self)
        promise.completeWithTask {
            let newest = try await reader.run(timeout: 5) { connection in
                var newest: Int64 = 0
                for try await value in try await connection.query(
                    "SELECT coalesce(max(seq), 0)::bigint FROM mixpeek_audit WHERE user_fold = \(folded)", logger: self.logger).decode(Int64.self) {
                    newest = value
                }
                return newest
            }
            return self.state.withLockedValue { newest <= $0.processed }
        }
        return promise.futureResult.recover { _ in false }
    }

    /// Intents open longer than `age`, oldest first: the reaper's candidates.
    func openIntents(olderThan age: TimeAmount) -> [Int64] {
        state.withLockedValue { $0.openIntents(olderThan: age, now: .now()) }
    }

    /// The protocol's state as it is now, for the status page and the tests.
    var protocolState: GroupState { state.withLockedValue { $0 } }
}

extension GroupMember {
    /// At shutdown: ends this proxy's lease now, so no peer's mutation waits for it.
    public func leave() async {
        servingUntil.store(0, ordering: .releasing)
        _ = try? await link.run { connection in
            try await connection.query(
                "UPDATE mixpeek_proxies SET lease_until = now() WHERE proxy_id = \(self.settings.proxyID)", logger: self.logger)
        }
        await link.close()
        for reader in readers { await reader.close() }
    }
}

/// How a LISTEN session ends: the first of the connection closing, a renewal failing and the
/// proxy stopping, awaited once.
private final class SessionEnd: Sendable {
    private let state = NIOLockedValueBox<(waiting: CheckedContinuation<Void, any Error>?, error: (any Error)?)>((nil, nil))

    func finish(_ error: any Error) {
        let waiting = state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
            guard state.error == nil else { return nil }
            state.error = error
            defer { state.waiting = nil }
            return state.waiting
        }
        waiting?.resume(throwing: error)
    }

    func wait() async throws {
        try await withCheckedThrowingContinuation { continuation in
            let error = state.withLockedValue { state -> (any Error)? in
                if state.error == nil { state.waiting = continuation }
                return state.error
            }
            if let error { continuation.resume(throwing: error) }
        }
    }
}
