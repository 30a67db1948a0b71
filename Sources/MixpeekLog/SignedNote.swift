import Crypto
import Foundation

/// C2SP `signed-note` with Ed25519 keys (algorithm 0x01): a text ending in a newline, a blank
/// line, then one line `— <name> <base64(key ID ‖ signature)>` per signature.
public enum SignedNote {
    /// The key ID: the first 4 bytes, big-endian, of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key).
    public static func keyID(name: String, publicKey: [UInt8]) -> UInt32 {
        let digest = Array(SHA256.hash(data: Array(name.utf8) + [0x0A, 0x01] + publicKey))
        return digest[0..<4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// A key name C2SP allows: not empty, no Unicode space or `+`.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && !name.unicodeScalars.contains { $0 == "+" || $0.properties.isWhitespace || $0.value < 0x20 }
    }

    /// Unchecked: swift-crypto does not mark its private key `Sendable`; it is immutable once
    /// made (its bytes are only read, by each signature).
    public struct Signer: @unchecked Sendable {
        public let name: String
        /// The Ed25519 key, made from its seed once: making it is a scalar multiplication, as
        /// long as a signature's own (a checkpoint is signed for every batch of appends).
        private let key: Curve25519.Signing.PrivateKey
        public let publicKey: [UInt8]
        public let keyID: UInt32

        public init?(name: String, seed: [UInt8]) {
            guard isValidName(name), seed.count == 32, let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed) else {
                return nil
            }
            self.name = name
            self.key = key
            publicKey = Array(key.publicKey.rawRepresentation)
            keyID = SignedNote.keyID(name: name, publicKey: publicKey)
        }

        /// `<name>+<8 hex key ID>+<base64(0x01 ‖ public key)>`: what verifiers are given.
        public var verifierKey: String { Verifier(name: name, publicKey: publicKey).verifierKey }
        public var verifier: Verifier { Verifier(name: name, publicKey: publicKey) }

        /// The signature line for `text`.
        public func signatureLine(for text: String) throws -> String {
            let signature = try key.signature(for: Array(text.utf8))
            return SignedNote.signatureLine(name: name, keyID: keyID, signature: Array(signature))
        }
    }

    public struct Verifier: Sendable, Equatable {
        public let name: String
        public let publicKey: [UInt8]
        public var keyID: UInt32 { SignedNote.keyID(name: name, publicKey: publicKey) }

        public init(name: String, publicKey: [UInt8]) {
            self.name = name
            self.publicKey = publicKey
        }

        /// Parses `<name>+<8 hex key ID>+<base64(0x01 ‖ public key)>`; nil when the parts
        /// disagree (the ID is not the key's) or it is not an Ed25519 key.
        public init?(verifierKey: String) {
            // Base64 may hold a `+`; a name and an ID never do.
            let parts = verifierKey.split(separator: "+", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3, isValidName(String(parts[0])), parts[1].count == 8, let id = UInt32(parts[1], radix: 16),
                  let raw = Base64.decode(parts[2]), raw.count == 33, raw[0] == 0x01 else { return nil }
            name = String(parts[0])
            publicKey = Array(raw.dropFirst())
            guard keyID == id, String(parts[1]) == String(format: "%08x", id) else { return nil }
        }

        public var verifierKey: String {
            "\(name)+\(String(format: "%08x", keyID))+\(Base64.encode([0x01] + publicKey))"
        }

        func verifies(_ signature: [UInt8], of text: String) -> Bool {
            guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: publicKey) else { return false }
            return key.isValidSignature(signature, for: Array(text.utf8))
        }
    }

    static func signatureLine(name: String, keyID: UInt32, signature: [UInt8]) -> String {
        let id = [UInt8(keyID >> 24), UInt8(keyID >> 16 & 0xFF), UInt8(keyID >> 8 & 0xFF), UInt8(keyID & 0xFF)]
        return "\u{2014} \(name) \(Base64.encode(id + signature))\n"
    }

    /// `text` signed by each of `signers`, in that order. `text` must end with a newline.
    public static func sign(_ text: String, by signers: [Signer]) throws -> String {
        precondition(text.hasSuffix("\n"), "a note's text ends with a newline")
        return text + "\n" + (try signers.map { try $0.signatureLine(for: text) }.joined())
    }

    public struct Opened: Sendable, Equatable {
        public var text: String
        /// The names of the given verifiers whose signature is on the note and verifies.
        public var verifiedBy: [String]
        /// Signature lines of keys not among the verifiers given (name and key ID).
        public var unknown: [String]
    }

    public enum OpenError: Error, Equatable {
        case malformed
        /// A signature by a known key that does not verify: the note was altered.
        case badSignature(String)
    }

    /// Splits a signed note and checks every signature by a key among `verifiers`.
    public static func open(_ note: String, verifiers: [Verifier]) throws -> Opened {
        guard let split = note.range(of: "\n\n", options: .backwards) else { throw OpenError.malformed }
        let text = String(note[..<split.lowerBound]) + "\n"
        let block = note[split.upperBound...]
        guard block.hasSuffix("\n"), !block.isEmpty else { throw OpenError.malformed }
        var opened = Opened(text: text, verifiedBy: [], unknown: [])
        for line in block.dropLast().split(separator: "\n", omittingEmptySubsequences: false) {
            guard line.hasPrefix("\u{2014} ") else { throw OpenError.malformed }
            let rest = line.dropFirst(2)
            guard let space = rest.firstIndex(of: " ") else { throw OpenError.malformed }
            let name = String(rest[..<space])
            guard isValidName(name), let raw = Base64.decode(rest[rest.index(after: space)...]), raw.count > 4 else {
                throw OpenError.malformed
            }
            let id = raw[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            guard let verifier = verifiers.first(where: { $0.name == name && $0.keyID == id }) else {
                opened.unknown.append("\(name)+\(String(format: "%08x", id))")
                continue
            }
            guard verifier.verifies(Array(raw.dropFirst(4)), of: text) else { throw OpenError.badSignature(name) }
            if !opened.verifiedBy.contains(name) { opened.verifiedBy.append(name) }
        }
        return opened
    }
}

/// C2SP `tlog-checkpoint`: `<origin>\n<size>\n<base64 root hash>\n`, then any extension lines.
public struct Checkpoint: Equatable, Sendable {
    public var origin: String
    public var size: Int64
    public var root: TreeHash

    public init(origin: String, size: Int64, root: TreeHash) {
        self.origin = origin
        self.size = size
        self.root = root
    }

    public var text: String { "\(origin)\n\(size)\n\(root.base64)\n" }

    /// The checkpoint in a note's text; nil when it is not one.
    public init?(text: String) {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard text.hasSuffix("\n"), lines.count >= 4, !lines[0].isEmpty, let size = Int64(lines[1]), size >= 0,
              String(size) == lines[1], let raw = Base64.decode(lines[2]), let root = TreeHash(raw) else { return nil }
        self.origin = String(lines[0])
        self.size = size
        self.root = root
    }
}
