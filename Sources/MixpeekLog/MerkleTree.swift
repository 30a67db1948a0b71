import Crypto
import Foundation

/// A SHA-256 hash of the log's Merkle tree: a leaf's, or a node's.
public struct TreeHash: Hashable, Sendable, CustomStringConvertible {
    public static let size = 32
    public let bytes: [UInt8]

    public init?(_ bytes: some Sequence<UInt8>) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size else { return nil }
        self.bytes = bytes
    }

    init(digest: SHA256.Digest) {
        bytes = Array(digest)
    }

    public var hex: String { bytes.map { String(format: "%02x", $0) }.joined() }
    public var base64: String { Base64.encode(bytes) }
    public var description: String { hex }
}

/// Reads the hash of the perfect subtree at `level` and `index`: the tree hash of the
/// 2^level entries from index·2^level on (level 0: an entry's leaf hash). What a log stores,
/// and exactly what its hash tiles serve.
public typealias SubtreeReader = (_ level: Int, _ index: Int64) throws -> TreeHash

/// RFC 6962 / RFC 9162 §2.1 Merkle tree maths, as pure functions over a `SubtreeReader`: the
/// tree hash of the first n entries, inclusion proofs and consistency proofs, and their
/// verification. No storage, no I/O: the log stores the subtree hashes, the tiles serve them,
/// an auditor checks with these.
public enum MerkleTree {
    /// `SHA-256(0x00 ‖ entry)`.
    public static func leafHash(_ entry: some Sequence<UInt8>) -> TreeHash {
        var hasher = SHA256()
        hasher.update(data: [0x00])
        hasher.update(data: Array(entry))
        return TreeHash(digest: hasher.finalize())
    }

    /// `SHA-256(0x01 ‖ left ‖ right)`.
    public static func nodeHash(_ left: TreeHash, _ right: TreeHash) -> TreeHash {
        var hasher = SHA256()
        hasher.update(data: [0x01])
        hasher.update(data: left.bytes)
        hasher.update(data: right.bytes)
        return TreeHash(digest: hasher.finalize())
    }

    /// The hash of the empty tree: `SHA-256("")`.
    public static let emptyTreeHash = TreeHash(digest: SHA256.hash(data: [UInt8]()))

    /// The subtree hashes that appending entry `index` (leaf hash `leaf`) completes, lowest
    /// first: its leaf, then each perfect subtree it closes (`(level, index, hash)`). Store them
    /// with the entry and every later tree hash and proof can be read from storage.
    public static func completedSubtrees(appending index: Int64, leaf: TreeHash, read: SubtreeReader) throws
        -> [(level: Int, index: Int64, hash: TreeHash)] {
        var out = [(level: 0, index: index, hash: leaf)]
        var hash = leaf
        var level = 0
        var position = index
        while position & 1 == 1 {
            hash = nodeHash(try read(level, position - 1), hash)
            level += 1
            position >>= 1
            out.append((level, position, hash))
        }
        return out
    }

    /// MTH(D[0:n]).
    public static func treeHash(size n: Int64, read: SubtreeReader) throws -> TreeHash {
        n == 0 ? emptyTreeHash : try hash(0, n, read)
    }

    /// MTH(D[lo:hi]), from the perfect subtrees it is made of.
    static func hash(_ lo: Int64, _ hi: Int64, _ read: SubtreeReader) throws -> TreeHash {
        let count = hi - lo
        if count & (count - 1) == 0, lo % count == 0 {
            return try read(count.trailingZeroBitCount, lo >> count.trailingZeroBitCount)
        }
        let k = largestPowerOfTwo(below: count)
        return nodeHash(try hash(lo, lo + k, read), try hash(lo + k, hi, read))
    }

    /// The largest power of two smaller than `n` (n > 1).
    static func largestPowerOfTwo(below n: Int64) -> Int64 {
        var k: Int64 = 1
        while k << 1 < n { k <<= 1 }
        return k
    }

    // MARK: Inclusion

    /// PATH(index, D[0:size]) (RFC 6962 §2.1.1): the hashes that take entry `index`'s leaf
    /// hash to the tree hash of the first `size` entries.
    public static func inclusionProof(index: Int64, size: Int64, read: SubtreeReader) throws -> [TreeHash] {
        precondition(index >= 0 && index < size, "the entry must be in the tree")
        return try path(index, 0, size, read)
    }

