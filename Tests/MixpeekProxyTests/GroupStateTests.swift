@testable import MixpeekProxy
import NIOCore
import Testing

/// The group protocol (`GroupState`) on its own: events in, actions out, no PostgreSQL and no
/// clock. The same protocol against a real PostgreSQL and real proxies is `scripts/group_check.py`.
@Suite("Group protocol (the state machine, no database)")
struct GroupStateTests {
    typealias Action = GroupState.Action

    static let lease = 2.0
    static let ttl = TimeAmount.seconds(600)

    static func at(_ ms: Int64) -> NIODeadline { .uptimeNanoseconds(UInt64(ms) * 1_000_000 + 1_000_000_000) }

    static func fresh(_ me: String = "me") -> GroupState {
        GroupState(settings: .init(proxyID: me, leaseSeconds: lease, peerTTL: ttl))
    }

    /// A member that has caught up at `head` and holds its lease, renewed at `at(0)`.
    static func joined(head: Int64 = 10, open: [Int64: String] = [:]) -> GroupState {
        var state = fresh()
        _ = state.on(.catchUpBegins(session: 0), now: at(0))
        _ = state.on(.caughtUp(session: 0, head: head, open: open), now: at(0))
        _ = state.on(.renewed(session: 0, sentAt: at(0), catchingUp: true), now: at(1))
        return state
    }

    static func intent(_ seq: Int64, by proxy: String = "peer", user: String = "ann@example.com") -> GroupState.Event {
        .heard(.record(seq: seq, intentSeq: 0, proxyID: proxy, hash: "h\(seq)", user: user))
    }

    static func outcome(_ seq: Int64, of intent: Int64, by proxy: String = "peer", user: String = "ann@example.com") -> GroupState.Event {
        .heard(.record(seq: seq, intentSeq: intent, proxyID: proxy, hash: "h\(seq)", user: user))
    }

    // MARK: Announcements

