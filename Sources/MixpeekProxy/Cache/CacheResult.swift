/// What the cache did for a request: the one value the request log writes (`cache=`),
/// `/_proxy/metrics` counts (`mixpeek_proxy_requests_total{cache}`) and a list's answer sends
/// (`X-Cache`), so that the three never disagree. Nil for a call the cache has no part in
/// (pass-through, a mutation, a refusal): no `X-Cache`, `-` in the log, `none` in the metric.
public enum CacheResult: String, Sendable, CaseIterable {
    /// Answered from the cache, fresh.
    case hit = "HIT"
    /// Fetched from the upstream for this request.
    case miss = "MISS"
    /// Answered from the cache past its TTL because the upstream failed (`stale_if_error`).
    case stale = "STALE"
    /// Answered from another request's upstream fetch, which this one waited on.
    case coalesced = "COALESCED"
    /// A list the cache does not key (another query), forwarded and never stored.
    case bypass = "BYPASS"
}
