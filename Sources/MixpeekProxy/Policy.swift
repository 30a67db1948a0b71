import MixpeekAPI
import NIOHTTP1

/// What the proxy does with one request, decided once and carried out by `Proxy`: the way
/// Varnish's `builtin.vcl` returns `pass`, `hash` or `synth` and the engine does the rest.
public enum Decision: Sendable, Equatable {
    /// Answer with this error; nothing is forwarded.
    case refuse(ProxyError)
    /// A list: from the cache while fresh (unless `refresh`), else one upstream fetch shared by
    /// every request for the same key, whose 2xx answer is stored.
    case serveList(user: String, includeRevoked: Bool, refresh: Bool)
    /// A list whose query the cache cannot key: forwarded with `X-Cache: BYPASS`, never stored.
    case bypassCache
    /// Forwarded unchanged, neither cached nor audited.
    case passThrough
    /// Audit intent (durable, or 503) → invalidate the user → forward → invalidate → outcome.
    case mutate(AuditAction, user: String, key: String?)

    /// The route label of the request log and the metrics.
    var label: String {
        switch self {
        case .refuse(.notFound): "pass-through"
        case .refuse: "rejected"
        case .serveList, .bypassCache: "list"
        case .passThrough: "pass-through"
        case .mutate(let action, _, _): action.rawValue
        }
    }

    /// The decision in the words of the README's table (`serveList`, `mutate(create)`,
    /// `refuse(405)`): a test checks the table against this function.
    public var summary: String {
        switch self {
        case .refuse(let error): "refuse(\(error.status.code))"
        case .serveList: "serveList"
        case .bypassCache: "bypassCache"
        case .passThrough: "passThrough"
        case .mutate(let action, _, _): "mutate(\(action.rawValue))"
        }
    }
}

/// The whole policy: what the proxy does to each kind of call, as one pure function of the
/// route, the headers that matter and the settings. The README's table "What the proxy does
/// to each call" is checked against it.
public enum Policy {
    public struct Settings: Sendable, Equatable {
        /// Forward `/v1/...` paths that are not API-keys calls (uncached, unaudited).
        public var passThrough = true
        public init() {}
    }

    public static func decide(_ route: Route, target: String, headers: HTTPHeaders, settings: Settings) -> Decision {
        switch route {
        case .rejected(let why):
            .refuse(ProxyError(why))
        case .passThrough where !settings.passThrough:
            .refuse(.notFound("pass-through is off: mixpeek-proxy forwards only the API-keys calls"))
        case .passThrough where !target.hasPrefix("/v1/"):
            .refuse(.notFound("mixpeek-proxy forwards only /v1/... paths"))
        case .passThrough:
            .passThrough
        case .list(let user, let includeRevoked?):
            .serveList(user: user, includeRevoked: includeRevoked, refresh: headers.demandsRefresh)
        case .list:
            .bypassCache
        case .create(let user):
            .mutate(.create, user: user, key: nil)
        case .update(let user, let key):
            .mutate(.update, user: user, key: key)
        case .rotate(let user, let key):
            .mutate(.rotate, user: user, key: key)
        case .delete(let user, let key):
            .mutate(.delete, user: user, key: key)
        }
    }
}
