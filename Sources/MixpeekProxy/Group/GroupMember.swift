import Foundation
import Logging
import MixpeekAPI
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO
import Synchronization

/// This proxy's membership in a group: the guarantee that once any proxy has answered a
/// mutation, no proxy serves a list of that user that predates it.
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
    private let state = NIOLockedValueBox(State())
    /// The chain's head as last known here (this proxy's appends, the announcements, a refused
    /// append): what `GroupAuditLog` chains the next batch on.
    private let head = NIOLockedValueBox((seq: Int64(0), hash: AuditRecord.genesis))
    /// `GroupSchema.rewriteRights` of this proxy's role, as found at the last join.
    private let roleRights = NIOLockedValueBox<[String]?>(nil)

    struct OpenIntent {
        var user: String
        var since: NIODeadline
    }

    private struct State {
        var open: [Int64: OpenIntent] = [:]
        var openUsers: [String: Int] = [:]
        /// The newest record heard per user (`hit_check = read` compares it with the chain's),
        /// and the head at the last catch-up, which every user's records are heard up to.
        var heard: [String: Int64] = [:]
        var heardFloor: Int64 = 0
        /// Intents whose outcome was heard lately, so a catch-up's older reading cannot reopen them.
        var recentlyClosed: [Int64] = []
        /// The last chain record this proxy has acted on.
        var processed: Int64 = 0
        var ackRunning = false
        /// During a catch-up, the announcements heard, for after it.
        var buffering = false
        var buffered: [String] = []
        /// `read_seq` of each peer, as announced.
        var peers: [String: Int64] = [:]
        var waiters: [ObjectIdentifier: PeerWaiter] = [:]
        var connected = false
        /// The LISTEN session's number, one more at the end of each: what a session still
        /// running after it was given up (`GroupLink.bounded`) finds changed, so that it opens
        /// no gate and changes no reading.
        var session = 0
    }

    /// A mutation waiting for peers to read past `seq`.
    final class PeerWaiter: Sendable {
        let ids: Set<String>
        let seq: Int64
        private let continuation = NIOLockedValueBox<CheckedContinuation<Void, Never>?>(nil)
        init(ids: Set<String>, seq: Int64) {
            self.ids = ids
            self.seq = seq
        }
        private let cleanup = NIOLockedValueBox<(@Sendable () -> Void)?>(nil)
        func set(_ continuation: CheckedContinuation<Void, Never>) { self.continuation.withLockedValue { $0 = continuation } }
        /// `body` runs once, at the resume (the timer's cancel).
        func onResume(_ body: @escaping @Sendable () -> Void) { cleanup.withLockedValue { $0 = body } }
        func resume() {
            let resumed = continuation.withLockedValue { continuation -> Bool in
                defer { continuation = nil }
                continuation?.resume()
                return continuation != nil
            }
            if resumed { cleanup.withLockedValue { $0?(); $0 = nil } }
        }
    }

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
        link = GroupLink(url: settings.database, applicationName: "mixpeek-proxy \(settings.proxyID)", logger: logger)
    }

    // MARK: The gate (event loops)

    public func admits(user: String) -> Bool {
        guard NIODeadline.now().uptimeNanoseconds < servingUntil.load(ordering: .acquiring) else { return false }
        if openCount.load(ordering: .relaxed) == 0 { return true }
        let folded = UserIdentity.folded(user)
        return state.withLockedValue { $0.openUsers[folded] == nil }
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
        return state.withLockedValue { state in
            serving && state.connected ? (true, "ok") : (false, "unreachable")
        }
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
                let problem = GroupError.describe(error)
                state.withLockedValue { $0.connected = false }
                if !Task.isCancelled {
                    logger.error("group: PostgreSQL connection lost; serving no hits until caught up", metadata: [
                        "postgres": "\(settings.database)", "error": "\(problem)"])
                }
            }
            state.withLockedValue { state in
                state.session += 1
                state.connected = false
                closeGate()
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    private func closeGate() {
        servingUntil.store(0, ordering: .releasing)
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
            state.withLockedValue { $0.connected = true }
            logger.info("group: joined", metadata: ["proxy_id": "\(settings.proxyID)", "postgres": "\(settings.database)"])
            try await renewLease(connection, local, session: session, close: close)
        } catch {
            // Awaited: a connection is to be closed before it is let go.
            try? await connection.close()
            throw error
        }
    }

    /// Renews the lease every quarter lease until a renewal fails, takes a whole lease (the
    /// connection is then closed and the renewal given up) or the connection closes.
    private func renewLease(_ connection: PostgresConnection, _ local: any Invalidation, session: Int,
                            close: @escaping @Sendable () -> Void) async throws {
        let ended = SessionEnd()
        connection.closeFuture.whenComplete { _ in ended.finish(GroupError.unavailable("the LISTEN connection closed")) }
        let renewing = Task {
            do {
                while true {
                    try await Task.sleep(for: .seconds(self.settings.leaseSeconds / 4))
                    try await GroupLink.bounded(self.settings.leaseSeconds, on: connection.eventLoop, "to renew the lease",
                                                onTimeout: close) {
                        try await self.renew(connection, local, catchingUp: false, session: session)
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
        closeGate()
        // What is heard meanwhile waits until the reading below is in place.
        state.withLockedValue { $0.buffering = true; $0.buffered = [] }
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
        var open: [Int64: OpenIntent] = [:]
        let now = NIODeadline.now()
        for try await (seq, user) in try await connection.query("""
            SELECT i.seq, i.user_fold FROM mixpeek_audit i WHERE i.kind = 'intent'
            AND NOT EXISTS (SELECT 1 FROM mixpeek_audit o WHERE o.intent_seq = i.seq)
            """, logger: logger).decode((Int64, String).self) {
            open[seq] = OpenIntent(user: user, since: now)
        }
        await local.invalidate(user: nil)
        try state.withLockedValue { state in
            guard state.session == session else { throw CancellationError() }
            if head < state.processed {
                // The chain is shorter than what was heard: PostgreSQL lost its last records (a
                // crash before they reached the disk, a failover). Seqs will be reused: forget
                // every position heard.
                logger.warning("group: the chain ends before records this proxy heard; starting over from it", metadata: [
                    "head": "\(head)", "heard": "\(state.processed)"])
                state.processed = head
                state.recentlyClosed = []
                state.peers = [:]
                state.heard = [:]
            }
            state.heardFloor = head
            // Intents past `head` heard meanwhile stay; the reading decides the rest.
            for (seq, intent) in state.open where seq > head && open[seq] == nil { open[seq] = intent }
            for seq in state.recentlyClosed { open[seq] = nil }
            state.open = open
            state.openUsers = [:]
            for intent in open.values { state.openUsers[intent.user, default: 0] += 1 }
            state.processed = max(state.processed, head)
            openCount.store(open.count, ordering: .relaxed)
        }
        // Then what was heard meanwhile, in order; what arrives while this runs joins the queue.
        while let next = state.withLockedValue({ state -> [String]? in
            if state.buffered.isEmpty { state.buffering = false; return nil }
            defer { state.buffered = [] }
            return state.buffered
        }) {
            for payload in next { hear(payload, on: connection, local) }
        }
        try await renew(connection, local, catchingUp: true, session: session)
    }

    /// One renewal. Hits may be served until the lease ends by this proxy's clock, counted from
    /// before the renewal was sent and shortened by a tenth, so never after PostgreSQL's. A
    /// renewal that comes back after the previous lease ran out is a lapse: catch up first.
    private func renew(_ connection: PostgresConnection, _ local: any Invalidation, catchingUp: Bool, session: Int) async throws {
        let sent = NIODeadline.now()
        let processed = state.withLockedValue { $0.processed }
        try await connection.query("""
            INSERT INTO mixpeek_proxies (proxy_id, lease_until, read_seq, protocol)
            VALUES (\(settings.proxyID), now() + make_interval(secs => \(settings.leaseSeconds)), \(processed), \(Self.channelProtocol))
            ON CONFLICT (proxy_id) DO UPDATE SET lease_until = EXCLUDED.lease_until,
                read_seq = greatest(mixpeek_proxies.read_seq, EXCLUDED.read_seq), protocol = EXCLUDED.protocol
            """, logger: logger)
        let until = sent + .nanoseconds(Int64(settings.leaseSeconds * 0.9 * 1e9))
        let now = NIODeadline.now()
        if !catchingUp && now.uptimeNanoseconds >= servingUntil.load(ordering: .acquiring) {
            logger.warning("group: lease lapsed; catching up before serving hits", metadata: ["proxy_id": "\(settings.proxyID)"])
            return try await catchUp(connection, local, session: session)
        }
        try state.withLockedValue { state in
            // A session given up opens no gate.
            guard state.session == session else { throw CancellationError() }
            if now < until { servingUntil.store(until.uptimeNanoseconds, ordering: .releasing) }
        }
    }

    /// An announcement as it arrives (on the connection's event loop): kept for later during a
    /// catch-up, else acted on.
    private func heard(_ payload: String, on connection: PostgresConnection, _ local: any Invalidation) {
        let later = state.withLockedValue { state -> Bool in
            if state.buffering { state.buffered.append(payload) }
            return state.buffering
        }
        if !later { hear(payload, on: connection, local) }
    }

    /// One announcement: `i seq intent_seq proxy_id hash user` (a record appended) or
    /// `a proxy_id read_seq` (a proxy's position). Read as bytes: `String.split` took a
    /// twentieth of a proxy's CPU in a group's mutation benchmark.
    private func hear(_ payload: String, on connection: PostgresConnection, _ local: any Invalidation) {
        let parts = Array(payload.utf8).split(separator: UInt8(ascii: " "), maxSplits: 5, omittingEmptySubsequences: false)
        func number(_ index: Int) -> Int64? { Int64(String(decoding: parts[index], as: UTF8.self)) }
        if parts.first?.elementsEqual("a".utf8) == true, parts.count == 3, let seq = number(2) {
            return peerRead(String(decoding: parts[1], as: UTF8.self), seq)
        }
        guard parts.first?.elementsEqual("i".utf8) == true, parts.count == 6, let seq = number(1), let intentSeq = number(2) else {
            return logger.warning("group: unreadable announcement", metadata: ["payload": "\(payload.prefix(80))"])
        }
        let user = String(decoding: parts[5], as: UTF8.self)
        noteHead(seq, String(decoding: parts[4], as: UTF8.self))
        if settings.hitCheck == .read {
            state.withLockedValue { $0.heard[user] = max($0.heard[user] ?? 0, seq) }
        }
        if intentSeq == 0 {
            // An intent: no list of this user is cached from now until its outcome.
            noteOpen(seq, user: user)
            local.drop(user: user)
        } else {
            local.drop(user: user)
            noteClosed(intentSeq)
        }
        state.withLockedValue { $0.processed = max($0.processed, seq) }
        // Only an intent's proxy waits for the others to have read it (not for itself); any
        // other position goes out with the next acknowledgement or lease renewal.
        if intentSeq == 0 && !parts[3].elementsEqual(settings.proxyID.utf8) { acknowledge(on: connection) }
    }

    /// The chain's head as last known here.
    var chainHead: (seq: Int64, hash: String) { head.withLockedValue { $0 } }

    /// A record known to be in the chain: the head, if newer than the one known. With
    /// `truth`, the head PostgreSQL just reported, which may be older (records lost).
    func noteHead(_ seq: Int64, _ hash: String, truth: Bool = false) {
        head.withLockedValue { if truth || seq > $0.seq { $0 = (seq, hash) } }
    }

    /// Marks intent `seq` open, unless this proxy has read past it already (then its outcome
    /// may have been heard, or it was loaded at catch-up).
    func noteOpen(_ seq: Int64, user: String) {
        state.withLockedValue { state in
            guard seq > state.processed, state.open[seq] == nil else { return }
            state.open[seq] = OpenIntent(user: user, since: .now())
            state.openUsers[user, default: 0] += 1
            openCount.store(state.open.count, ordering: .relaxed)
        }
    }

    func noteClosed(_ intentSeq: Int64) {
        state.withLockedValue { state in
            state.recentlyClosed.append(intentSeq)
            if state.recentlyClosed.count > 4096 { state.recentlyClosed.removeFirst(2048) }
            guard let intent = state.open.removeValue(forKey: intentSeq) else { return }
            let left = (state.openUsers[intent.user] ?? 1) - 1
            state.openUsers[intent.user] = left > 0 ? left : nil
            openCount.store(state.open.count, ordering: .relaxed)
        }
    }

    /// Announces how far this proxy has read (`a proxy_id read_seq`): one at a time, each
    /// carrying the latest position, sent from the connection's event loop.
    private func acknowledge(on connection: PostgresConnection) {
        let start = state.withLockedValue { state -> Bool in
            defer { state.ackRunning = true }
            return !state.ackRunning
        }
        guard start else { return }
        // After the rest of what the connection delivered with it, so that one carries them all.
        connection.eventLoop.execute {
            self.sendAcknowledgement(self.state.withLockedValue { $0.processed }, on: connection)
        }
    }

    private func sendAcknowledgement(_ position: Int64, on connection: PostgresConnection) {
        connection.query(Self.acknowledgement(id: settings.proxyID, position), logger: logger).whenComplete { result in
            let next = self.state.withLockedValue { state -> Int64? in
                // On a failure the connection is failing: the lease renewal fails too and ends the session.
                guard case .success = result, state.processed != position else {
                    state.ackRunning = false
                    return nil
                }
                return state.processed
            }
            if let next { self.sendAcknowledgement(next, on: connection) }
        }
    }

    /// `a proxy_id read_seq` on the channel: a `NOTIFY` with the payload written in, for which
    /// PostgreSQL makes no plan and sends no row back (a proxy id is letters, digits and `-_.:`,
    /// or a host name; a quote would be doubled), or `pg_notify` for an id with a backslash.
    static func acknowledgement(id: String, _ position: Int64) -> PostgresQuery {
        let payload = "a \(id) \(position)"
        guard !payload.contains("\\") else { return "SELECT pg_notify('mixpeek_proxy', \(payload))" }
        return PostgresQuery(unsafeSQL: "NOTIFY mixpeek_proxy, '\(payload.replacingOccurrences(of: "'", with: "''"))'")
    }

    private func peerRead(_ id: String, _ seq: Int64) {
        let ready = state.withLockedValue { state -> [PeerWaiter] in
            state.peers[id] = max(state.peers[id] ?? 0, seq)
            let peers = state.peers
            let ready = state.waiters.values.filter { waiter in waiter.ids.allSatisfy { (peers[$0] ?? 0) >= waiter.seq } }
            for waiter in ready { state.waiters[ObjectIdentifier(waiter)] = nil }
            return ready
        }
        for waiter in ready { waiter.resume() }
    }

    // MARK: Mutations

    /// Returns when every other proxy whose lease is live has read past record `seq`, or its
    /// lease has run out (PostgreSQL's clock decides both). Throws when PostgreSQL cannot say.
    ///
    /// `live`, when given, are the other proxies whose lease was live when the record was known
    /// to be committed, with their `read_seq` then (`GroupAuditLog` reads them with the flush),
    /// which saves the first query.
    func awaitPeers(pastSeq seq: Int64, live: [String: Int64]? = nil, until deadline: NIODeadline) async throws {
        let me = settings.proxyID
        var known = live
        while true {
            guard NIODeadline.now() < deadline else {
                throw GroupError.unavailable("other proxies did not read the intent within a lease")
            }
            let lagging: Set<String>
            if let peers = known {
                lagging = Set(peers.filter { $0.value < seq }.keys)
                known = nil
            } else {
                lagging = try await link.run(timeout: settings.leaseSeconds + 3) { connection in
                    var ids = Set<String>()
                    for try await id in try await connection.query("""
                        SELECT proxy_id FROM mixpeek_proxies
                        WHERE proxy_id <> \(me) AND lease_until > now() AND read_seq < \(seq)
                        """, logger: self.logger).decode(String.self) {
                        ids.insert(id)
                    }
                    return ids
                }
            }
            if lagging.isEmpty { return }
            // Woken when they announce their reads; asked again every 50 ms, as leases lapse.
            let waiter = PeerWaiter(ids: lagging, seq: seq)
            await withCheckedContinuation { continuation in
                waiter.set(continuation)
                let done = state.withLockedValue { state -> Bool in
                    if lagging.allSatisfy({ (state.peers[$0] ?? 0) >= seq }) { return true }
                    state.waiters[ObjectIdentifier(waiter)] = waiter
                    return false
                }
                if done { return waiter.resume() }
                let timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: .milliseconds(50)) {
                    self.state.withLockedValue { _ = $0.waiters.removeValue(forKey: ObjectIdentifier(waiter)) }
                    waiter.resume()
                }
                waiter.onResume { timer.cancel() }
            }
            let read = state.withLockedValue { state in lagging.allSatisfy { (state.peers[$0] ?? 0) >= seq } }
            if read { return }
        }
    }

    /// `hit_check = read`: true when the chain's newest record for `user` is one this proxy has
    /// heard (so it has dropped every list older than it), read from PostgreSQL now.
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
            return self.state.withLockedValue { newest <= max($0.heard[folded] ?? 0, $0.heardFloor) }
        }
        return promise.futureResult.recover { _ in false }
    }

    /// Intents open longer than `age`, oldest first: the reaper's candidates.
    func openIntents(olderThan age: TimeAmount) -> [Int64] {
        let now = NIODeadline.now()
        return state.withLockedValue { state in
            guard state.connected else { return [] }
            return state.open.filter { now - $0.value.since > age }.keys.sorted()
        }
    }
}

extension GroupMember {
    /// At shutdown: ends this proxy's lease now, so no peer's mutation waits for it.
    public func leave() async {
        closeGate()
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