    @Test("announcements are read from their payloads; anything else is refused")
    func announcements() {
        #expect(GroupAnnouncement("i 12 0 runner-1 abc ann@example.com") ==
                .record(seq: 12, intentSeq: 0, proxyID: "runner-1", hash: "abc", user: "ann@example.com"))
        #expect(GroupAnnouncement("i 13 12 runner-1 abc a user with spaces") ==
                .record(seq: 13, intentSeq: 12, proxyID: "runner-1", hash: "abc", user: "a user with spaces"))
        #expect(GroupAnnouncement("a runner-2 40") == .read(proxyID: "runner-2", seq: 40))
        for bad in ["", "a", "a runner-2", "a runner-2 x", "i 1 0 p h", "i x 0 p h u", "x 1 2 3", "a b 1 2"] {
            #expect(GroupAnnouncement(bad) == nil, "\(bad)")
        }
    }

    @Test("an intent marks its user open and drops the lists; the outcome drops them again and closes the user only once they are dropped")
    func intentThenOutcome() {
        var state = Self.joined()
        #expect(state.on(Self.intent(11), now: Self.at(10)) == [.dropLists(user: "ann@example.com"), .scheduleAcknowledgement])
        #expect(state.isOpen("ann@example.com"))
        #expect(!state.isOpen("bob@example.com"))
        #expect(state.on(Self.outcome(12, of: 11), now: Self.at(20)) == [.dropLists(user: "ann@example.com", closing: 11)])
        // Between the outcome and the drop, a hit would serve a list from before the mutation.
        #expect(state.isOpen("ann@example.com"))
        #expect(state.on(.listsDropped(intentSeq: 11), now: Self.at(21)) == [])
        #expect(!state.isOpen("ann@example.com"))
        #expect(state.processed == 12)
    }

    @Test("two intents of one user: the user stays open until both are closed")
    func twoIntents() {
        var state = Self.joined()
        _ = state.on(Self.intent(11), now: Self.at(10))
        _ = state.on(Self.intent(12), now: Self.at(10))
        _ = state.on(Self.outcome(13, of: 11), now: Self.at(10))
        _ = state.on(.listsDropped(intentSeq: 11), now: Self.at(10))
        #expect(state.isOpen("ann@example.com"))
        _ = state.on(Self.outcome(14, of: 12), now: Self.at(10))
        _ = state.on(.listsDropped(intentSeq: 12), now: Self.at(10))
        #expect(!state.isOpen("ann@example.com"))
    }

    @Test("its own intent asks for no acknowledgement: only the other proxies wait for this one")
    func ownIntent() {
        var state = Self.joined()
        _ = state.on(.appended(seq: 11, user: "ann@example.com"), now: Self.at(5))
        #expect(state.isOpen("ann@example.com"))
        #expect(state.on(Self.intent(11, by: "me"), now: Self.at(10)) == [.dropLists(user: "ann@example.com")])
    }

    @Test("its own intent's announcement heard before its append returned: the user is open from the first of the two, and stays open until the outcome")
    func announcementBeforeTheLocalAnswer() {
        var state = Self.joined()
        _ = state.on(Self.intent(11, by: "me"), now: Self.at(10))
        #expect(state.isOpen("ann@example.com"))
        _ = state.on(.appended(seq: 11, user: "ann@example.com"), now: Self.at(11))
        #expect(state.open.count == 1 && state.isOpen("ann@example.com"))
        _ = state.on(Self.outcome(12, of: 11, by: "me"), now: Self.at(20))
        _ = state.on(.listsDropped(intentSeq: 11), now: Self.at(20))
        #expect(!state.isOpen("ann@example.com"))
        // And the outcome heard before the append returned (a slow return): no reopening.
        _ = state.on(Self.intent(13, by: "me", user: "bob@example.com"), now: Self.at(30))
        _ = state.on(Self.outcome(14, of: 13, by: "me", user: "bob@example.com"), now: Self.at(31))
        _ = state.on(.listsDropped(intentSeq: 13), now: Self.at(31))
        _ = state.on(.appended(seq: 13, user: "bob@example.com"), now: Self.at(32))
        #expect(!state.isOpen("bob@example.com"))
    }

    @Test("one acknowledgement at a time, each carrying the latest position")
    func acknowledgements() {
        var state = Self.joined()
        #expect(state.on(Self.intent(11), now: Self.at(10)).contains(.scheduleAcknowledgement))
        #expect(!state.on(Self.intent(12, user: "bob@example.com"), now: Self.at(10)).contains(.scheduleAcknowledgement))
        #expect(state.on(.acknowledging, now: Self.at(11)) == [.acknowledge(position: 12)])
        _ = state.on(Self.intent(13), now: Self.at(12))
        // 13 was heard while 12 was on its way: one more, with 13.
        #expect(state.on(.acknowledged(position: 12, ok: true), now: Self.at(13)) == [.acknowledge(position: 13)])
        #expect(state.on(.acknowledged(position: 13, ok: true), now: Self.at(14)) == [])
        #expect(state.on(Self.intent(14), now: Self.at(15)).contains(.scheduleAcknowledgement))
        // A failed one stops the chain (the session is failing); the next intent starts another.
        #expect(state.on(.acknowledged(position: 14, ok: false), now: Self.at(16)) == [])
        #expect(state.on(Self.intent(15), now: Self.at(17)).contains(.scheduleAcknowledgement))
    }

    @Test("an intent already read past is not reopened (its outcome may have been heard)")
    func oldIntent() {
        var state = Self.joined(head: 20)
        #expect(state.on(Self.intent(15), now: Self.at(10)).first == .dropLists(user: "ann@example.com"))
        #expect(!state.isOpen("ann@example.com"))
        _ = state.on(.appended(seq: 19, user: "bob@example.com"), now: Self.at(10))
        #expect(!state.isOpen("bob@example.com"))
    }

    // MARK: Catching up and the lease

    @Test("catch-up: the gate closes, what is heard meanwhile waits and is acted on, in order, after the reading")
    func catchUpBuffers() {
        var state = Self.fresh()
        #expect(state.on(.catchUpBegins(session: 0), now: Self.at(0)) == [.closeGate])
        #expect(state.on(Self.intent(11), now: Self.at(1)) == [])
        #expect(state.on(Self.outcome(12, of: 11), now: Self.at(2)) == [])
        #expect(!state.isOpen("ann@example.com"))
        let actions = state.on(.caughtUp(session: 0, head: 10, open: [7: "bob@example.com"]), now: Self.at(3))
        #expect(actions == [.dropLists(user: "ann@example.com"), .scheduleAcknowledgement,
                            .dropLists(user: "ann@example.com", closing: 11)])
        #expect(state.isOpen("bob@example.com"))
        #expect(state.servingUntil == nil)
        #expect(state.on(.renewed(session: 0, sentAt: Self.at(3), catchingUp: true), now: Self.at(4)) ==
                [.openGate(until: Self.at(3) + .milliseconds(1800))])
    }

    @Test("a catch-up's reading does not reopen an intent whose outcome was heard, and keeps an intent heard past its head")
    func catchUpReading() {
        var state = Self.joined()
        _ = state.on(Self.intent(11), now: Self.at(10))
        _ = state.on(Self.outcome(12, of: 11), now: Self.at(10))
        _ = state.on(.listsDropped(intentSeq: 11), now: Self.at(10))
        _ = state.on(.appended(seq: 13, user: "carl@example.com"), now: Self.at(10))
        _ = state.on(.catchUpBegins(session: 0), now: Self.at(20))
        _ = state.on(.caughtUp(session: 0, head: 12, open: [11: "ann@example.com"]), now: Self.at(21))
        #expect(!state.isOpen("ann@example.com"))
        #expect(state.isOpen("carl@example.com"))
    }

    @Test("a chain shorter than what was heard (records lost): positions are forgotten, with a warning")
    func chainLost() {
        var state = Self.joined(head: 20)
        _ = state.on(.heard(.read(proxyID: "peer", seq: 20)), now: Self.at(5))
        _ = state.on(.catchUpBegins(session: 0), now: Self.at(10))
        let actions = state.on(.caughtUp(session: 0, head: 5, open: [:]), now: Self.at(11))
        #expect(actions.count == 1)
        guard case .warn = actions.first else { Issue.record("no warning: \(actions)"); return }
        #expect(state.processed == 5)
        #expect(state.peers.isEmpty)
    }

    @Test("the gate opens until 0.9 lease after the renewal was sent; a renewal back after the lease ran out is a lapse")
    func renewals() {
        var state = Self.joined()
        #expect(state.servingUntil == Self.at(1800))
        #expect(state.on(.renewed(session: 0, sentAt: Self.at(500), catchingUp: false), now: Self.at(510)) ==
                [.openGate(until: Self.at(2300))])
        // Sent before the gate closed, back after: the proxy may have missed an announcement.
        let late = state.on(.renewed(session: 0, sentAt: Self.at(2000), catchingUp: false), now: Self.at(2301))
        #expect(late.suffix(2) == [.closeGate, .catchUp])
        #expect(state.servingUntil == nil)
        // A renewal whose own count has run out by its return opens nothing.
        #expect(state.on(.renewed(session: 0, sentAt: Self.at(3000), catchingUp: true), now: Self.at(5000)) == [])
        #expect(state.servingUntil == nil)
    }

    @Test("a session given up changes nothing: its catch-up and renewals are abandoned, and no gate opens")
    func staleSession() {
        var state = Self.joined()
        #expect(state.on(.listenDropped, now: Self.at(100)) == [.closeGate])
        #expect(!state.connected)
        let before = state
        #expect(state.on(.renewed(session: 0, sentAt: Self.at(100), catchingUp: false), now: Self.at(101)) == [.abandon])
        #expect(state.on(.catchUpBegins(session: 0), now: Self.at(101)) == [.abandon])
        #expect(state.on(.caughtUp(session: 0, head: 50, open: [:]), now: Self.at(101)) == [.abandon])
        #expect(state.servingUntil == nil && state.processed == before.processed && state.session == 1)
    }

    @Test("the reaper's candidates: intents open longer than the age, oldest first, only while connected")
    func reaperCandidates() {
        var state = Self.joined(head: 10, open: [3: "ann@example.com"])
        _ = state.on(Self.intent(11, user: "bob@example.com"), now: Self.at(5000))
        #expect(state.openIntents(olderThan: .seconds(2), now: Self.at(6000)) == [3])
        #expect(state.openIntents(olderThan: .seconds(2), now: Self.at(8000)) == [3, 11])
        _ = state.on(.foundClosed(intentSeq: 3), now: Self.at(8000))
        #expect(state.openIntents(olderThan: .seconds(2), now: Self.at(8000)) == [11])
        _ = state.on(.listenDropped, now: Self.at(8000))
        #expect(state.openIntents(olderThan: .seconds(2), now: Self.at(8000)) == [])
    }

    // MARK: Barriers

    @Test("a barrier whose peers have read past it is released at once")
    func barrierAlreadyRead() {
        var state = Self.joined()
        _ = state.on(.heard(.read(proxyID: "b", seq: 11)), now: Self.at(5))
        #expect(state.on(.barrierBegins(id: 1, seq: 11, lagging: ["b": nil]), now: Self.at(6)) == [.release(id: 1, read: true)])
        #expect(state.waiters.isEmpty)
    }

    @Test("a barrier wakes on its peers' acknowledgements, once all have read past it")
    func barrierOnAcknowledgements() {
        var state = Self.joined()
        #expect(state.on(.barrierBegins(id: 1, seq: 11, lagging: ["b": nil, "c": nil]), now: Self.at(10)) ==
                [.wake(id: 1, at: Self.at(1010))])
        #expect(state.on(.heard(.read(proxyID: "b", seq: 11)), now: Self.at(11)) == [])
        #expect(state.on(.heard(.read(proxyID: "c", seq: 10)), now: Self.at(12)) == [])
        #expect(state.on(.heard(.read(proxyID: "c", seq: 12)), now: Self.at(13)) == [.release(id: 1, read: true)])
        // The timer that fires after finds nothing to do.
        #expect(state.on(.barrierTimer(id: 1), now: Self.at(1010)) == [])
    }

    @Test("a barrier asks PostgreSQL again after a second, or just after a lagging peer's lease lapses, never sooner than 5 ms")
    func barrierTimers() {
        var state = Self.joined()
        #expect(state.on(.barrierBegins(id: 1, seq: 11, lagging: ["b": Self.at(5000)]), now: Self.at(10)) == [.wake(id: 1, at: Self.at(1010))])
        #expect(state.on(.barrierBegins(id: 2, seq: 11, lagging: ["b": Self.at(5000), "c": Self.at(300)]), now: Self.at(10)) ==
                [.wake(id: 2, at: Self.at(305))])
        #expect(state.on(.barrierBegins(id: 3, seq: 11, lagging: ["d": Self.at(8)]), now: Self.at(10)) == [.wake(id: 3, at: Self.at(15))])
        #expect(state.on(.barrierTimer(id: 2), now: Self.at(305)) == [.release(id: 2, read: false)])
        #expect(state.on(.barrierTimer(id: 2), now: Self.at(306)) == [])
        #expect(Set(state.waiters.keys) == [1, 3])
    }

    @Test("LISTEN dropped mid-barrier: the barrier keeps waiting, and asks PostgreSQL again as soon as LISTEN is back")
    func listenDroppedMidBarrier() {
        var state = Self.joined()
        _ = state.on(.barrierBegins(id: 7, seq: 11, lagging: ["b": nil]), now: Self.at(10))
        _ = state.on(.listenDropped, now: Self.at(20))
        #expect(state.waiters[7] != nil)
        _ = state.on(.catchUpBegins(session: 1), now: Self.at(1020))
        let actions = state.on(.caughtUp(session: 1, head: 11, open: [:]), now: Self.at(1021))
        #expect(actions == [.release(id: 7, read: false)])
        #expect(state.waiters.isEmpty)
    }

    @Test("this proxy's lease lapsing during its own mutation closes its gate; the mutation's barrier goes on")
    func leaseLapsesMidMutation() {
        var state = Self.joined()
        _ = state.on(.appended(seq: 11, user: "ann@example.com"), now: Self.at(100))
        _ = state.on(.barrierBegins(id: 1, seq: 11, lagging: ["b": nil]), now: Self.at(100))
        #expect(state.on(.renewed(session: 0, sentAt: Self.at(1500), catchingUp: false), now: Self.at(1900)).suffix(2) == [.closeGate, .catchUp])
        #expect(state.waiters[1] != nil)
        #expect(state.on(.heard(.read(proxyID: "b", seq: 11)), now: Self.at(1901)) == [.release(id: 1, read: true)])
    }

    // MARK: Bounded

    @Test("a peer gone silent is forgotten after group_peer_ttl, but not while a barrier waits for it")
    func peersExpire() {
        var state = Self.joined()
        _ = state.on(.heard(.read(proxyID: "gone", seq: 3)), now: Self.at(0))
        _ = state.on(.heard(.read(proxyID: "waited-for", seq: 3)), now: Self.at(0))
        _ = state.on(.barrierBegins(id: 1, seq: 11, lagging: ["waited-for": nil]), now: Self.at(0))
        _ = state.on(.tick, now: Self.at(599_000))
        #expect(Set(state.peers.keys) == ["gone", "waited-for"])
        _ = state.on(.tick, now: Self.at(601_000))
        #expect(Set(state.peers.keys) == ["waited-for"])
        _ = state.on(.barrierTimer(id: 1), now: Self.at(601_000))
        _ = state.on(.tick, now: Self.at(601_001))
        #expect(state.peers.isEmpty)
    }

    @Test("outcomes remembered for the catch-up stay bounded")
    func recentlyClosedBounded() {
        var state = Self.joined(head: 0)
        for n in 0..<5000 {
            let seq = Int64(2 * n + 1)
            _ = state.on(Self.intent(seq), now: Self.at(1))
            _ = state.on(Self.outcome(seq + 1, of: seq), now: Self.at(1))
            _ = state.on(.listsDropped(intentSeq: seq), now: Self.at(1))
        }
        #expect(state.recentlyClosed.count <= 4096)
        #expect(state.open.isEmpty && state.openUsers.isEmpty)
    }

    // MARK: Every event in every state

    enum Phase: String, CaseIterable { case fresh, catchingUp, serving, lapsed, dropped }

    static func state(in phase: Phase) -> GroupState {
        switch phase {
        case .fresh: return fresh()
        case .catchingUp:
            var state = fresh()
            _ = state.on(.catchUpBegins(session: 0), now: at(0))
            return state
        case .serving: return joined()
        case .lapsed:
            var state = joined()
            _ = state.on(.renewed(session: 0, sentAt: at(1000), catchingUp: false), now: at(5000))
            return state
        case .dropped:
            var state = joined()
            _ = state.on(.listenDropped, now: at(100))
            return state
        }
    }

    static let everyEvent: [(String, GroupState.Event)] = [
        ("catchUpBegins", .catchUpBegins(session: 0)),
        ("caughtUp", .caughtUp(session: 0, head: 10, open: [:])),
        ("renewed", .renewed(session: 0, sentAt: at(200), catchingUp: false)),
        ("renewed catching up", .renewed(session: 0, sentAt: at(200), catchingUp: true)),
        ("listenDropped", .listenDropped),
        ("intent", intent(11)),
        ("outcome", outcome(12, of: 11)),
        ("read", .heard(.read(proxyID: "b", seq: 11))),
        ("acknowledging", .acknowledging),
        ("acknowledged", .acknowledged(position: 11, ok: true)),
        ("appended", .appended(seq: 11, user: "ann@example.com")),
        ("listsDropped", .listsDropped(intentSeq: 11)),
        ("foundClosed", .foundClosed(intentSeq: 11)),
        ("barrierBegins", .barrierBegins(id: 1, seq: 11, lagging: ["b": nil])),
        ("barrierTimer", .barrierTimer(id: 1)),
        ("tick", .tick),
    ]

    @Test("every event in every state: only the current session's renewal opens the gate, a stale session's event is abandoned and changes nothing, and nothing is acted on mid-catch-up", arguments: Phase.allCases)
    func everyEventInEveryState(_ phase: Phase) {
        for (name, event) in Self.everyEvent {
            var state = Self.state(in: phase)
            let before = state
            let actions = state.on(event, now: Self.at(300))
            let opens = actions.contains { if case .openGate = $0 { true } else { false } }
            let stale: Bool
            switch event {
            case .catchUpBegins(let session), .caughtUp(let session, _, _), .renewed(let session, _, _): stale = session != before.session
            default: stale = false
            }
            if stale {
                #expect(actions == [.abandon], "\(phase) \(name)")
                #expect(state.servingUntil == before.servingUntil && state.open == before.open && state.processed == before.processed, "\(phase) \(name)")
            }
            if opens {
                guard case .renewed = event else { Issue.record("\(phase) \(name) opened the gate: \(actions)"); continue }
                #expect(!stale && state.servingUntil != nil, "\(phase) \(name)")
            }
            if phase == .catchingUp, case .heard = event {
                #expect(actions == [], "\(phase) \(name): acted on before the reading")
            }
            if case .listenDropped = event {
                #expect(state.servingUntil == nil && !state.connected && state.session == before.session + 1, "\(phase) \(name)")
            }
            if phase == .lapsed || phase == .dropped || phase == .fresh || phase == .catchingUp {
                // No gate is open in these phases, and only a renewal may open it.
                #expect(before.servingUntil == nil, "\(phase)")
            }
        }
    }

    // MARK: Read-your-writes on the state alone

    @Test("seeded random interleavings of three members: once a mutation is forwarded, no member serves a list from before it", arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func readYourWritesUnderInterleavings(seed: UInt64) {
        var world = GroupWorld(seed: seed)
        world.run(steps: 15_000)
        #expect(world.violations.isEmpty, "\(world.violations.prefix(3))")
        // Not vacuous: mutations went through, and hits were served and checked.
        #expect(world.forwarded > 20, "forwarded \(world.forwarded)")
        #expect(world.hits > 50, "hits \(world.hits), forwarded \(world.forwarded), lapses \(world.lapses), drops \(world.drops)")
        #expect(world.lapses > 0 && world.drops > 0 && world.freezes > 0, "lapses \(world.lapses), drops \(world.drops), freezes \(world.freezes)")
    }
}

