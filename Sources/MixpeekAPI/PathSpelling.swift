/// The spellings of one request path: what the client sent, what an RFC 3986 front end makes
/// of it, and what the upstream routes on.
///
/// The proxy forwards a target byte for byte, but the upstream need not see two spellings as
/// two paths: Starlette and FastAPI route on the percent-decoded path, and CDNs and load
/// balancers normalize URLs (RFC 3986 §6.2.2: escapes of unreserved characters decoded, dot
/// segments removed; nginx also merges slashes) before they route. Whatever the proxy does not
/// recognise as an API-keys call must therefore be outside that namespace in every reading.
public enum PathSpelling {
    /// True for a segment of a canonical API-keys path: not empty, not a dot segment, and
    /// no percent-encoded unreserved character (which the SDK never encodes). A broken escape
    /// passes here; decoding the segment refuses it.
    static func isCanonicalSegment(_ segment: UnsafeBufferPointer<UInt8>) -> Bool {
        switch segment.count {
        case 0: return false
        case 1 where segment[0] == UInt8(ascii: "."): return false
        case 2 where segment[0] == UInt8(ascii: ".") && segment[1] == UInt8(ascii: "."): return false
        default: break
        }
        var index = segment.startIndex
        while let percent = segment[index...].firstIndex(of: UInt8(ascii: "%")) {
            if percent + 2 < segment.endIndex, let byte = escapedByte(segment[percent + 1], segment[percent + 2]), isUnreserved(byte) {
                return false
            }
            index = percent + 1
        }
        return true
    }

    /// True when the path, read as sent or with runs of `/` merged and dot segments removed,
    /// each percent-decoded up to three times, with `\` read as `/`, `;` parameters cut off
    /// and ASCII letters folded to lower case, is `/v1/organizations/users/…` with an
    /// `api-keys` segment after the user. Generous on purpose: such a path that is not the
    /// canonical spelling is refused, which costs nothing a real client sends.
    public static func isInAPIKeysNamespace(_ path: some Collection<UInt8>) -> Bool {
        // Without a `%` nothing decodes, and no reading above makes a letter: a path that does
        // not hold both `users` and `api-keys` (in any case) is in no reading of it. The usual
        // pass-through call ends here, without the copies below (2.6 % of its CPU in perf).
        if !path.contains(UInt8(ascii: "%")), !(holdsFolded(path, "users") && holdsFolded(path, "api-keys")) { return false }
        var bytes = Array(path)
        for _ in 0..<4 {
            if namespaceMatches(bytes, resolvingDots: false) || namespaceMatches(bytes, resolvingDots: true) { return true }
            let decoded = decodeEscapes(bytes) { _ in true }
            if decoded == bytes { return false }
            bytes = decoded
        }
        return namespaceMatches(bytes, resolvingDots: false) || namespaceMatches(bytes, resolvingDots: true)
    }

    /// True when `word` (lower case) is among `bytes`, ASCII letters of `bytes` folded to lower case.
    private static func holdsFolded(_ bytes: some Collection<UInt8>, _ word: StaticString) -> Bool {
        let word = UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
        var rest = bytes[...]
        while !rest.isEmpty {
            if rest.lazy.map(\.lowercasedASCII).starts(with: word) { return true }
            rest.removeFirst()
        }
        return false
    }

