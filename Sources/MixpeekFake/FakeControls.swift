import MixpeekAPI
import MixpeekHTTP
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// The operations the fake counts and can disturb.
public enum FakeOperation: String, Sendable, CaseIterable {
    case create, list, update, rotate, delete, other
    /// `GET /v1/organizations/audit/logs`.
    case audit

    init(_ route: Route) {
        switch route {
        case .create: self = .create
        case .list: self = .list
        case .update: self = .update
        case .rotate: self = .rotate
        case .delete: self = .delete
        case .passThrough, .rejected: self = .other
        }
    }
}

/// A way for the fake to misbehave, as the real upstream sometimes does.
public enum FakeFault: Sendable, Equatable {
    /// Answer with this status in the API's error shape.
    case status(HTTPResponseStatus)
    /// Answer normally, but only after this long.
    case delay(TimeAmount)
    /// Close the connection without answering.
    case dropConnection
    /// Answer 200 with a body that is not JSON.
    case invalidJSON
    /// Send the head and half the body of the real answer, then close the connection.
    case truncatedBody
}

/// A create, update, rotate or delete the fake carried out (whatever it answered), as it
/// routed it: the user and key as it decoded them from the path.
public struct FakeMutation: Sendable, Equatable, CustomStringConvertible {
    public var operation: FakeOperation
    public var user: String
    public var key: String?

    public init(operation: FakeOperation, user: String, key: String?) {
        self.operation = operation
        self.user = user
        self.key = key
    }

    public var description: String { "\(operation.rawValue) \(user) \(key ?? "-")" }
}

/// One entry of the fake's history: a mutation as it was applied, numbered in the order the
/// fake applied them (from 1, never reused, even when old entries are dropped), with the
/// method and the status it answered.
public struct FakeHistoryEntry: Sendable, Equatable, Codable {
    public var index: Int
    public var op: String
    public var method: String
    public var user: String
    public var key: String?
    public var status: Int

    public init(index: Int, op: String, method: String, user: String, key: String?, status: Int) {
        (self.index, self.op, self.method, self.user, self.key, self.status) = (index, op, method, user, key, status)
    }
}

/// What `GET /_fake/history` answers: the mutations applied, oldest first, and how many list
/// calls the fake answered for each user.
public struct FakeHistory: Sendable, Equatable, Codable {
    public var mutations: [FakeHistoryEntry]
    public var lists: [String: Int]
    /// The index the next mutation will get minus one: the last one applied, 0 before any.
    public var last: Int

    public init(mutations: [FakeHistoryEntry], lists: [String: Int], last: Int) {
        (self.mutations, self.lists, self.last) = (mutations, lists, last)
    }
}

/// What tests read from and switch on in the fake: call counts, faults and held responses.
public final class FakeControls: Sendable {
    private struct State {
        var calls: [FakeOperation: Int] = [:]
        var lastRequests: [FakeOperation: HTTPRequest] = [:]
        var faults: [FakeOperation: FakeFault] = [:]
        var held: Set<FakeOperation> = []
        var waiting: [FakeOperation: [EventLoopPromise<Void>]] = [:]
        var applied: [FakeMutation] = []
        var history: [FakeHistoryEntry] = []
        var lastIndex = 0
        var lists: [String: Int] = [:]
        var caseInsensitiveUsers = false
    }

    private let state = NIOLockedValueBox(State())

    /// How many requests for `operation` reached the fake.
    public func calls(_ operation: FakeOperation) -> Int {
        state.withLockedValue { $0.calls[operation, default: 0] }
    }

    /// All requests that reached the fake.
    public var totalCalls: Int {
        state.withLockedValue { $0.calls.values.reduce(0, +) }
    }

    /// The last request for `operation` exactly as the fake received it.
    public func lastRequest(_ operation: FakeOperation) -> HTTPRequest? {
        state.withLockedValue { $0.lastRequests[operation] }
    }

