import Foundation
import NIOHTTP1

/// Header rules for a proxy (RFC 9110 §7.6.1): hop-by-hop fields belong to one connection and
/// never cross the proxy in either direction; end-to-end fields pass unchanged.
enum Headers {
    static let via = "1.1 mixpeek-proxy"

    /// `headers` without hop-by-hop fields, the fields `Connection` names, any `Proxy-*`
    /// field, and the framing fields the next hop sets again (`Host`, `Content-Length`; the
    /// length is kept with `keepingLength`, for an answer without a body: HEAD's, a 304).
    static func endToEnd(_ headers: HTTPHeaders, keepingLength: Bool = false) -> HTTPHeaders {
        var named = Set<String>()
        for value in headers["connection"] {
            for token in listTokens(value) { named.insert(token) }
        }
        var kept = HTTPHeaders()
        kept.reserveCapacity(headers.count)
        for (name, value) in headers {
            // Decided on the name's bytes: no lowercased copy of every field's name (two
            // dozen allocations a forwarded request, both ways).
            if isFraming(name, keepingLength: keepingLength) { continue }
            if !named.isEmpty, named.contains(name.lowercased()) { continue }
            kept.add(name: name, value: value)
        }
        return kept
    }

    /// A hop-by-hop field (`Connection`, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`,
    /// `Upgrade`), a `Proxy-*` one (`Proxy-Connection`, `-Authenticate`, `-Authorization`…),
    /// `Host`, or `Content-Length` unless kept.
    static func isFraming(_ name: String, keepingLength: Bool) -> Bool {
        var name = name
        return name.withUTF8 { bytes in
            /// `bytes` begin with `lower` (are all of it when `whole`), in any ASCII case.
            func starts(with lower: StaticString, whole: Bool = true) -> Bool {
                let count = lower.utf8CodeUnitCount
                guard whole ? bytes.count == count : bytes.count >= count else { return false }
                for index in 0..<count where bytes[index] | (bytes[index] &- 0x41 < 26 ? 0x20 : 0) != lower.utf8Start[index] {
                    return false
                }
                return true
            }
            if starts(with: "proxy-", whole: false) { return true }
            switch bytes.count {
            case 2: return starts(with: "te")
            case 4: return starts(with: "host")
            case 7: return starts(with: "trailer") || starts(with: "upgrade")
            case 10: return starts(with: "connection") || starts(with: "keep-alive")
            case 14: return !keepingLength && starts(with: "content-length")
            case 17: return starts(with: "transfer-encoding")
            default: return false
            }
        }
    }

    /// The members of a comma-separated header list, trimmed of spaces and tabs and lowercased
    /// (ASCII only: field names and directives are tokens), empty members dropped.
    static func listTokens(_ value: String) -> [String] {
        value.utf8.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: true).compactMap { member in
            let isBlank = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
            guard let first = member.firstIndex(where: { !isBlank($0) }), let last = member.lastIndex(where: { !isBlank($0) }) else {
                return nil
            }
            return String(decoding: member[first...last].map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self)
        }
    }

    /// A message's fields as they cross the proxy, either way: the end-to-end ones plus our
    /// `Via` (RFC 9110 §7.6.3). `keepingLength` keeps `Content-Length` for an answer without a
    /// body (HEAD, 304), where it is the representation's length.
    static func forwarded(_ headers: HTTPHeaders, keepingLength: Bool = false) -> HTTPHeaders {
        var forwarded = endToEnd(headers, keepingLength: keepingLength)
        forwarded.add(name: "Via", value: via)
        return forwarded
    }
}

extension Headers {
    /// `Location` and `Content-Location` that point at the upstream's origin, rewritten to the
    /// proxy's own, as nginx's `proxy_redirect default` does: a client that follows a redirect
    /// stays on the proxy instead of going around its audit and its cache. References without
    /// a scheme and host, and other origins, are left alone.
    static func rewriteRedirects(_ headers: inout HTTPHeaders, from upstream: Origin, to proxy: Origin) {
        guard headers.contains(name: "location") || headers.contains(name: "content-location") else { return }
        var rewrittenHeaders = HTTPHeaders()
        for (name, value) in headers {
            let lower = name.lowercased()
            let isReference = lower == "location" || lower == "content-location"
            // The field keeps the upstream's spelling; only its value changes.
            rewrittenHeaders.add(name: name, value: isReference ? rewritten(value, from: upstream, to: proxy) ?? value : value)
        }
        headers = rewrittenHeaders
    }

    static func rewritten(_ reference: String, from upstream: Origin, to proxy: Origin) -> String? {
        guard let schemeEnd = reference.range(of: "://") else { return nil }
        let authorityEnd = reference[schemeEnd.upperBound...].firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? reference.endIndex
        guard Origin(url: String(reference[..<authorityEnd])) == upstream else { return nil }
        let rest = reference[authorityEnd...]
        return proxy.serialized + (rest.isEmpty ? "/" : rest)
    }
}

extension HTTPHeaders {
    /// True when `Cache-Control` carries `directive` (case-insensitive, arguments ignored).
    func cacheControl(contains directive: String) -> Bool {
        self["cache-control"].contains { value in
            Headers.listTokens(value).contains { token in
                (token.split(separator: "=", maxSplits: 1).first ?? token[...]) == directive
            }
        }
    }

    /// True when the client asks for a fresh answer: `no-cache` or `max-age=0`.
    var demandsRefresh: Bool {
        // One pass finds whether there is a field to read at all (a hit's request has none).
        guard contains(where: { name, _ in
            name.utf8.count == 13 && name.lowercased() == "cache-control" || name.utf8.count == 6 && name.lowercased() == "pragma"
        }) else { return false }
        return cacheControl(contains: "no-cache") || self["cache-control"].contains { value in
            Headers.listTokens(value).contains { $0 == "max-age=0" }
        } || self["pragma"].contains { $0.lowercased().contains("no-cache") }
    }
}
