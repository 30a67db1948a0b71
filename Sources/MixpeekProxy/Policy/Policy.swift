import MixpeekAPI
import NIOHTTP1

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
