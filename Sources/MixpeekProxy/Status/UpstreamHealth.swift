import Foundation
import MixpeekAPI
import NIOConcurrencyHelpers

/// What the proxy has seen of the upstream lately, from the calls it makes anyway (list
/// misses and mutations): it sends no probes of its own. Recorded once per upstream call,
/// never for a cache hit.
public final class UpstreamHealth: Sendable {
    public enum Call: Sendable { case list, mutation }

    /// Latencies older than this are left out of the percentiles.
    public static let window: Double = 300
    /// Latencies kept per kind of call: the newest, however busy the window was.
    static let samplesKept = 1024

    private struct Samples {
        var times: [Double] = []
        var milliseconds: [Double] = []
        var next = 0

        mutating func add(_ value: Double, at time: Double) {
            if times.count < UpstreamHealth.samplesKept {
                times.append(time)
                milliseconds.append(value)
            } else {
                times[next] = time
                milliseconds[next] = value
                next = (next + 1) % UpstreamHealth.samplesKept
            }
        }

        func recent(since: Double) -> [Double] {
            zip(times, milliseconds).filter { $0.0 >= since }.map(\.1)
        }
    }

    private struct State {
        var lists = Samples()
        var mutations = Samples()
        /// The last call's time and how it ended: an HTTP status, or nil when no answer came.
        var lastCall: (time: Double, status: Int?)?
        var lastError: (time: Double, message: String)?

        mutating func add(_ call: Call, _ milliseconds: Double, at time: Double) {
            switch call {
            case .list: lists.add(milliseconds, at: time)
            case .mutation: mutations.add(milliseconds, at: time)
            }
        }
    }

    private let state = NIOLockedValueBox(State())
    private let clock: @Sendable () -> Double

    public init(clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.clock = clock
    }

    /// One upstream call that got an answer with `status`.
    public func answered(_ call: Call, status: Int, milliseconds: Double) {
        let now = clock()
        state.withLockedValue { state in
            state.add(call, milliseconds, at: now)
            state.lastCall = (now, status)
            if status >= 500 { state.lastError = (now, "the upstream answered \(status)") }
        }
    }

    /// One upstream call that got no answer.
    public func failed(_ call: Call, _ error: UpstreamError, milliseconds: Double) {
        let now = clock()
        let message = switch error {
        case .timeout: "no answer within the upstream timeout"
        case .unreachable(let why): "unreachable: \(why.prefix(200))"
        }
        state.withLockedValue { state in
            state.add(call, milliseconds, at: now)
            state.lastCall = (now, nil)
            state.lastError = (now, message)
        }
    }

    /// The status page's upstream panel, but for the upstream's address.
    func snapshot(url: String) -> StatusSnapshot.Upstream {
        let now = clock()
        let (state, lists, mutations) = self.state.withLockedValue { state in
            (state, state.lists.recent(since: now - Self.window), state.mutations.recent(since: now - Self.window))
        }
        let health: StatusSnapshot.Upstream.State = switch state.lastCall?.status {
        case nil where state.lastCall == nil: .unknown
        case nil: .unreachable
        case let status? where status >= 500: .erroring
        default: .reachable
        }
        return StatusSnapshot.Upstream(
            url: url, state: health,
            last_call: state.lastCall.map { Self.time($0.time) },
            last_error: state.lastError.map { .init(time: Self.time($0.time), message: $0.message) },
            window_seconds: Int(Self.window),
            list_misses: .init(lists), mutations: .init(mutations))
    }

    private static func time(_ seconds: Double) -> String {
        Timestamp.string(Date(timeIntervalSince1970: seconds))
    }
}

extension StatusSnapshot.Latency {
    /// Nearest-rank percentiles of `milliseconds`.
    init(_ milliseconds: [Double]) {
        let sorted = milliseconds.sorted()
        func percentile(_ p: Double) -> Double? {
            guard !sorted.isEmpty else { return nil }
            let rank = Int((p * Double(sorted.count)).rounded(.up))
            return (sorted[max(0, rank - 1)] * 10).rounded() / 10
        }
        self.init(count: sorted.count, p50_ms: percentile(0.5), p99_ms: percentile(0.99))
    }
}
