import Foundation
import NIOHTTP1

/// Header rules for a proxy (RFC 9110 §7.6.1): hop-by-hop fields belong to one connection and
/// never cross the proxy in either direction; end-to-end fields pass unchanged.
enum Headers {
    static let via = "1.1 mixpeek-proxy"

    private static let hopByHop: Set<String> = [
        "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-connection", "proxy-authenticate", "proxy-authorization",
    ]

    /// `headers` without hop-by-hop fields, the fields `Connection` names, any `Proxy-*`
    /// field, and the framing fields the next hop sets again (`Host`, `Content-Length`).
    static func endToEnd(_ headers: HTTPHeaders) -> HTTPHeaders {
        var named = Set<String>()
        for value in headers["connection"] {
            for token in value.split(separator: ",") {
                named.insert(token.trimmingCharacters(in: .whitespaces).lowercased())
            }
        }
        var kept = HTTPHeaders()
        kept.reserveCapacity(headers.count)
        for (name, value) in headers {
            let lower = name.lowercased()
            if hopByHop.contains(lower) || named.contains(lower) || lower.hasPrefix("proxy-")
                || lower == "host" || lower == "content-length" {
                continue
            }
            kept.add(name: name, value: value)
        }
        return kept
    }

    /// Headers for the upstream request: end-to-end fields plus our `Via`.
    static func forUpstream(_ headers: HTTPHeaders) -> HTTPHeaders {
        var forwarded = endToEnd(headers)
        forwarded.add(name: "via", value: via)
        return forwarded
    }

    /// Headers for the client: the upstream's end-to-end fields plus our `Via`.
    static func forClient(_ headers: HTTPHeaders) -> HTTPHeaders {
        var returned = endToEnd(headers)
        returned.add(name: "via", value: via)
        return returned
    }
}

extension HTTPHeaders {
    /// True when `Cache-Control` carries `directive` (case-insensitive, arguments ignored).
    func cacheControl(contains directive: String) -> Bool {
        self["cache-control"].contains { value in
            value.split(separator: ",").contains { part in
                let token = part.split(separator: "=", maxSplits: 1).first ?? part[...]
                return token.trimmingCharacters(in: .whitespaces).lowercased() == directive
            }
        }
    }

    /// True when the client asks for a fresh answer: `no-cache` or `max-age=0`.
    var demandsRefresh: Bool {
        cacheControl(contains: "no-cache") || self["cache-control"].contains { value in
            value.lowercased().split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces) == "max-age=0" }
        } || self["pragma"].contains { $0.lowercased().contains("no-cache") }
    }
}
