/// A text compared and hashed as its UTF-8 bytes.
///
/// Swift's `String` is equal to another that is canonically equivalent (`"é"` and
/// `"e\u{301}"`), and hashes alike. A bearer token, a user in a path and a key name are bytes
/// to the upstream: two tokens that differ in one byte are two credentials, and must never
/// share a cached list, a memoised fingerprint or an audit caller. Every table keyed by one of
/// them is keyed by this. The only folding the proxy does is `UserIdentity.folded`, on purpose.
public struct ExactText: Hashable, Sendable, CustomStringConvertible {
    public let string: String

    @inline(__always)
    public init(_ string: String) {
        self.string = string
    }

    public var description: String { string }

    @inline(__always)
    public static func == (lhs: ExactText, rhs: ExactText) -> Bool {
        lhs.string.utf8.count == rhs.string.utf8.count && lhs.string.utf8.elementsEqual(rhs.string.utf8)
    }

    @inline(__always)
    public func hash(into hasher: inout Hasher) {
        var string = string
        string.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }

    /// Whether two texts are the same bytes (not merely canonically equivalent).
    @inline(__always)
    public static func same(_ lhs: String, _ rhs: String) -> Bool {
        ExactText(lhs) == ExactText(rhs)
    }
}
