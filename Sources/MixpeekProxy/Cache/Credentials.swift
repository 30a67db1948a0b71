import Crypto
import Foundation
import MixpeekAPI
import Synchronization

/// One `Authorization` value as the cache knows it: the fingerprint its lists are kept under,
/// the SHA-256 of its bearer secret (which Mixpeek calls the key's `key_hash`), and whether a
/// list may be answered from cache to it now. Made once per value and memoised, so a hit only
/// loads five atomics.
///
/// Where "a revoked key reads nothing from the cache" lives (CONTRACT §4): a credential is
/// answered from cache only while it is not revoked (a delete, a rotate or an update to a
/// non-active status answered through the proxy, kept across restarts), not refused (the
/// upstream's last word to it was 401, or 403 to a list), not past its key's `expires_at`, and
/// confirmed by a 2xx from the upstream within `credential_recheck` seconds. Otherwise its list
/// is forwarded, so the upstream decides.
public final class Credential: Sendable {
    /// SHA-256 of the whole `Authorization` value: the credential part of a cache key.
    public let fingerprint: String
    /// SHA-256 (lowercase hex) of the bearer secret: its key's `key_hash`; nil without one.
    public let secretHash: String?
    private let revokedFlag = Atomic<Bool>(false)
    private let refusedFlag = Atomic<Bool>(false)
    /// Seconds since 1970, as the bits of a Double: the last 2xx the upstream gave it.
    private let confirmedBits = Atomic<UInt64>(0)
    /// Its key's `expires_at`, as the bits of a Double (infinity: none known).
    private let expiresBits = Atomic<UInt64>(Double.infinity.bitPattern)
    /// When a confirmation was last demanded (the group heard a mutation of its key's owner):
    /// only a confirmation after it counts.
    private let demandedBits = Atomic<UInt64>(0)

    init(authorization: String) {
        fingerprint = SHA256.hash(data: Data(authorization.utf8)).hex
        secretHash = Self.bearerSecret(authorization).map { SHA256.hash(data: Data($0.utf8)).hex }
    }

    /// The secret of `Bearer <secret>` (the scheme in any case), else nil.
    static func bearerSecret(_ authorization: String) -> Substring? {
        guard authorization.utf8.count > 7, authorization.utf8.prefix(7).map({ $0 | 0x20 }).elementsEqual("bearer ".utf8) else { return nil }
        let secret = authorization.dropFirst(7).drop { $0 == " " }
        return secret.isEmpty ? nil : secret
    }

    /// Whether its lists may be answered from the cache at `now` at all: not revoked, not
    /// refused, not expired.
    @inline(__always)
    func standsAt(_ now: Double) -> Bool {
        !revokedFlag.load(ordering: .relaxed) && !refusedFlag.load(ordering: .relaxed)
            && now < Double(bitPattern: expiresBits.load(ordering: .relaxed))
    }

    /// Whether the upstream confirmed it within `recheck` seconds of `now`: by a 2xx to it, or
    /// by the fetch of the entry stored at `storedAt` (which was one).
    @inline(__always)
    func isConfirmed(at now: Double, within recheck: Double, storedAt: Double) -> Bool {
        let confirmed = max(Double(bitPattern: confirmedBits.load(ordering: .relaxed)), storedAt)
        return now - confirmed < recheck && confirmed > Double(bitPattern: demandedBits.load(ordering: .relaxed))
    }

    /// Its next list is forwarded: what was confirmed before `now` no longer counts.
    func demandConfirmation(at now: Double) {
        demandedBits.store(now.bitPattern, ordering: .relaxed)
    }

    /// Whether a cached list may be served to it STALE when the upstream fails.
    var mayBeServedStale: Bool { !isShutOut }

    /// Revoked or refused: nothing from the cache, not even STALE.
    public var isShutOut: Bool { revokedFlag.load(ordering: .relaxed) || refusedFlag.load(ordering: .relaxed) }
    public var isRevoked: Bool { revokedFlag.load(ordering: .relaxed) }

    /// The upstream answered it 2xx: its refusal, if any, no longer stands.
    func confirmed(at now: Double) {
        confirmedBits.store(now.bitPattern, ordering: .relaxed)
        refusedFlag.store(false, ordering: .relaxed)
    }

