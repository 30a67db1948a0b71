import NIOCore  // NIODeadline and TimeAmount only: values of the clock, which is never read here

/// One member's side of the group protocol as a value: `on(_:now:)` takes what happened and
/// returns what to do. It does no I/O and reads no clock: `GroupMember` performs the actions
/// on PostgreSQL and on the cache and passes the time in, and `GroupStateTests` drives it with
/// tables of events. docs/GROUP.md argues the protocol; in short:
/// - an intent heard marks its user *open* (no hit, nothing stored) and drops the user's lists;
///   its outcome drops them again and only then, once they are dropped, clears the mark;
/// - hits are served only while this proxy's own reckoning of its lease holds, and after a
///   lapse or a new LISTEN session only once it has caught up (every list dropped, the open
///   intents read);
/// - a mutation is forwarded only once every peer with a live lease has read past its intent:
///   its barrier waits for their acknowledgements, asking PostgreSQL again at most every
///   `barrierPoll` or when a lagging peer's lease lapses.
struct GroupState {
    struct Settings: Sendable {
        var proxyID: String
        var leaseSeconds: Double
        /// `group_peer_ttl`: a peer not heard from for this long is forgotten.
        var peerTTL: TimeAmount
        /// The longest a barrier waits without asking PostgreSQL again.
        var barrierPoll: TimeAmount = .seconds(1)
    }

    /// What happened. A LISTEN session's events carry its number: one from a session given up
    /// (`GroupLink.bounded`) finds it changed, opens no gate and changes no reading.
    enum Event: Sendable {
        /// LISTEN is in effect and the catch-up starts: no hit until it ends.
        case catchUpBegins(session: Int)
        /// The catch-up's reading, taken once the whole cache was dropped: the chain's head
        /// and the open intents (seq → folded user).
        case caughtUp(session: Int, head: Int64, open: [Int64: String])
        /// A lease renewal committed; `sentAt` is from before it was sent.
        case renewed(session: Int, sentAt: NIODeadline, catchingUp: Bool)
        /// The LISTEN session ended (its connection failed, closed or was given up).
        case listenDropped
        case heard(GroupAnnouncement)
        /// The connection has delivered what came with the announcements: time to acknowledge.
        case acknowledging
        case acknowledged(position: Int64, ok: Bool)
        /// This proxy appended intent `seq`: it stops caching the user at once.
        case appended(seq: Int64, user: String)
        /// The lists of an outcome's user are dropped: its intent may close.
        case listsDropped(intentSeq: Int64)
        /// The reaper found intent `seq` closed in the chain.
        case foundClosed(intentSeq: Int64)
        /// A mutation waits for `lagging` (peer → when its lease lapses, if known) to read `seq`.
        case barrierBegins(id: Int, seq: Int64, lagging: [String: NIODeadline?])
        case barrierTimer(id: Int)
        /// The lease renewal's beat: forgets peers not heard for `peerTTL`.
        case tick
    }

    enum Action: Equatable, Sendable {
        case closeGate
        case openGate(until: NIODeadline)
        /// The lease lapsed: catch up before serving a hit.
        case catchUp
        /// The session was given up: stop it.
        case abandon
        /// Drop the cached lists of `user`; with `closing`, then send `.listsDropped(closing)`.
        /// (A catch-up drops every list itself, before `.caughtUp`.)
        case dropLists(user: String, closing: Int64? = nil)
        /// After what the connection delivered with it, send `.acknowledging`.
        case scheduleAcknowledgement
        /// Announce `a proxy_id position`, then send `.acknowledged`.
        case acknowledge(position: Int64)
        /// Wake barrier `id`: `read` when every peer it waited for has read past it, else to
        /// ask PostgreSQL again.
        case release(id: Int, read: Bool)
        /// Send `.barrierTimer(id)` at `at`.
        case wake(id: Int, at: NIODeadline)
        case warn(String)
    }

    struct OpenIntent: Equatable {
        var user: String
        var since: NIODeadline
    }

    struct Peer: Equatable {
        var read: Int64
        var heardAt: NIODeadline
    }

    struct Waiter: Equatable {
        var seq: Int64
        var lagging: Set<String>
    }

