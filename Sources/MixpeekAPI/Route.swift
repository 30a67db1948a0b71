import NIOHTTP1

/// What a request to the API-keys API is, decided once from its method and target.
///
/// The cache, the audit log and the fake upstream all key off this one type. `user` and
/// `key` are percent-decoded (a `+` in a path stays a `+`); the target itself is always
/// forwarded exactly as the client sent it.
public enum Route: Equatable, Sendable {
    case create(user: String)
    /// `includeRevoked` is nil when the query is not a plain `include_revoked` flag (an
    /// unparseable value, a repeated flag or another parameter): such a list is forwarded
    /// uncached and the upstream judges the query.
    case list(user: String, includeRevoked: Bool?)
    case update(user: String, key: String)
    case rotate(user: String, key: String)
    case delete(user: String, key: String)
    /// Any other path: forwarded unchanged, neither cached nor audited.
    case passThrough
    /// An API-keys path the proxy refuses rather than forward unaudited.
    case rejected(RouteRejection)

    /// The user a create, list, update, rotate or delete is about.
    public var user: String? {
        switch self {
        case .create(let user), .list(let user, _), .update(let user, _), .rotate(let user, _), .delete(let user, _): user
        case .passThrough, .rejected: nil
        }
    }

    /// The key a mutation names (a create's name lives in its body).
    public var key: String? {
        switch self {
        case .update(_, let key), .rotate(_, let key), .delete(_, let key): key
        case .create, .list, .passThrough, .rejected: nil
        }
    }

    public init(method: HTTPMethod, target: String) {
        var target = target
        self = target.withUTF8 { Self.parse(method: method, target: $0) }
    }

    /// The route of the call named by a user and what follows its `api-keys` segment: nothing
    /// (`key` nil), a key, or a key and an operation segment (`rotate`). Nil for an operation
    /// the API does not have. `query` is what follows the `?`, if anything did. The proxy
    /// reaches it from the canonical spelling, the fake from the path as the upstream decodes it.
    public init?(method: HTTPMethod, user: String, key: String?, operation: Substring?, query: Substring?) {
        // Nested switches rather than one over a (key, operation, method) tuple, which would be
        // built and destroyed for every request.
        guard let key else {
            switch method {
            // HEAD is GET without the body (RFC 9110 §9.3.2): the same list, served the same way.
            case .GET, .HEAD: self = .list(user: user, includeRevoked: Self.includeRevoked(in: query))
            case .POST: self = .create(user: user)
            default: self = .rejected(.methodNotAllowed(allowed: "GET, HEAD, POST"))
            }
            return
        }
        guard let operation else {
            switch method {
            case .PATCH: self = .update(user: user, key: key)
            case .DELETE: self = .delete(user: user, key: key)
            default: self = .rejected(.methodNotAllowed(allowed: "PATCH, DELETE"))
            }
            return
        }
        guard operation == "rotate" else { return nil }
        switch method {
        case .POST: self = .rotate(user: user, key: key)
        default: self = .rejected(.methodNotAllowed(allowed: "POST"))
        }
    }

    /// The route of a target's bytes. The canonical spelling (what the SDK sends) is read
    /// byte-wise and makes Strings only of the user and key. Any other spelling that the
    /// upstream, or a front end before it, may route into the API-keys namespace is refused:
    /// the proxy must never forward a mutation it did not recognise, audit and invalidate.
    private static func parse(method: HTTPMethod, target: UnsafeBufferPointer<UInt8>) -> Route {
        let questionMark = target.firstIndex(of: UInt8(ascii: "?"))
        let path = UnsafeBufferPointer(rebasing: target[..<(questionMark ?? target.endIndex)])
        if let route = canonical(method: method, path: path, target: target, questionMark: questionMark) {
            return route
        }
        guard PathSpelling.isInAPIKeysNamespace(path) else { return .passThrough }
        let normalized = PathSpelling.normalized(path)
        if normalized != String(decoding: path, as: UTF8.self), canonical(method: method, path: normalized) != nil {
            return .rejected(.nonCanonical(suggestion: normalized))
        }
        return .rejected(.nonCanonical(suggestion: nil))
    }