/// A simulated group: members running `GroupState`, a chain, leases and positions as
/// PostgreSQL keeps them, announcements delivered in commit order (each member's own queue),
/// an upstream whose lists change with each forwarded mutation, and each member's cache as
/// `ListCache` keeps it (a fetch is stored only if the gate admits the user and no drop of the
/// user came after the fetch started).
struct GroupWorld {
    struct Fetch { var member: Int; var user: String; var version: Int; var generation: Int }
    struct Mutation {
        var member: Int; var user: String; var intent: Int64; var barrier: Int; var deadline: Int64
        var forwarded = false
    }
    struct Member {
        var state: GroupState
        var inbox: [GroupAnnouncement] = []
        var listening = false
        var catchingUp = false
        var cache: [String: Int] = [:]
        var generation: [String: Int] = [:]
        var leaseUntil: Int64 = 0      // PostgreSQL's
        var readSeq: Int64 = 0         // PostgreSQL's row
        var renewalBack: (sentAt: Int64, back: Int64, catchingUp: Bool)?
        var acknowledging = false
        /// Until when the process is frozen (a pause, SIGSTOP): it does nothing, hears nothing.
        var frozenUntil: Int64 = 0
    }

    var random: SeededGenerator
    var now: Int64 = 0
    var members: [Member]
    var chain: [(seq: Int64, intentSeq: Int64, user: String)] = []
    var upstream: [String: Int] = [:]
    var required: [String: Int] = [:]
    var fetches: [Fetch] = []
    var mutations: [Mutation] = []
    var timers: [(at: Int64, member: Int, id: Int)] = []
    var nextBarrier = 0
    var violations: [String] = []
    var forwarded = 0, hits = 0, lapses = 0, drops = 0, freezes = 0
    let users = ["ann", "bob", "carl"]
    let leaseMS: Int64 = 2000

