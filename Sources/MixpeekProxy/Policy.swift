import MixpeekAPI

/// The whole policy on one screen: what the proxy does to each kind of call.
///
/// | route        | cache                       | audit  |
/// |--------------|-----------------------------|--------|
/// | list         | served from cache, stored   | —      |
/// | create       | invalidates the user        | create |
/// | update       | invalidates the user        | update |
/// | rotate       | invalidates the user        | rotate |
/// | delete       | invalidates the user        | delete |
/// | pass-through | —                           | —      |
/// | rejected     | refused, never forwarded    | —      |
public struct Policy: Sendable, Equatable {
    public enum Caching: Sendable, Equatable {
        /// Served from the cache when fresh; a 2xx answer is stored.
        case cacheable
        /// Every cached list of the route's user is dropped, before and after forwarding.
        case invalidatesUser
        case none
    }

    public var caching: Caching
    public var audit: AuditAction?

    public static func of(_ route: Route) -> Policy {
        switch route {
        case .list: Policy(caching: .cacheable, audit: nil)
        case .create: Policy(caching: .invalidatesUser, audit: .create)
        case .update: Policy(caching: .invalidatesUser, audit: .update)
        case .rotate: Policy(caching: .invalidatesUser, audit: .rotate)
        case .delete: Policy(caching: .invalidatesUser, audit: .delete)
        case .passThrough, .rejected: Policy(caching: .none, audit: nil)
        }
    }
}

/// The mutations the audit log records.
public enum AuditAction: String, Sendable, Codable, CaseIterable {
    case create, update, rotate, delete
}
