/// The RFC 9211 `Cache-Status` field of every list answer, beside `X-Cache`: what the cache
/// did (`hit`, or `fwd=` and why it went to the upstream), how much freshness is left (`ttl`),
/// whether the answer was kept (`stored`) or why not (`detail`), and `collapsed` for a request
/// that shared another's fetch.
enum CacheStatus {
    static let name = "Cache-Status"
    static let cacheName = "mixpeek-proxy"

    /// A hit's field for each whole second of freshness left, made once: a hit picks one and
    /// formats nothing.
    struct Hits: Sendable {
        private let fields: [String]

        init(ttl: Double) {
            // Bounded: a TTL of a day is formatted per hit past the first hour.
            fields = (0...Int(min(max(ttl, 0), 3600))).map(CacheStatus.hit(ttl:))
        }

        func field(ttl: Int) -> String {
            fields.indices.contains(ttl) ? fields[ttl] : CacheStatus.hit(ttl: ttl)
        }
    }

    static func hit(ttl: Int) -> String {
        "\(cacheName); hit; ttl=\(ttl)"
    }

    /// A list answered from the upstream (or, when `ttl` is given, a stale entry served because
    /// it failed). `detail` says why it was not stored; nil when it was.
    static func forwarded(_ forward: ListForward, ttl: Int? = nil, stored: Bool,
                          detail: String?) -> String {
        var field = "\(cacheName); fwd=\(forward.reason.rawValue)"
        if let ttl { field += "; ttl=\(ttl)" }
        if stored { field += "; stored" }
        if forward.coalesced { field += "; collapsed" }
        if let detail { field += "; detail=\(detail)" }
        return field
    }

    /// A list whose query the cache does not key.
    static let bypass = "\(cacheName); fwd=bypass; detail=query"
}
