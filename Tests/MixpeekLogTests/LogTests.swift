import Crypto
import Foundation
@testable import MixpeekLog
import Testing

/// A log in memory: the subtree hashes its appends completed, as a store would keep them.
final class MemoryLog {
    private(set) var subtrees: [Int: [Int64: TreeHash]] = [:]
    private(set) var size: Int64 = 0

    func append(_ entry: [UInt8]) throws {
        for (level, index, hash) in try MerkleTree.completedSubtrees(appending: size, leaf: MerkleTree.leafHash(entry), read: read) {
            subtrees[level, default: [:]][index] = hash
        }
        size += 1
    }

    struct Missing: Error {}

    var read: SubtreeReader {
        { level, index in
            guard let hash = self.subtrees[level]?[index] else { throw Missing() }
            return hash
        }
    }
}

/// What Go's `sumdb/tlog` and `sumdb/note` computed (scripts/tlog_judge, scripts/log_vectors.sh).
struct GoVectors: Decodable {
    struct Proof: Decodable {
        var index: Int64?
        var old: Int64?
        var size: Int64
        var proof: [String]
    }

    struct Tile: Decodable {
        var path: String
        var hex: String
    }

    var entries: [String]
    var tree_hashes: [String]
    var inclusion: [Proof]
    var consistency: [Proof]
    var tiles: [Tile]
    var signer_key: String
    var verifier_key: String
    var signed_checkpoint: String

    static let loaded: GoVectors = {
        let url = Bundle.module.url(forResource: "go-tlog-vectors", withExtension: "json", subdirectory: "Fixtures")!
        return try! JSONDecoder().decode(GoVectors.self, from: Data(contentsOf: url))
    }()

    /// The log of `entries`, appended by our code.
    func log() throws -> MemoryLog {
        let log = MemoryLog()
        for entry in entries { try log.append(Array(entry.utf8)) }
        return log
    }
}

func hash(_ hex: String) -> TreeHash {
    var bytes: [UInt8] = []
    var index = hex.startIndex
    while index < hex.endIndex {
        let next = hex.index(index, offsetBy: 2)
        bytes.append(UInt8(hex[index..<next], radix: 16)!)
        index = next
    }
    return TreeHash(bytes)!
}

func hexBytes(_ hex: String) -> [UInt8] {
    stride(from: 0, to: hex.count, by: 2).map { offset in
        let start = hex.index(hex.startIndex, offsetBy: offset)
        return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16)!
    }
}

@Suite("The verifiable log's tree (RFC 6962)")
struct MerkleTreeTests {
    @Test("the tree hashes of RFC 6962's reference leaves (Certificate Transparency's test vectors), sizes 1 to 8, and the empty tree")
    func referenceVectors() throws {
        let leaves = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ]
        let log = MemoryLog()
        for (leaf, root) in zip(leaves, roots) {
            try log.append(hexBytes(leaf))
            #expect(try MerkleTree.treeHash(size: log.size, read: log.read).hex == root, "size \(log.size)")
        }
        #expect(try MerkleTree.treeHash(size: 0, read: log.read).hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test("tree hashes of 1 to 300 entries are Go's sumdb/tlog's")
    func treeHashesAgreeWithGo() throws {
        let vectors = GoVectors.loaded
        let log = MemoryLog()
        for (entry, expected) in zip(vectors.entries, vectors.tree_hashes) {
            try log.append(Array(entry.utf8))
            #expect(try MerkleTree.treeHash(size: log.size, read: log.read).hex == expected, "size \(log.size)")
        }
    }

