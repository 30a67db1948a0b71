import MixpeekAPI

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
