import Foundation

/// One user, every spelling: the key under which the proxy invalidates a user's lists and
/// `audit query --user` finds their mutations.
///
/// RFC 5321 makes an address's domain case-insensitive and identity stores commonly fold the
/// whole address, so an upstream may treat `Carol@EXAMPLE.com` and `carol@example.com` as one
/// user. A mutation of either must drop the lists of both: folding too much costs a miss,
/// folding too little serves a list older than the client's own change.
public enum UserIdentity {
    /// Unicode full case folding, then NFC. ASCII (nearly every address) folds without
    /// Foundation.
    public static func folded(_ user: String) -> String {
        if user.utf8.allSatisfy({ $0 < 0x80 }) {
            guard user.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) else { return user }
            return String(decoding: user.utf8.map(\.lowercasedASCII), as: UTF8.self)
        }
        return user.folding(options: [.caseInsensitive], locale: nil).precomposedStringWithCanonicalMapping
    }
}
