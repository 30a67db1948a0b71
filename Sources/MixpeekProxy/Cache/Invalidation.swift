/// How a mutation makes every cached list of its user go away. In process today: `ListCache`.
///
/// What a second backend (several proxies sharing PostgreSQL, invalidating each other) must
/// guarantee, because `Proxy.mutate` calls it before forwarding and again after the answer:
/// - when `invalidate(user:)` returns, no list of any spelling of `user` (`UserIdentity`;
///   everyone's when nil), for any credential, is served from any tier it covers, and no
///   fetch that was in flight is stored or handed to a request that arrives afterwards;
/// - it does not throw: a backend that cannot reach its peers must stop serving the affected
///   lists (or everything) rather than return with a stale list still servable.
public protocol Invalidation: Sendable {
    func invalidate(user: String?) async
    /// The same, without suspending: on return nothing stale is served, though a store's
    /// delete may still be on its way to disk.
    func drop(user: String?)
}