    init(seed: UInt64) {
        random = SeededGenerator(seed: seed)
        members = (0..<3).map { GroupState(settings: .init(proxyID: "p\($0)", leaseSeconds: 2, peerTTL: .seconds(600))) }
            .map { Member(state: $0) }
    }

    func deadline(_ ms: Int64) -> NIODeadline { .uptimeNanoseconds(UInt64(ms + 1_000_000) * 1_000_000) }
    func ms(_ deadline: NIODeadline) -> Int64 { Int64(deadline.uptimeNanoseconds / 1_000_000) - 1_000_000 }

    func admits(_ m: Int, _ user: String) -> Bool {
        let state = members[m].state
        guard let until = state.servingUntil, deadline(now) < until else { return false }
        return !state.isOpen(user)
    }

    mutating func event(_ m: Int, _ event: GroupState.Event) {
        let actions = members[m].state.on(event, now: deadline(now))
        perform(m, actions)
    }

    mutating func perform(_ m: Int, _ actions: [GroupState.Action]) {
        for action in actions {
            switch action {
            case .closeGate, .openGate, .warn, .abandon: break
            case .catchUp: beginCatchUp(m)
            case .dropLists(let user, let closing):
                members[m].cache[user] = nil
                members[m].generation[user, default: 0] += 1
                if let closing { event(m, .listsDropped(intentSeq: closing)) }
            case .scheduleAcknowledgement: members[m].acknowledging = true
            case .acknowledge(let position):
                announce(.read(proxyID: "p\(m)", seq: position))
                event(m, .acknowledged(position: position, ok: true))
            case .release(let id, let read):
                guard let index = mutations.firstIndex(where: { $0.barrier == id && $0.member == m }) else { break }
                if read { forward(index) } else { askAgain(index) }
            case .wake(let id, let at): timers.append((ms(at), m, id))
            }
        }
    }