    private static func path(_ m: Int64, _ lo: Int64, _ hi: Int64, _ read: SubtreeReader) throws -> [TreeHash] {
        let n = hi - lo
        if n == 1 { return [] }
        let k = largestPowerOfTwo(below: n)
        if m - lo < k {
            return try path(m, lo, lo + k, read) + [hash(lo + k, hi, read)]
        }
        return try path(m, lo + k, hi, read) + [hash(lo, lo + k, read)]
    }

    /// RFC 9162 §2.1.3.2: whether `proof` takes `leaf` (entry `index`) to `root`, the tree
    /// hash of `size` entries.
    public static func verifyInclusion(leaf: TreeHash, index: Int64, size: Int64, proof: [TreeHash], root: TreeHash) -> Bool {
        guard index >= 0, index < size else { return false }
        var fn = index
        var sn = size - 1
        var r = leaf
        for p in proof {
            if sn == 0 { return false }
            if fn & 1 == 1 || fn == sn {
                r = nodeHash(p, r)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 {
                        fn >>= 1
                        sn >>= 1
                    }
                }
            } else {
                r = nodeHash(r, p)
            }
            fn >>= 1
            sn >>= 1
        }
        return sn == 0 && r == root
    }

    // MARK: Consistency

    /// PROOF(old, D[0:new]) (RFC 6962 §2.1.2): the hashes that show the tree of `new` entries
    /// extends the tree of the first `old`.
    public static func consistencyProof(old: Int64, new: Int64, read: SubtreeReader) throws -> [TreeHash] {
        precondition(old >= 0 && old <= new, "the old tree must be no larger than the new")
        if old == 0 || old == new { return [] }
        return try subproof(old, 0, new, true, read)
    }

    private static func subproof(_ m: Int64, _ lo: Int64, _ hi: Int64, _ whole: Bool, _ read: SubtreeReader) throws -> [TreeHash] {
        let n = hi - lo
        if m == n { return whole ? [] : [try hash(lo, hi, read)] }
        let k = largestPowerOfTwo(below: n)
        if m <= k {
            return try subproof(m, lo, lo + k, whole, read) + [hash(lo + k, hi, read)]
        }
        return try subproof(m - k, lo + k, hi, false, read) + [hash(lo, lo + k, read)]
    }

    /// RFC 9162 §2.1.4.2: whether `proof` shows that the tree of `new` entries, hash
    /// `newRoot`, extends the tree of `old` entries, hash `oldRoot`.
    public static func verifyConsistency(old: Int64, new: Int64, oldRoot: TreeHash, newRoot: TreeHash, proof: [TreeHash]) -> Bool {
        guard old >= 0, old <= new else { return false }
        if old == new { return proof.isEmpty && oldRoot == newRoot }
        if old == 0 { return proof.isEmpty }
        var path = proof
        // A power of two: the old tree is itself a node of the new one.
        if old & (old - 1) == 0 { path.insert(oldRoot, at: 0) }
        guard let first = path.first else { return false }
        var fn = old - 1
        var sn = new - 1
        while fn & 1 == 1 {
            fn >>= 1
            sn >>= 1
        }
        var fr = first
        var sr = first
        for c in path.dropFirst() {
            if sn == 0 { return false }
            if fn & 1 == 1 || fn == sn {
                fr = nodeHash(c, fr)
                sr = nodeHash(c, sr)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 {
                        fn >>= 1
                        sn >>= 1
                    }
                }
            } else {
                sr = nodeHash(sr, c)
            }
            fn >>= 1
            sn >>= 1
        }
        return sn == 0 && fr == oldRoot && sr == newRoot
    }
}

/// Standard base64 (RFC 4648 §4, with padding), as C2SP's formats use it.
public enum Base64 {
    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        Data(bytes).base64EncodedString()
    }

    /// Nil for anything that is not canonical padded base64 (what `encode` would write).
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        guard let data = Data(base64Encoded: String(text)), data.base64EncodedString() == text else { return nil }
        return Array(data)
    }
}