    let settings: Settings
    private(set) var session = 0
    private(set) var connected = false
    /// Until when hits may be served; nil while they may not.
    private(set) var servingUntil: NIODeadline?
    private(set) var open: [Int64: OpenIntent] = [:]
    private(set) var openUsers: [String: Int] = [:]
    /// The last chain record acted on. Announcements arrive in commit order and the chain's
    /// commits are serialised by its lock, so every record up to here has been heard (or was
    /// covered by the catch-up's drop of every list).
    private(set) var processed: Int64 = 0
    /// Outcomes heard lately, so that a catch-up's older reading cannot reopen their intents.
    private(set) var recentlyClosed: [Int64] = []
    private var buffering = false
    private var buffered: [GroupAnnouncement] = []
    private var ackRunning = false
    private(set) var peers: [String: Peer] = [:]
    private(set) var waiters: [Int: Waiter] = [:]

    init(settings: Settings) {
        self.settings = settings
    }

    /// Whether lists of `folded` may be served and kept, the lease aside.
    func isOpen(_ folded: String) -> Bool { openUsers[folded] != nil }

    /// Intents open longer than `age`, oldest first: the reaper's candidates.
    func openIntents(olderThan age: TimeAmount, now: NIODeadline) -> [Int64] {
        guard connected else { return [] }
        return open.filter { now - $0.value.since > age }.keys.sorted()
    }

    mutating func on(_ event: Event, now: NIODeadline) -> [Action] {
        switch event {
        case .catchUpBegins(let session):
            guard session == self.session else { return [.abandon] }
            buffering = true
            buffered = []
            servingUntil = nil
            return [.closeGate]

        case .caughtUp(let session, let head, let reading):
            guard session == self.session else { return [.abandon] }
            var actions: [Action] = []
            if head < processed {
                // The chain is shorter than what was heard: PostgreSQL lost its last records (a
                // crash before they reached the disk, a failover). Seqs will be reused: forget
                // every position heard.
                actions.append(.warn("group: the chain ends before records this proxy heard (\(head) < \(processed)); starting over from it"))
                processed = head
                recentlyClosed = []
                peers = [:]
            }
            var next = reading.mapValues { OpenIntent(user: $0, since: now) }
            // Intents past `head` heard meanwhile stay; the reading decides the rest.
            for (seq, intent) in open where seq > head && next[seq] == nil { next[seq] = intent }
            for seq in recentlyClosed { next[seq] = nil }
            open = next
            openUsers = [:]
            for intent in open.values { openUsers[intent.user, default: 0] += 1 }
            processed = max(processed, head)
            connected = true
            // What was heard meanwhile, in order.
            buffering = false
            let held = buffered
            buffered = []
            for announcement in held { actions += hear(announcement, now: now) }
            // Acknowledgements may have been missed while LISTEN was down: every barrier asks again.
            for id in waiters.keys.sorted() { actions.append(.release(id: id, read: false)) }
            waiters = [:]
            return actions

        case .renewed(let session, let sentAt, let catchingUp):
            guard session == self.session else { return [.abandon] }
            // Never after PostgreSQL's lease: counted from before the renewal was sent, a tenth shorter.
            let until = sentAt + .nanoseconds(Int64(settings.leaseSeconds * 0.9 * 1e9))
            if !catchingUp && !(servingUntil.map { now < $0 } ?? false) {
                servingUntil = nil
                return [.warn("group: lease lapsed; catching up before serving hits"), .closeGate, .catchUp]
            }
            guard now < until else { return [] }
            servingUntil = until
            return [.openGate(until: until)]

        case .listenDropped:
            session += 1
            connected = false
            servingUntil = nil
            buffering = false
            buffered = []
            ackRunning = false
            return [.closeGate]

        case .heard(let announcement):
            if buffering {
                buffered.append(announcement)
                return []
            }
            return hear(announcement, now: now)

        case .acknowledging:
            return [.acknowledge(position: processed)]

        case .acknowledged(let position, let ok):
            // On a failure the connection is failing: the lease renewal fails too and ends the session.
            guard ok, processed != position else {
                ackRunning = false
                return []
            }
            return [.acknowledge(position: processed)]

        case .appended(let seq, let user):
            markOpen(seq, user: user, now: now)
            return []

        case .listsDropped(let intentSeq), .foundClosed(let intentSeq):
            close(intentSeq)
            return []

        case .barrierBegins(let id, let seq, let lagging):
            let waiting = Set(lagging.keys)
            if hasRead(waiting, seq) { return [.release(id: id, read: true)] }
            waiters[id] = Waiter(seq: seq, lagging: waiting)
            // Asked again at the latest after `barrierPoll`, or just after a lagging lease lapses.
            var at = now + settings.barrierPoll
            for case let lapse? in lagging.values where lapse < at {
                at = max(lapse + .milliseconds(5), now + .milliseconds(5))
            }
            return [.wake(id: id, at: at)]

        case .barrierTimer(let id):
            guard waiters.removeValue(forKey: id) != nil else { return [] }
            return [.release(id: id, read: false)]

        case .tick:
            let named = waiters.values.reduce(into: Set<String>()) { $0.formUnion($1.lagging) }
            peers = peers.filter { now - $0.value.heardAt < settings.peerTTL || named.contains($0.key) }
            return []
        }
    }