    func refused() { refusedFlag.store(true, ordering: .relaxed) }
    func revoke() { revokedFlag.store(true, ordering: .relaxed) }
    func expires(at time: Double?) { expiresBits.store((time ?? .infinity).bitPattern, ordering: .relaxed) }
}

/// A key as the upstream described it in a list, create, rotate or update answer.
public struct KeyIdentity: Sendable, Equatable {
    public var keyHash: String
    public var keyID: String?
    public var keyPrefix: String?
    public var name: String
    public var user: String
    public var status: String?
    /// `expires_at`, in seconds since 1970.
    public var expiresAt: Double?

    /// Every key in a list body (`{"keys": [...]}`), of `user`.
    static func fromList(_ object: [String: Any], user: String) -> [KeyIdentity] {
        ((object["keys"] as? [[String: Any]]) ?? []).compactMap { KeyIdentity($0, user: user) }
    }

    /// A key object (`APIKeyModel`, `APIKeyCreateResponse`); nil without a `key_hash` and a name.
    init?(_ object: [String: Any], user: String) {
        guard let hash = object["key_hash"] as? String, hash.utf8.count == 64, let name = object["name"] as? String else { return nil }
        keyHash = hash.lowercased()
        keyID = object["key_id"] as? String
        keyPrefix = object["key_prefix"] as? String
        self.name = name
        self.user = user
        status = object["status"] as? String
        expiresAt = (object["expires_at"] as? String).flatMap(Timestamp.parse)?.timeIntervalSince1970
    }

    var isActive: Bool { status == nil || status == "active" }
}

/// A key revoked through this proxy: the status page lists the recent ones.
public struct Revocation: Sendable, Equatable {
    public var keyHash: String
    public var keyPrefix: String?
    public var name: String
    public var user: String
    /// `delete`, `rotate` or `update`.
    public var via: String
    /// Seconds since 1970.
    public var at: Double
}

/// What the cache knows of credentials and keys, under the cache's lock: the memo of
/// `Credential`s by `Authorization` value (bytes), the keys learned from the upstream's answers
/// by `key_hash` (and by user and name, to find the key a delete or rotate names), and the
/// secrets revoked through the proxy. Bounded: at most `capacity` credentials and
/// `identityCapacity` keys (about 300 bytes each).
struct CredentialBook {
    var credentials: BoundedMemo<Credential>
    private(set) var identities: [String: KeyIdentity] = [:]
    private var byName: [String: Set<String>] = [:]
    /// Secret hashes of the keys of each user (folded).
    private var byOwner: [String: Set<String>] = [:]
    private(set) var revoked: Set<String> = []
    private(set) var recent: [Revocation] = []
    /// The UTF-8 bytes of the names and users of `identities`.
    private var namesBytes = 0
    let identityCapacity: Int

    init(capacity: Int = 10_000, identityCapacity: Int = 100_000) {
        credentials = BoundedMemo(capacity: capacity)
        self.identityCapacity = identityCapacity
    }

    private static func nameKey(user: String, name: String) -> String {
        UserIdentity.folded(user) + "\u{0}" + name
    }

    /// The credential for `authorization`, made (and checked against the revocations) once.
    mutating func credential(for authorization: String, made: Credential) -> Credential {
        if let known = credentials[authorization] { return known }
        if let hash = made.secretHash {
            if revoked.contains(hash) { made.revoke() }
            made.expires(at: identities[hash]?.expiresAt)
        }
        return credentials.value(for: authorization) { _ in made }
    }

    /// Notes what the upstream said of a key: its expiry and status reach the credentials
    /// bearing its secret.
    mutating func learn(_ identity: KeyIdentity) {
        if identities[identity.keyHash] == nil, identities.count >= identityCapacity, let evicted = identities.first {
            identities.removeValue(forKey: evicted.key)
            namesBytes -= evicted.value.name.utf8.count + evicted.value.user.utf8.count
            forgetIndexes(of: evicted.value)
        }
        if let old = identities.updateValue(identity, forKey: identity.keyHash) {
            namesBytes -= old.name.utf8.count + old.user.utf8.count
        }
        namesBytes += identity.name.utf8.count + identity.user.utf8.count
        byName[Self.nameKey(user: identity.user, name: identity.name), default: []].insert(identity.keyHash)
        byOwner[UserIdentity.folded(identity.user), default: []].insert(identity.keyHash)
        credentials.forEach { credential in
            if credential.secretHash == identity.keyHash { credential.expires(at: identity.expiresAt) }
        }
    }

