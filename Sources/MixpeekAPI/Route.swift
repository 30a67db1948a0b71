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

    /// The route of a target's bytes. Works on the bytes as the upstream does (a separator is
    /// a byte, segments compare byte for byte) and makes Strings only of the user and key.
    private static func parse(method: HTTPMethod, target: UnsafeBufferPointer<UInt8>) -> Route {
        let questionMark = target.firstIndex(of: UInt8(ascii: "?"))
        let path = UnsafeBufferPointer(rebasing: target[..<(questionMark ?? target.endIndex)])
        guard path.starts(with: usersPrefix) else { return .passThrough }
        // Segment ranges; the first is the empty one before the leading `/`.
        var segments: [Range<Int>] = []
        segments.reserveCapacity(9)
        var start = 0
        for index in path.indices where path[index] == UInt8(ascii: "/") {
            segments.append(start..<index)
            start = index + 1
        }
        segments.append(start..<path.endIndex)
        func segment(_ number: Int) -> UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(rebasing: path[segments[number]]) }
        guard segments.count >= 6, segment(5).elementsEqual("api-keys".utf8) else { return .passThrough }
        // One trailing slash names the same resource; the target still goes upstream as sent.
        if segments.count > 6, segments.last!.isEmpty { segments.removeLast() }
        if segments.count > 8 { return .rejected(.unknownPath) }
        if segments.dropFirst().contains(where: { $0.isEmpty }) { return .rejected(.emptySegment) }
        guard let user = decodeSegment(segment(4)) else { return .rejected(.invalidSegment("user_email")) }
        var key: String?
        if segments.count >= 7 {
            guard let decoded = decodeSegment(segment(6)) else { return .rejected(.invalidSegment("key_name")) }
            key = decoded
        }
        let rotate = segments.count == 8 && segment(7).elementsEqual("rotate".utf8)
        switch (segments.count, key, method) {
        case (6, _, .GET):
            let query = questionMark.map { Substring(decoding: UnsafeBufferPointer(rebasing: target[($0 + 1)...]), as: UTF8.self) }
            return .list(user: user, includeRevoked: includeRevoked(in: query))
        case (6, _, .POST): return .create(user: user)
        case (6, _, _): return .rejected(.methodNotAllowed(allowed: "GET, POST"))
        case (7, let key?, .PATCH): return .update(user: user, key: key)
        case (7, let key?, .DELETE): return .delete(user: user, key: key)
        case (7, _, _): return .rejected(.methodNotAllowed(allowed: "PATCH, DELETE"))
        case (8, let key?, .POST) where rotate: return .rotate(user: user, key: key)
        case (8, _, _) where rotate: return .rejected(.methodNotAllowed(allowed: "POST"))
        default: return .rejected(.unknownPath)
        }
    }

    /// Every API-keys path starts so; segments are compared as bytes, as the upstream does.
    private static let usersPrefix = "/v1/organizations/users/".utf8

    /// Longest decoded user_email or key_name accepted.
    public static let maxSegmentBytes = 512

    /// Percent-decodes one path segment; nil for a bad escape, bytes that are not UTF-8,
    /// control characters, or a value longer than `maxSegmentBytes`.
    static func decodeSegment(_ segment: Substring) -> String? {
        var segment = segment
        return segment.withUTF8 { decodeSegment($0) }
    }

    static func decodeSegment(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        // Printable ASCII without `%` decodes to itself and holds no control character.
        if (1...maxSegmentBytes).contains(bytes.count), bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "%") }) {
            return String(decoding: bytes, as: UTF8.self)
        }
        guard let decoded = percentDecode(bytes, plusIsSpace: false),
              (1...maxSegmentBytes).contains(decoded.utf8.count),
              !decoded.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
        else { return nil }
        return decoded
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
    static func split(_ text: Substring, on separator: Unicode.Scalar, maxSplits: Int = .max) -> [Substring] {
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

    static func percentDecode(_ text: Substring, plusIsSpace: Bool) -> String? {
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
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
                bytes.append(high << 4 | low)
            case UInt8(ascii: "+") where plusIsSpace:
                bytes.append(UInt8(ascii: " "))
            default:
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// Why an API-keys path is refused by the proxy itself.
public enum RouteRejection: Equatable, Sendable {
    case methodNotAllowed(allowed: String)
    case emptySegment
    case invalidSegment(String)
    case unknownPath

    public var message: String {
        switch self {
        case .methodNotAllowed(let allowed): "method not allowed here; allowed: \(allowed)"
        case .emptySegment: "empty path segment in an API-keys path"
        case .invalidSegment(let name): "\(name) is not valid: bad percent-encoding, not UTF-8, a control character, or longer than \(Route.maxSegmentBytes) bytes"
        case .unknownPath: "no such API-keys operation"
        }
    }
}