    mutating func announce(_ announcement: GroupAnnouncement) {
        for m in members.indices where members[m].listening { members[m].inbox.append(announcement) }
    }

    mutating func append(_ intentSeq: Int64, _ user: String, by m: Int) -> Int64 {
        let seq = Int64(chain.count + 1)
        chain.append((seq, intentSeq, user))
        announce(.record(seq: seq, intentSeq: intentSeq, proxyID: "p\(m)", hash: "h", user: user))
        return seq
    }

    /// The peers PostgreSQL finds live and behind `seq`, with their lease's end.
    func lagging(_ m: Int, _ seq: Int64) -> [String: NIODeadline?] {
        var lagging: [String: NIODeadline?] = [:]
        for p in members.indices where p != m && members[p].leaseUntil > now && members[p].readSeq < seq {
            lagging["p\(p)"] = deadline(members[p].leaseUntil)
        }
        return lagging
    }

    mutating func startMutation(_ m: Int, _ user: String) {
        let seq = append(0, user, by: m)
        event(m, .appended(seq: seq, user: user))
        nextBarrier += 1
        mutations.append(Mutation(member: m, user: user, intent: seq, barrier: nextBarrier, deadline: now + leaseMS + 1000))
        // The live peers as the append read them: positions only.
        let live = lagging(m, seq).mapValues { _ -> NIODeadline? in nil }
        if live.isEmpty { return forward(mutations.count - 1) }
        event(m, .barrierBegins(id: nextBarrier, seq: seq, lagging: live))
    }

