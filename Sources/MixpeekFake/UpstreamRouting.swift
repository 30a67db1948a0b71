import MixpeekAPI
import MixpeekHTTP
import NIOHTTP1

/// What the upstream makes of a request's target, as the real one behind its front end
/// does: the path normalized (RFC 3986: unreserved escapes decoded, dot segments removed,
/// slashes merged), then percent-decoded and routed on its segments (Starlette), a trailing
/// slash answered with a redirect to the path without it (Starlette's `redirect_slashes`).
///
/// So a spelling the proxy might forward without recognising it reaches the fake's API-keys
/// operations, and the tests exercise that risk instead of hiding it.
enum UpstreamRouting: Equatable {
    case route(Route)
    /// `307` to this absolute URL, built from the request's `Host`, as Starlette builds it.
    case redirect(String)
    case notFound

    init(_ request: HTTPRequest) {
        let target = request.target
        let questionMark = target.firstIndex(of: "?")
        let path = target[..<(questionMark ?? target.endIndex)]
        let query = questionMark.map { target[target.index(after: $0)...] }
        guard let (segments, trailingSlash) = PathSpelling.upstreamSegments(path.utf8),
              (5...7).contains(segments.count), segments[0] == "v1", segments[1] == "organizations", segments[2] == "users",
              segments[4] == "api-keys"
        else {
            self = .notFound
            return
        }
        let user = segments[3]
        let key = segments.count >= 6 ? segments[5] : nil
        let operation = segments.count == 7 ? Substring(segments[6]) : nil
        guard Route.isValidName(user), key.map(Route.isValidName) ?? true,
              let route = Route(method: request.method, user: user, key: key, operation: operation, query: query)
        else {
            self = .notFound
            return
        }
        if trailingSlash {
            let host = request.headers.first(name: "host") ?? "localhost"
            let withoutSlash = path.hasSuffix("/") ? path.dropLast() : path
            self = .redirect("http://\(host)\(withoutSlash)\(query.map { "?\($0)" } ?? "")")
            return
        }
        self = .route(route)
    }
}
