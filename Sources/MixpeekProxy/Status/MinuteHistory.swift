import Foundation
import MixpeekAPI

/// The last hour of list traffic, one slot a minute, for the status page's chart.
///
/// Filled once a minute from the cache's running counters by a timer (`record(_:at:)`), never
/// by a request: a cache hit with the status page open costs what it cost before.
public struct MinuteHistory: Sendable {
    /// One minute of list traffic: how many list requests were answered each way.
    public struct Minute: Codable, Sendable, Equatable {
        /// When the minute began (RFC 3339, UTC).
        public var start: String
        public var hits: Int
        public var misses: Int
        public var stale: Int
        public var coalesced: Int
        /// True for the minute still running (the last one, counted up to now).
        public var partial: Bool
    }

    /// Complete minutes kept: an hour.
    public static let capacity = 60

    private var minutes: [Minute] = []
    /// Where the next complete minute goes once `minutes` is full: the oldest slot.
    private var oldest = 0
    /// The counters and time of the last tick; each minute is the difference to the next.
    private var last: (counters: CacheCounters, time: Double)?

    public init() {}

    /// Closes the minute since the last call with the running `counters` at `time`. The
    /// first call only sets where counting starts.
    public mutating func record(_ counters: CacheCounters, at time: Double) {
        if let last {
            let minute = Self.difference(from: last.counters, to: counters, start: last.time, partial: false)
            if minutes.count < Self.capacity {
                minutes.append(minute)
            } else {
                minutes[oldest] = minute
                oldest = (oldest + 1) % Self.capacity
            }
        }
        last = (counters, time)
    }

    /// The complete minutes, oldest first, then the one in progress up to `counters`.
    public func minutes(current counters: CacheCounters) -> [Minute] {
        var ordered = Array(minutes[oldest...] + minutes[..<oldest])
        if let last {
            ordered.append(Self.difference(from: last.counters, to: counters, start: last.time, partial: true))
        }
        return ordered
    }

    private static func difference(from old: CacheCounters, to new: CacheCounters, start: Double, partial: Bool) -> Minute {
        Minute(
            start: Timestamp.string(Date(timeIntervalSince1970: start)),
            hits: max(0, new.hits - old.hits), misses: max(0, new.misses - old.misses),
            stale: max(0, new.stale - old.stale), coalesced: max(0, new.coalesced - old.coalesced),
            partial: partial)
    }
}