    mutating func askAgain(_ index: Int) {
        let mutation = mutations[index]
        if now >= mutation.deadline {
            // Refused: an `error` outcome, never forwarded.
            mutations.remove(at: index)
            _ = append(mutation.intent, mutation.user, by: mutation.member)
            return
        }
        let behind = lagging(mutation.member, mutation.intent)
        if behind.isEmpty { return forward(index) }
        nextBarrier += 1
        mutations[index].barrier = nextBarrier
        event(mutation.member, .barrierBegins(id: nextBarrier, seq: mutation.intent, lagging: behind))
    }

    mutating func forward(_ index: Int) {
        guard !mutations[index].forwarded else { return }
        mutations[index].forwarded = true
        let user = mutations[index].user
        upstream[user, default: 0] += 1
        required[user] = upstream[user]
        forwarded += 1
    }

    mutating func beginCatchUp(_ m: Int) {
        members[m].catchingUp = true
        event(m, .catchUpBegins(session: members[m].state.session))
        members[m].leaseUntil = now + leaseMS
        members[m].readSeq = 0
    }

    mutating func finishCatchUp(_ m: Int) {
        members[m].catchingUp = false
        let head = Int64(chain.count)
        let closed = Set(chain.map(\.intentSeq))
        var open: [Int64: String] = [:]
        for record in chain where record.intentSeq == 0 && !closed.contains(record.seq) { open[record.seq] = record.user }
        for user in users {
            members[m].cache[user] = nil
            members[m].generation[user, default: 0] += 1
        }
        event(m, .caughtUp(session: members[m].state.session, head: head, open: open))
        renew(m, catchingUp: true)
    }

