/// The policy's other hooks, after `Policy.decide` (receive): Varnish's `vcl_hit`,
/// `vcl_backend_response` (`Policy.storage`, in Storage.swift) and `vcl_backend_error`. Each is a
/// pure function of what it is shown; `ListCache` carries out what it returns.
extension Policy {
    /// What a stored list may do for a request, now.
    public enum Hit: Sendable, Equatable {
        /// Answer with it.
        case serve
        /// Past its freshness: fetch (`X-Cache: MISS`, the stale entry kept for `stale_if_error`).
        case expired
        /// Its credential stands no longer, or was not confirmed by the upstream within
        /// `credential_recheck`: fetch, so the upstream decides.
        case unconfirmed
    }

    /// `vcl_hit`: fresh by the TTL and the upstream's own bound, and its credential standing
    /// (not revoked, refused or expired) and confirmed within `credential_recheck`.
    @inline(__always)
    static func onHit<Prepared>(_ entry: CachedList, credential: Credential, now: Double, settings: ListCache<Prepared>.Settings) -> Hit {
        guard now - entry.storedAt < entry.freshness(ttl: settings.ttl) else { return .expired }
        guard credential.standsAt(now),
              credential.isConfirmed(at: now, within: settings.credentialRecheck, storedAt: entry.storedAt) else { return .unconfirmed }
        return .serve
    }

    /// `vcl_backend_error`: whether a fetch's outcome may be answered by a stored list instead:
    /// only when the upstream failed (unreachable, timed out, or a 5xx; a 4xx is never masked)
    /// and the credential is neither revoked nor refused.
    static func onUpstreamFailure<Prepared>(_ outcome: ListCache<Prepared>.FetchOutcome, credential: Credential) -> Bool {
        if case .response(let response) = outcome, response.status.code < 500 { return false }
        return credential.mayBeServedStale
    }

    /// And which: one the upstream let be served stale, within `stale_if_error` past its freshness.
    static func servesStale<Prepared>(_ entry: CachedList, now: Double, settings: ListCache<Prepared>.Settings) -> Bool {
        entry.mayServeStale && now - entry.storedAt < entry.freshness(ttl: settings.ttl) + settings.staleIfError
    }
}