    /// Switches a fault on for one operation, or for every operation when `operation` is nil;
    /// `nil` switches it off.
    public func setFault(_ fault: FakeFault?, for operation: FakeOperation? = nil) {
        state.withLockedValue { state in
            for op in operation.map({ [$0] }) ?? FakeOperation.allCases {
                state.faults[op] = fault
            }
        }
    }

    /// Holds every response to `operation`, computed when its request arrives, until `release`.
    public func hold(_ operation: FakeOperation) {
        state.withLockedValue { _ = $0.held.insert(operation) }
    }

    /// Lets every held response to `operation` go, and stops holding.
    public func release(_ operation: FakeOperation) {
        let waiting = state.withLockedValue { state in
            state.held.remove(operation)
            return state.waiting.removeValue(forKey: operation) ?? []
        }
        waiting.forEach { $0.succeed() }
    }

    /// How many responses to `operation` are held right now.
    public func heldCount(_ operation: FakeOperation) -> Int {
        state.withLockedValue { $0.waiting[operation]?.count ?? 0 }
    }

    /// Every mutation the fake carried out, oldest first.
    public var appliedMutations: [FakeMutation] {
        state.withLockedValue { $0.applied }
    }

    /// Whether users are matched as the same when their addresses fold to the same string
    /// (`Carol@EXAMPLE.com` is `carol@example.com`), as many identity stores do. Off by default.
    public var matchesUsersCaseInsensitively: Bool {
        state.withLockedValue { $0.caseInsensitiveUsers }
    }

    public func matchUsersCaseInsensitively(_ on: Bool) {
        state.withLockedValue { $0.caseInsensitiveUsers = on }
    }

    /// The history since `index` (exclusive): mutations applied after it, and list counts.
    public func history(after index: Int = 0) -> FakeHistory {
        state.withLockedValue { state in
            FakeHistory(mutations: state.history.filter { $0.index > index }, lists: state.lists, last: state.lastIndex)
        }
    }

    /// Notes a call the fake answered from its state, under the state's lock so that the
    /// history's order is the order of application: a mutation (a create's key is the name in
    /// its body) with the status it got, or a list for its user.
    func noteAnswered(_ route: Route, method: HTTPMethod, createdName: String?, status: HTTPResponseStatus) {
        let operation = FakeOperation(route)
        guard operation != .other, let user = route.user else { return }
        state.withLockedValue { state in
            if operation == .list {
                state.lists[user, default: 0] += 1
                return
            }
            let mutation = FakeMutation(operation: operation, user: user, key: route.key ?? createdName)
            // Bounded for long runs (benchmarks, soak): the oldest half goes.
            if state.applied.count >= 100_000 { state.applied.removeFirst(50_000) }
            state.applied.append(mutation)
            state.lastIndex += 1
            if state.history.count >= 100_000 { state.history.removeFirst(50_000) }
            state.history.append(FakeHistoryEntry(
                index: state.lastIndex, op: operation.rawValue, method: method.rawValue, user: user,
                key: mutation.key, status: Int(status.code)))
        }
    }

    public func reset() {
        let waiting = state.withLockedValue { state in
            let waiting = state.waiting.values.flatMap { $0 }
            state = State()
            return waiting
        }
        waiting.forEach { $0.succeed() }
    }

    /// Counts the request and says what to do with it.
    func admit(_ request: HTTPRequest, as operation: FakeOperation, on eventLoop: any EventLoop) -> (FakeFault?, EventLoopFuture<Void>?) {
        state.withLockedValue { state in
            state.calls[operation, default: 0] += 1
            state.lastRequests[operation] = request
            guard state.held.contains(operation) else { return (state.faults[operation], nil) }
            let gate = eventLoop.makePromise(of: Void.self)
            state.waiting[operation, default: []].append(gate)
            return (state.faults[operation], gate.futureResult)
        }
    }
}