    mutating func renew(_ m: Int, catchingUp: Bool) {
        guard members[m].renewalBack == nil else { return }
        members[m].leaseUntil = now + leaseMS
        members[m].readSeq = max(members[m].readSeq, members[m].state.processed)
        // Mostly quick; now and then late enough to be a lapse.
        let delay = Int64.random(in: 0...40, using: &random) == 0 ? Int64.random(in: 500...3000, using: &random) : Int64.random(in: 0...20, using: &random)
        members[m].renewalBack = (now, now + delay, catchingUp)
    }

    mutating func run(steps: Int) {
        for _ in 0..<steps {
            let m = Int.random(in: 0..<members.count, using: &random)
            let user = users.randomElement(using: &random)!
            var choice = Int.random(in: 0..<100, using: &random)
            // A frozen member does nothing until it thaws; time still passes.
            if now < members[m].frozenUntil { choice = 99 }
            switch choice {
            case 0..<25:
                // An announcement delivered.
                if !members[m].inbox.isEmpty {
                    let next = members[m].inbox.removeFirst()
                    event(m, .heard(next))
                }
            case 25..<30:
                if members[m].acknowledging {
                    members[m].acknowledging = false
                    event(m, .acknowledging)
                }
            case 30..<45:
                // A list asked for: a hit, or a fetch.
                if admits(m, user), let version = members[m].cache[user] {
                    hits += 1
                    if version < required[user, default: 0] {
                        violations.append("seed step: p\(m) served \(user)'s list v\(version) after v\(required[user, default: 0]) was forwarded (t=\(now))")
                    }
                } else {
                    fetches.append(Fetch(member: m, user: user, version: upstream[user, default: 0], generation: members[m].generation[user, default: 0]))
                }
            case 45..<55:
                // A fetch's answer stored, if the gate admits it and nothing dropped the user since.
                if !fetches.isEmpty {
                    let fetch = fetches.remove(at: Int.random(in: 0..<fetches.count, using: &random))
                    if admits(fetch.member, fetch.user), members[fetch.member].generation[fetch.user, default: 0] == fetch.generation {
                        members[fetch.member].cache[fetch.user] = fetch.version
                    }
                }
            case 55:
                // Any member may mutate, listening or not: its writer is a connection of its own.
                startMutation(m, user)
            case 56..<64:
                // A forwarded mutation answered: its outcome appended.
                if let index = mutations.firstIndex(where: { $0.forwarded }) {
                    let mutation = mutations.remove(at: index)
                    _ = append(mutation.intent, mutation.user, by: mutation.member)
                }
            case 64..<75:
                if members[m].listening && !members[m].catchingUp { renew(m, catchingUp: false) }
            case 75..<80:
                if members[m].catchingUp { finishCatchUp(m) }
            case 80:
                if members[m].listening, Int.random(in: 0..<3, using: &random) == 0 {
                    drops += 1
                    members[m].listening = false
                    members[m].catchingUp = false
                    members[m].inbox = []
                    members[m].renewalBack = nil
                    event(m, .listenDropped)
                }
            case 81..<84:
                if !members[m].listening {
                    members[m].listening = true
                    beginCatchUp(m)
                }
            case 84 where Int.random(in: 0..<4, using: &random) == 0:
                freezes += 1
                members[m].frozenUntil = now + Int64.random(in: 300...4000, using: &random)
            default:
                now += Int64.random(in: 0...150, using: &random)
                for index in members.indices {
                    if let back = members[index].renewalBack, back.back <= now, now >= members[index].frozenUntil {
                        members[index].renewalBack = nil
                        let wasServing = members[index].state.servingUntil != nil
                        event(index, .renewed(session: members[index].state.session, sentAt: deadline(back.sentAt), catchingUp: back.catchingUp))
                        if wasServing && members[index].state.servingUntil == nil { lapses += 1 }
                    }
                }
                let due = timers.filter { $0.at <= now && now >= members[$0.member].frozenUntil }
                timers.removeAll { $0.at <= now && now >= members[$0.member].frozenUntil }
                for timer in due { event(timer.member, .barrierTimer(id: timer.id)) }
                event(m, .tick)
            }
        }
    }
}
