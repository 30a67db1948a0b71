import Crypto
import NIOCore
import NIOHTTP1

/// The validators of cached lists (RFC 9110 §8.8.3, §13.1.2): the `ETag` each stored list
/// carries and how a client's `If-None-Match` is held against it.
enum Validators {
    /// Tags the proxy mints start so (inside the quotes): a list fetched for the cache never
    /// carries the client's conditions upstream, and these could mean nothing there anyway.
    static let mintedPrefix = "mpx-"

    /// A strong tag for a list the upstream sent without one: a hash of the credential's
    /// fingerprint and the body, so two credentials never share a tag even for the same bytes,
    /// and a list that changes (a mutation's invalidation, then a new fetch) changes its tag.
    static func mint(credential: String, body: ByteBuffer) -> String {
        var hasher = SHA256()
        hasher.update(data: Array(credential.utf8))
        hasher.update(data: [0])
        body.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
        return "\"" + mintedPrefix + hasher.finalize().hex.prefix(32) + "\""
    }

    /// True when `If-None-Match` (every line of it) names `etag` or is `*`: the client's copy
    /// is current and a `304` answers. Weak comparison, as RFC 9110 §13.1.2 says for this field.
    static func ifNoneMatch(_ headers: HTTPHeaders, matches etag: String) -> Bool {
        // Looked for without making an array: a hit's request usually has none.
        guard headers.contains(name: "if-none-match") else { return false }
        let current = opaque(etag[...])
        for line in headers["if-none-match"] {
            var rest = line[...]
            while true {
                rest = rest.drop { $0 == " " || $0 == "\t" || $0 == "," }
                if rest.isEmpty { break }
                if rest.first == "*" { return true }
                if rest.hasPrefix("W/") { rest = rest.dropFirst(2) }
                guard rest.first == "\"", let close = rest.dropFirst().firstIndex(of: "\"") else { break }
                if rest[rest.index(after: rest.startIndex)..<close] == current { return true }
                rest = rest[rest.index(after: close)...]
            }
        }
        return false
    }

    /// The opaque part of an entity tag: without `W/` and the quotes.
    private static func opaque(_ tag: Substring) -> Substring {
        var tag = tag
        if tag.hasPrefix("W/") { tag = tag.dropFirst(2) }
        if tag.count >= 2, tag.first == "\"", tag.last == "\"" { return tag.dropFirst().dropLast() }
        return tag
    }
}