    /// Drops a forgotten key from the indexes by name and by owner, so they stay as bounded as
    /// `identities`.
    private mutating func forgetIndexes(of identity: KeyIdentity) {
        let name = Self.nameKey(user: identity.user, name: identity.name), owner = UserIdentity.folded(identity.user)
        byName[name]?.remove(identity.keyHash)
        if byName[name]?.isEmpty == true { byName[name] = nil }
        byOwner[owner]?.remove(identity.keyHash)
        if byOwner[owner]?.isEmpty == true { byOwner[owner] = nil }
    }

    /// Revokes the secrets of every key of `user` named `name` that the proxy has seen, but
    /// `keeping` (a rotate's new secret), and any `alsoHash`; returns the revocations made.
    /// When the proxy has never seen the key (its secret is unknown here), every credential it
    /// cannot name has its next list forwarded instead: one of them may bear that secret.
    mutating func revoke(user: String, name: String, keeping: String? = nil, alsoHash: String? = nil, via: String, at now: Double) -> [Revocation] {
        var hashes = byName[Self.nameKey(user: user, name: name)] ?? []
        if hashes.isEmpty && alsoHash == nil { demandConfirmation(ofUnknownAt: now) }
        if let alsoHash { hashes.insert(alsoHash.lowercased()) }
        if let keeping { hashes.remove(keeping.lowercased()) }
        var made: [Revocation] = []
        for hash in hashes where revoked.insert(hash).inserted {
            let identity = identities[hash]
            made.append(Revocation(keyHash: hash, keyPrefix: identity?.keyPrefix, name: identity?.name ?? name,
                                   user: identity?.user ?? user, via: via, at: now))
        }
        if !made.isEmpty { note(made) }
        return made
    }

    /// Another proxy of the group is mutating `user`'s keys (its intent was heard, before it
    /// was forwarded): every credential bearing a secret of theirs, and every credential whose
    /// key this proxy has not seen (it may be one of theirs), has its next list forwarded, so
    /// the upstream decides whether the key still stands.
    mutating func demandConfirmation(ofKeysOf user: String, at now: Double) {
        let hashes = byOwner[UserIdentity.folded(user)] ?? []
        credentials.forEach { credential in
            guard let hash = credential.secretHash else { return }
            if hashes.contains(hash) || identities[hash] == nil { credential.demandConfirmation(at: now) }
        }
    }

    /// Every credential whose key the proxy has not seen has its next list forwarded.
    private mutating func demandConfirmation(ofUnknownAt now: Double) {
        credentials.forEach { credential in
            if let hash = credential.secretHash, identities[hash] == nil { credential.demandConfirmation(at: now) }
        }
    }

    /// Revocations read back at start (`ListStore`).
    mutating func restore(_ revocations: [Revocation]) {
        for revocation in revocations { revoked.insert(revocation.keyHash) }
        recent = Array(revocations.suffix(50))
    }

    private mutating func note(_ made: [Revocation]) {
        let hashes = Set(made.map(\.keyHash))
        credentials.forEach { credential in
            if let hash = credential.secretHash, hashes.contains(hash) { credential.revoke() }
        }
        recent = Array((recent + made).suffix(50))
    }

    /// About how many bytes of memory the book takes, counted against the memory tier's budget
    /// (`MemoryTier.reserve`): a credential (its `Authorization` value, two hex hashes, the
    /// object) about 400, a key (a hash, an id, a prefix, a name, a user, three index
    /// entries) 400 plus its name and user, a revoked hash 100.
    var footprint: Int {
        credentials.count * 400 + identities.count * 400 + namesBytes + revoked.count * 100
    }

    /// The key whose secret `credential` bears, when the proxy has seen it.
    func identity(of credential: Credential) -> KeyIdentity? {
        credential.secretHash.flatMap { identities[$0] }
    }
}