    /// `resolvingDots` merges empty segments and removes dot segments, as a front end does;
    /// without it every segment counts, as for an upstream that routes on the path as sent.
    private static func namespaceMatches(_ bytes: [UInt8], resolvingDots: Bool) -> Bool {
        let lowered = bytes.map { byte -> UInt8 in byte == UInt8(ascii: "\\") ? UInt8(ascii: "/") : byte.lowercasedASCII }
        var segments: [ArraySlice<UInt8>] = []
        for raw in lowered.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).dropFirst() {
            let segment = raw.prefix { $0 != UInt8(ascii: ";") }
            if resolvingDots {
                if segment.elementsEqual(".".utf8) || segment.isEmpty { continue }
                if segment.elementsEqual("..".utf8) { _ = segments.popLast(); continue }
            }
            segments.append(segment)
        }
        guard segments.count >= 5, segments[0].elementsEqual("v1".utf8), segments[1].elementsEqual("organizations".utf8),
              segments[2].elementsEqual("users".utf8) else { return false }
        return segments[4...].contains { $0.elementsEqual("api-keys".utf8) }
    }

    /// The path as RFC 3986 §6.2.2 normalizes it, and as nginx merges slashes: escapes of
    /// unreserved characters decoded, the hex digits of the others in upper case, dot segments
    /// removed, empty segments (a trailing slash among them) dropped.
    public static func normalized(_ path: some Collection<UInt8>) -> String {
        let decoded = decodeEscapes(Array(path), where: isUnreserved)
        var uppercased: [UInt8] = []
        uppercased.reserveCapacity(decoded.count)
        var pendingHex = 0
        for byte in decoded {
            if pendingHex > 0, byte >= UInt8(ascii: "a"), byte <= UInt8(ascii: "f") {
                uppercased.append(byte - 0x20)
            } else {
                uppercased.append(byte)
            }
            pendingHex = byte == UInt8(ascii: "%") ? 2 : max(0, pendingHex - 1)
        }
        let (segments, _) = resolved(uppercased)
        return "/" + segments.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/")
    }

    /// The segments the upstream routes on: the path normalized as a front end does (unreserved
    /// escapes decoded, dot segments removed, slashes merged), then percent-decoded as Starlette
    /// does before routing, so an encoded `/` separates. `trailingSlash` says whether the
    /// normalized path ended in `/`. Nil when the decoded path is not UTF-8.
    public static func upstreamSegments(_ path: some Collection<UInt8>) -> (segments: [String], trailingSlash: Bool)? {
        let (segments, trailingSlash) = resolved(decodeEscapes(Array(path), where: isUnreserved))
        let joined = Array(segments.joined(separator: [UInt8(ascii: "/")]))
        guard let decoded = String(validating: decodeEscapes(joined) { _ in true }, as: UTF8.self) else { return nil }
        return (decoded.split(separator: "/", omittingEmptySubsequences: true).map(String.init), trailingSlash)
    }

    /// The segments of a path with empty ones dropped and dot segments resolved (RFC 3986
    /// §5.2.4: `..` above the root stays at the root), and whether it ended in `/`, `/.` or `/..`.
    private static func resolved(_ path: [UInt8]) -> (segments: [ArraySlice<UInt8>], trailingSlash: Bool) {
        var segments: [ArraySlice<UInt8>] = []
        var trailingSlash = false
        for segment in path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).dropFirst() {
            trailingSlash = true
            if segment.isEmpty || segment.elementsEqual(".".utf8) { continue }
            if segment.elementsEqual("..".utf8) { _ = segments.popLast(); continue }
            segments.append(segment)
            trailingSlash = false
        }
        return (segments, trailingSlash && !segments.isEmpty)
    }

    /// `bytes` with every well-formed escape whose byte satisfies `decode` replaced by that byte.
    private static func decodeEscapes(_ bytes: [UInt8], where decode: (UInt8) -> Bool) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.count,
               let byte = escapedByte(bytes[index + 1], bytes[index + 2]), decode(byte) {
                out.append(byte)
                index += 3
            } else {
                out.append(bytes[index])
                index += 1
            }
        }
        return out
    }

    private static func escapedByte(_ high: UInt8, _ low: UInt8) -> UInt8? {
        guard let high = hexValue(high), let low = hexValue(low) else { return nil }
        return high << 4 | low
    }

    public static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// RFC 3986 §2.3: ALPHA, DIGIT, `-`, `.`, `_`, `~`.
    static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"): true
        default: false
        }
    }
}

extension UInt8 {
    /// An ASCII capital letter as its small letter; any other byte as it is.
    var lowercasedASCII: UInt8 { self >= 0x41 && self <= 0x5A ? self | 0x20 : self }
}
