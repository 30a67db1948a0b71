/// Whether this proxy's cache may answer (and keep) lists of a user right now. Nil in a lone
/// proxy, whose cache always may; `GroupMember` in a group, which closes it while the proxy
/// cannot be sure it has heard of every mutation, and for a user with a mutation in progress
/// anywhere in the group.
public protocol ListGate: Sendable {
    /// Checked on the event loop for every hit: must not block or allocate in the common case.
    func admits(user: String) -> Bool
}