    @Test("inclusion proofs are Go's ProveRecord, byte for byte, and verify; a changed entry, proof, index or root does not")
    func inclusionAgreesWithGo() throws {
        let vectors = GoVectors.loaded
        let log = try vectors.log()
        for vector in vectors.inclusion {
            let index = vector.index ?? 0
            let proof = try MerkleTree.inclusionProof(index: index, size: vector.size, read: log.read)
            #expect(proof.map(\.hex) == vector.proof, "entry \(index) in \(vector.size)")
            let root = try MerkleTree.treeHash(size: vector.size, read: log.read)
            let leaf = MerkleTree.leafHash(Array(vectors.entries[Int(index)].utf8))
            #expect(MerkleTree.verifyInclusion(leaf: leaf, index: index, size: vector.size, proof: proof, root: root))
            #expect(!MerkleTree.verifyInclusion(leaf: MerkleTree.leafHash(Array("forged".utf8)), index: index, size: vector.size, proof: proof, root: root))
            if vector.size > 1 {
                #expect(!MerkleTree.verifyInclusion(leaf: leaf, index: (index + 1) % vector.size, size: vector.size, proof: proof, root: root)
                        || vectors.entries[Int((index + 1) % vector.size)] == vectors.entries[Int(index)])
                var bent = proof
                bent[0] = MerkleTree.leafHash(bent[0].bytes)
                #expect(!MerkleTree.verifyInclusion(leaf: leaf, index: index, size: vector.size, proof: bent, root: root))
                #expect(!MerkleTree.verifyInclusion(leaf: leaf, index: index, size: vector.size, proof: Array(proof.dropLast()), root: root))
            }
            #expect(!MerkleTree.verifyInclusion(leaf: leaf, index: index, size: vector.size, proof: proof, root: MerkleTree.emptyTreeHash))
        }
    }

    @Test("consistency proofs are Go's ProveTree, byte for byte, and verify; a forked or truncated history does not")
    func consistencyAgreesWithGo() throws {
        let vectors = GoVectors.loaded
        let log = try vectors.log()
        // Another history that agrees on the first 100 entries, then forks.
        let fork = MemoryLog()
        for (position, entry) in vectors.entries.enumerated() {
            try fork.append(Array((position < 100 ? entry : "forked \(position)\n").utf8))
        }
        for vector in vectors.consistency {
            let old = vector.old ?? 0
            let proof = try MerkleTree.consistencyProof(old: old, new: vector.size, read: log.read)
            #expect(proof.map(\.hex) == vector.proof, "\(old) → \(vector.size)")
            let oldRoot = try MerkleTree.treeHash(size: old, read: log.read)
            let newRoot = try MerkleTree.treeHash(size: vector.size, read: log.read)
            #expect(MerkleTree.verifyConsistency(old: old, new: vector.size, oldRoot: oldRoot, newRoot: newRoot, proof: proof))
            if old > 100 {
                // The fork changed entries the old tree holds: no proof takes one to the other.
                let forkedOld = try MerkleTree.treeHash(size: old, read: fork.read)
                let forkedNew = try MerkleTree.treeHash(size: vector.size, read: fork.read)
                #expect(!MerkleTree.verifyConsistency(old: old, new: vector.size, oldRoot: forkedOld, newRoot: newRoot, proof: proof))
                let forkProof = try MerkleTree.consistencyProof(old: old, new: vector.size, read: fork.read)
                #expect(!MerkleTree.verifyConsistency(old: old, new: vector.size, oldRoot: oldRoot, newRoot: forkedNew, proof: forkProof),
                        "a history that changed entries before \(old) cannot be shown to extend it")
            } else if old > 0 {
                // A fork after the old tree's end still extends it, and its proof shows so.
                let forkProof = try MerkleTree.consistencyProof(old: old, new: vector.size, read: fork.read)
                let forkedNew = try MerkleTree.treeHash(size: vector.size, read: fork.read)
                #expect(MerkleTree.verifyConsistency(old: old, new: vector.size, oldRoot: oldRoot, newRoot: forkedNew, proof: forkProof))
            }
            #expect(!MerkleTree.verifyConsistency(old: old, new: vector.size, oldRoot: oldRoot, newRoot: oldRoot, proof: proof) || old == vector.size)
        }
    }
}

@Suite("The verifiable log's formats (C2SP tlog-tiles, signed-note, tlog-checkpoint)")
struct LogFormatTests {
    @Test("hash tiles and their paths are Go's ReadTileData's, full and partial, at levels 0 and 1")
    func tilesAgreeWithGo() throws {
        let vectors = GoVectors.loaded
        let log = try vectors.log()
        for vector in vectors.tiles {
            let tile = try #require(Tiles.parse(vector.path.dropFirst("tile/".count)), "\(vector.path)")
            #expect(tile.path == vector.path)
            let bytes = try #require(try Tiles.hashTile(tile, size: log.size, read: log.read))
            #expect(bytes.map { String(format: "%02x", $0) }.joined() == vector.hex, "\(vector.path)")
        }
        // Past the end, or a partial tile wider than the tree has: no such tile.
        #expect(try Tiles.hashTile(Tiles.Tile(level: 0, index: 1), size: log.size, read: log.read) == nil)
        #expect(try Tiles.hashTile(Tiles.Tile(level: 0, index: 1, width: 45), size: log.size, read: log.read) == nil)
        #expect(try Tiles.hashTile(Tiles.Tile(level: 2, index: 0, width: 1), size: log.size, read: log.read) == nil)
    }

    @Test("tile indexes are written in x-prefixed three-digit groups, and only the one spelling of each parses")
    func tilePaths() {
        #expect(Tiles.encodeIndex(0) == "000")
        #expect(Tiles.encodeIndex(1234067) == "x001/x234/067")
        #expect(Tiles.Tile(level: 0, index: 1234067, width: 7).path == "tile/0/x001/x234/067.p/7")
        #expect(Tiles.parse("0/x001/x234/067.p/7") == Tiles.Tile(level: 0, index: 1234067, width: 7))
        #expect(Tiles.parse("entries/x001/234") == Tiles.Tile(level: nil, index: 1234, width: 256))
        for bad in ["0/1", "0/x000/001", "0/001.p/256", "0/001.p/0", "00/001", "0/001/", "0/abc", "-1/001", "0/001.p/07", "0"] {
            #expect(Tiles.parse(Substring(bad)) == nil, "\(bad)")
        }
    }

