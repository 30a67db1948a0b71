import Crypto
import MixpeekAPI

/// Hashes as lowercase hex, as the audit chain, the cache key and the fingerprints write them.
extension Digest {
    var hex: String { Array(self).hex }
}

extension HashedAuthenticationCode {
    var hex: String { Array(self).hex }
}