    private func hasRead(_ ids: Set<String>, _ seq: Int64) -> Bool {
        ids.allSatisfy { (peers[$0]?.read ?? 0) >= seq }
    }

    private mutating func hear(_ announcement: GroupAnnouncement, now: NIODeadline) -> [Action] {
        switch announcement {
        case .read(let proxyID, let seq):
            peers[proxyID] = Peer(read: max(peers[proxyID]?.read ?? 0, seq), heardAt: now)
            var actions: [Action] = []
            for (id, waiter) in waiters.sorted(by: { $0.key < $1.key }) where hasRead(waiter.lagging, waiter.seq) {
                waiters[id] = nil
                actions.append(.release(id: id, read: true))
            }
            return actions

        case .record(let seq, let intentSeq, let proxyID, _, let user):
            var actions: [Action]
            if intentSeq == 0 {
                // An intent: no list of this user is cached from now until its outcome.
                markOpen(seq, user: user, now: now)
                actions = [.dropLists(user: user)]
            } else {
                // The user stays open until its lists are dropped (`.listsDropped`): a hit in
                // between would serve a list from before the mutation.
                actions = [.dropLists(user: user, closing: intentSeq)]
                recentlyClosed.append(intentSeq)
                if recentlyClosed.count > 4096 { recentlyClosed.removeFirst(2048) }
            }
            processed = max(processed, seq)
            // Only an intent's proxy waits for the others to have read it (not for itself); any
            // other position goes out with the next acknowledgement or lease renewal.
            if intentSeq == 0 && proxyID != settings.proxyID && !ackRunning {
                ackRunning = true
                actions.append(.scheduleAcknowledgement)
            }
            return actions
        }
    }

    /// Marks intent `seq` open, unless this proxy has read past it already (then its outcome
    /// may have been heard, or it was loaded at catch-up).
    private mutating func markOpen(_ seq: Int64, user: String, now: NIODeadline) {
        guard seq > processed, open[seq] == nil else { return }
        open[seq] = OpenIntent(user: user, since: now)
        openUsers[user, default: 0] += 1
    }

    private mutating func close(_ intentSeq: Int64) {
        guard let intent = open.removeValue(forKey: intentSeq) else { return }
        let left = (openUsers[intent.user] ?? 1) - 1
        openUsers[intent.user] = left > 0 ? left : nil
    }
}

/// One announcement on the `mixpeek_proxy` channel: `i seq intent_seq proxy_id hash user` (a
/// record appended; `intent_seq` 0 for an intent) or `a proxy_id read_seq` (a proxy's position).
enum GroupAnnouncement: Equatable, Sendable {
    case record(seq: Int64, intentSeq: Int64, proxyID: String, hash: String, user: String)
    case read(proxyID: String, seq: Int64)

    /// Read as bytes: `String.split` took a twentieth of a proxy's CPU in a group's mutation
    /// benchmark. Nil for anything else.
    init?(_ payload: String) {
        let parts = Array(payload.utf8).split(separator: UInt8(ascii: " "), maxSplits: 5, omittingEmptySubsequences: false)
        func number(_ index: Int) -> Int64? { Int64(String(decoding: parts[index], as: UTF8.self)) }
        func text(_ index: Int) -> String { String(decoding: parts[index], as: UTF8.self) }
        if parts.first?.elementsEqual("a".utf8) == true, parts.count == 3, let seq = number(2) {
            self = .read(proxyID: text(1), seq: seq)
        } else if parts.first?.elementsEqual("i".utf8) == true, parts.count == 6, let seq = number(1), let intentSeq = number(2) {
            self = .record(seq: seq, intentSeq: intentSeq, proxyID: text(3), hash: text(4), user: text(5))
        } else {
            return nil
        }
    }
}
