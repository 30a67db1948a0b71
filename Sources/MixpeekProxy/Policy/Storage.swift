import NIOHTTP1

/// What the cache may do with a list the upstream answered: the policy's second hook, after
/// `Policy.decide` (Varnish's `vcl_backend_response`).
public enum Storage: Sendable, Equatable {
    /// Keep it. `lifetime` is the upstream's bound on its freshness (`s-maxage`, else
    /// `max-age`), nil when it set none (the TTL alone then bounds it); `mayServeStale` is
    /// false when the upstream forbade serving it stale (`must-revalidate`, `proxy-revalidate`,
    /// or `s-maxage`, which implies `proxy-revalidate` for a shared cache).
    case store(lifetime: Double?, mayServeStale: Bool)
    /// Do not keep it; `reason` is the directive that said so.
    case doNotStore(reason: String)
}

extension Policy {
    /// RFC 9111 as a shared cache: the proxy serves many callers, so an answer marked
    /// `private` (§5.2.2.7), `no-store` (§5.2.2.5) or `no-cache` (§5.2.2.4; the proxy does
    /// not revalidate, so it does not keep what it could only serve after revalidating) is
    /// not kept; `s-maxage` (§5.2.2.10), then `max-age` (§5.2.2.1), bound its freshness, an
    /// invalid or zero one making it stale at once (§4.2.1), so not kept. Qualified forms
    /// (`private="…"`, `no-cache="…"`) are read as the whole directive: keeping too little
    /// costs a miss. With `ignoringDirectives` (`cache_ignore_upstream_directives`) only
    /// `no-store` still counts: it asks that the body never be written to disk.
    public static func storage(of headers: HTTPHeaders, ignoringDirectives: Bool) -> Storage {
        var sMaxAge: Double??
        var maxAge: Double??
        var revalidate = false
        for value in headers["cache-control"] {
            for token in Headers.listTokens(value) {
                let parts = token.split(separator: "=", maxSplits: 1)
                let name = parts.first ?? token[...]
                let argument = parts.count == 2 ? parts[1].trimmingQuotes : nil
                switch name {
                case "no-store": return .doNotStore(reason: "no-store")
                case _ where ignoringDirectives: continue
                case "private": return .doNotStore(reason: "private")
                case "no-cache": return .doNotStore(reason: "no-cache")
                case "s-maxage": sMaxAge = .some(argument.flatMap(Self.deltaSeconds))
                case "max-age": maxAge = .some(argument.flatMap(Self.deltaSeconds))
                case "must-revalidate", "proxy-revalidate": revalidate = true
                default: continue
                }
            }
        }
        if ignoringDirectives { return .store(lifetime: nil, mayServeStale: true) }
        if let sMaxAge {
            guard let seconds = sMaxAge, seconds > 0 else { return .doNotStore(reason: "s-maxage=0") }
            return .store(lifetime: seconds, mayServeStale: false)
        }
        if let maxAge {
            guard let seconds = maxAge, seconds > 0 else { return .doNotStore(reason: "max-age=0") }
            return .store(lifetime: seconds, mayServeStale: !revalidate)
        }
        return .store(lifetime: nil, mayServeStale: !revalidate)
    }

    /// RFC 9111 §1.2.2 `delta-seconds`: digits only; nil for anything else.
    private static func deltaSeconds(_ text: Substring) -> Double? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return Double(text)
    }
}

private extension Substring {
    /// RFC 9110 §5.6.4: a quoted argument (`max-age="60"`) means the same as a bare one.
    var trimmingQuotes: Substring {
        count >= 2 && first == "\"" && last == "\"" ? dropFirst().dropLast() : self
    }
}