    @Test("an entry bundle is each entry as a big-endian uint16 length, then its bytes")
    func entryBundle() {
        #expect(Tiles.entryBundle([[0x61], Array(repeating: 0x62, count: 300)]) == [0, 1, 0x61, 1, 44] + Array(repeating: 0x62, count: 300))
    }

    /// The seed in Go's `PRIVATE+KEY+<name>+<id>+<base64(0x01 ‖ seed)>`.
    static func signer(fromGo key: String) throws -> SignedNote.Signer {
        let parts = key.split(separator: "+")
        let raw = try #require(Base64.decode(parts[4]))
        return try #require(SignedNote.Signer(name: String(parts[2]), seed: Array(raw.dropFirst())))
    }

    @Test("from the same seed, our key's verifier string and our signed checkpoint are Go's sumdb/note's byte for byte; Go's note opens with Go's key")
    func signedNoteAgreesWithGo() throws {
        let vectors = GoVectors.loaded
        let signer = try Self.signer(fromGo: vectors.signer_key)
        #expect(signer.verifierKey == vectors.verifier_key)
        let log = try vectors.log()
        let checkpoint = Checkpoint(origin: "mixpeek-proxy.test/log", size: log.size, root: try MerkleTree.treeHash(size: log.size, read: log.read))
        #expect(try SignedNote.sign(checkpoint.text, by: [signer]) == vectors.signed_checkpoint)
        let verifier = try #require(SignedNote.Verifier(verifierKey: vectors.verifier_key))
        let opened = try SignedNote.open(vectors.signed_checkpoint, verifiers: [verifier])
        #expect(opened.verifiedBy == ["mixpeek-proxy.test/log"])
        #expect(Checkpoint(text: opened.text) == checkpoint)
    }

    @Test("a note whose text was changed fails its signature; an unknown key is reported, not trusted; malformed notes are refused")
    func signedNoteRefusals() throws {
        let vectors = GoVectors.loaded
        let verifier = try #require(SignedNote.Verifier(verifierKey: vectors.verifier_key))
        let altered = vectors.signed_checkpoint.replacingOccurrences(of: "\n300\n", with: "\n301\n")
        #expect(throws: SignedNote.OpenError.badSignature("mixpeek-proxy.test/log")) { try SignedNote.open(altered, verifiers: [verifier]) }
        let other = try #require(SignedNote.Signer(name: "another", seed: Array(repeating: 7, count: 32)))
        let unknown = try SignedNote.open(vectors.signed_checkpoint, verifiers: [other.verifier])
        #expect(unknown.verifiedBy.isEmpty)
        #expect(unknown.unknown == ["mixpeek-proxy.test/log+\(vectors.verifier_key.split(separator: "+")[1])"])
        for bad in ["no signature block\n", "text\n\nnot a signature\n", "text\n\n\u{2014} name !!!\n"] {
            #expect(throws: SignedNote.OpenError.malformed) { try SignedNote.open(bad, verifiers: [verifier]) }
        }
        #expect(SignedNote.Verifier(verifierKey: vectors.verifier_key.replacingOccurrences(of: "+739bf0e4+", with: "+739bf0e5+")) == nil)
    }

    @Test("Ed25519 known answer: RFC 8032 §7.1 test 1 (public key and signature of the empty message)")
    func rfc8032() throws {
        let seed = hexBytes("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
        let key = try Curve25519.Signing.PrivateKey(rawRepresentation: seed)
        #expect(Array(key.publicKey.rawRepresentation) == hexBytes("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"))
        let signature = hexBytes("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
        #expect(key.publicKey.isValidSignature(signature, for: [UInt8]()))
        #expect(Array(try key.signature(for: [UInt8]())) == signature, "Ed25519 is deterministic: the same signature")
    }

    @Test("a checkpoint is origin, size and base64 root, each on its own line; anything else is not one")
    func checkpoints() throws {
        let root = MerkleTree.emptyTreeHash
        let checkpoint = Checkpoint(origin: "example.com/log", size: 0, root: root)
        #expect(checkpoint.text == "example.com/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n")
        #expect(Checkpoint(text: checkpoint.text + "extension line\n") == checkpoint)
        for bad in ["example.com/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "example.com/log\n00\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
                    "\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", "example.com/log\n-1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
                    "example.com/log\n0\nnot base64\n"] {
            #expect(Checkpoint(text: bad) == nil, "\(bad)")
        }
    }
}