    private static func canonical(method: HTTPMethod, path: String) -> Route? {
        var path = path
        return path.withUTF8 { canonical(method: method, path: $0, target: $0, questionMark: nil) }
    }

    /// The route of a canonically spelled API-keys path, or nil when `path` is not one: the
    /// literal segments exactly as the API spells them, no empty or dot segment (so no trailing
    /// slash), no percent-encoded unreserved character, and no `/` in a decoded user or key.
    /// An API-keys path of the canonical form with a user or key that cannot be decoded, or an
    /// operation the API does not have, is a route too: refused, never forwarded.
    private static func canonical(method: HTTPMethod, path: UnsafeBufferPointer<UInt8>,
                                  target: UnsafeBufferPointer<UInt8>, questionMark: Int?) -> Route? {
        guard bytes(path, startWith: usersPrefix) else { return nil }
        // The segments after the prefix, read in place (no array per request): 4 is the user,
        // 5 `api-keys`, 6 the key, 7 the operation; `count` counts the prefix's four too
        // (the empty one before the leading `/`, `v1`, `organizations`, `users`).
        var named = (user: 0..<0, apiKeys: 0..<0, key: 0..<0, operation: 0..<0)
        var count = 4
        var start = usersPrefix.utf8CodeUnitCount
        while true {
            let end = path[start...].firstIndex(of: UInt8(ascii: "/")) ?? path.endIndex
            let range = start..<end
            guard PathSpelling.isCanonicalSegment(UnsafeBufferPointer(rebasing: path[range])) else { return nil }
            switch count {
            case 4: named.user = range
            case 5: named.apiKeys = range
            case 6: named.key = range
            case 7: named.operation = range
            default: break
            }
            count += 1
            if end == path.endIndex { break }
            start = end + 1
        }
        func segment(_ range: Range<Int>) -> UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(rebasing: path[range]) }
        guard count >= 6, bytes(segment(named.apiKeys), equal: "api-keys") else { return nil }
        guard let user = decodeSegment(segment(named.user)) else { return .rejected(.invalidSegment("user_email")) }
        var key: String?
        if count >= 7 {
            guard let decoded = decodeSegment(segment(named.key)) else { return .rejected(.invalidSegment("key_name")) }
            key = decoded
        }
        // A `/` in a decoded name is a separator to an upstream that routes on the decoded path.
        if containsSlash(user) || key.map(containsSlash) == true { return nil }
        if count > 8 { return .rejected(.unknownPath) }
        let operation = count == 8 ? Substring(decoding: segment(named.operation), as: UTF8.self) : nil
        let query = questionMark.map { Substring(decoding: UnsafeBufferPointer(rebasing: target[($0 + 1)...]), as: UTF8.self) }
        return Route(method: method, user: user, key: key, operation: operation, query: query) ?? .rejected(.unknownPath)
    }

    private static func containsSlash(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { $0.contains(UInt8(ascii: "/")) }
    }

    /// Every API-keys path starts so; segments are compared as bytes, as the upstream does.
    private static let usersPrefix: StaticString = "/v1/organizations/users/"

    /// Whether `bytes` begins with `prefix`'s bytes.
    private static func bytes(_ bytes: UnsafeBufferPointer<UInt8>, startWith prefix: StaticString) -> Bool {
        prefix.withUTF8Buffer { prefix in
            bytes.count >= prefix.count && UnsafeBufferPointer(rebasing: bytes[..<prefix.count]).elementsEqual(prefix)
        }
    }

    /// Whether `bytes` are `literal`'s bytes.
    private static func bytes(_ bytes: UnsafeBufferPointer<UInt8>, equal literal: StaticString) -> Bool {
        literal.withUTF8Buffer { bytes.elementsEqual($0) }
    }

    /// Longest decoded user_email or key_name accepted.
    public static let maxSegmentBytes = 512

    /// Percent-decodes one path segment; nil for a bad escape, bytes that are not UTF-8,
    /// control characters, or a value longer than `maxSegmentBytes`.
    static func decodeSegment(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        // Printable ASCII without `%` decodes to itself and holds no control character.
        if (1...maxSegmentBytes).contains(bytes.count), bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "%") }) {
            return String(decoding: bytes, as: UTF8.self)
        }
        guard let decoded = percentDecode(bytes, plusIsSpace: false), isValidName(decoded) else { return nil }
        return decoded
    }

    /// A decoded user_email or key_name the API accepts: 1 to `maxSegmentBytes` bytes, no
    /// control character. The proxy checks it after decoding a segment, the fake after routing.
    public static func isValidName(_ name: String) -> Bool {
        (1...maxSegmentBytes).contains(name.utf8.count)
            && !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
    }

    /// `include_revoked` read the way the upstream (FastAPI and pydantic) reads a boolean.
    static func includeRevoked(in query: Substring?) -> Bool? {
        guard let query, !query.isEmpty else { return false }
        var value: Bool?
        for pair in split(query, on: "&") where !pair.isEmpty {
            let parts = split(pair, on: "=", maxSplits: 1)
            guard percentDecode(parts[0], plusIsSpace: true) == "include_revoked", value == nil else { return nil }
            let raw = parts.count == 2 ? percentDecode(parts[1], plusIsSpace: true) : ""
            switch raw?.lowercased() {
            case "true", "1", "yes", "on", "t", "y": value = true
            case "false", "0", "no", "off", "f", "n": value = false
            default: return nil
            }
        }
        return value ?? false
    }

    /// Splits at an ASCII separator byte, as the upstream does. Split as Characters, a `/`, `?`,
    /// `&` or `=` followed by a combining mark is one grapheme and would separate nothing, so
    /// the proxy would see another route than the upstream (an unaudited mutation).
    public static func split(_ text: Substring, on separator: Unicode.Scalar, maxSplits: Int = .max) -> [Substring] {
        let byte = UInt8(ascii: separator)
        var parts: [Substring] = []
        parts.reserveCapacity(8)
        var start = text.utf8.startIndex
        var index = start
        while index < text.utf8.endIndex, parts.count < maxSplits {
            if text.utf8[index] == byte {
                parts.append(text[start..<index])
                start = text.utf8.index(after: index)
            }
            index = text.utf8.index(after: index)
        }
        parts.append(text[start...])
        return parts
    }

    public static func percentDecode(_ text: Substring, plusIsSpace: Bool) -> String? {
        var text = text
        return text.withUTF8 { percentDecode($0, plusIsSpace: plusIsSpace) }
    }

    static func percentDecode(_ text: UnsafeBufferPointer<UInt8>, plusIsSpace: Bool) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.count)
        var iterator = text.makeIterator()
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "%"):
                guard let high = iterator.next().flatMap(PathSpelling.hexValue), let low = iterator.next().flatMap(PathSpelling.hexValue) else { return nil }
                bytes.append(high << 4 | low)
            case UInt8(ascii: "+") where plusIsSpace:
                bytes.append(UInt8(ascii: " "))
            default:
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}

/// Why an API-keys path is refused by the proxy itself.
public enum RouteRejection: Equatable, Sendable {
    case methodNotAllowed(allowed: String)
    /// A spelling of an API-keys path other than the canonical one; `suggestion` is the
    /// canonical spelling when RFC 3986 normalization finds one.
    case nonCanonical(suggestion: String?)
    case invalidSegment(String)
    case unknownPath

    public var message: String {
        switch self {
        case .methodNotAllowed(let allowed): "method not allowed here; allowed: \(allowed)"
        case .nonCanonical(let suggestion?):
            "this API-keys path is not spelled canonically (percent-encoded letters, digits or -._~, dot or empty segments, a trailing slash, or a / inside a name); send \(suggestion) instead"
        case .nonCanonical(nil):
            "this API-keys path is not spelled canonically; send /v1/organizations/users/{user_email}/api-keys[/{key_name}[/rotate]] with each name percent-encoded once (letters, digits and -._~ as themselves, / as %2F is not accepted) and no dot or empty segments or trailing slash"
        case .invalidSegment(let name): "\(name) is not valid: bad percent-encoding, not UTF-8, a control character, or longer than \(Route.maxSegmentBytes) bytes"
        case .unknownPath: "no such API-keys operation"
        }
    }
}
