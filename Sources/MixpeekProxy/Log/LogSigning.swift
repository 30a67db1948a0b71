import Crypto
import Foundation
import MixpeekLog

/// What the lone proxy signs its checkpoints with: the log's origin (the checkpoint's first
/// line) and its Ed25519 key. The key is read from its file only; it is never logged, served
/// or printed (only its verifier key is).
public struct LogSigning: Sendable {
    public let origin: String
    let signer: SignedNote.Signer

    public var verifierKey: String { signer.verifierKey }
    public var verifier: SignedNote.Verifier { signer.verifier }

    init(origin: String, signer: SignedNote.Signer) {
        self.origin = origin
        self.signer = signer
    }

    /// The origin a data dir's log gets without `log_origin`: `mixpeek-proxy/<host>/<absolute dir>`.
    public static func defaultOrigin(dataDir: String) -> String {
        var name = [CChar](repeating: 0, count: 256)
        let host = gethostname(&name, name.count) == 0 ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "localhost"
        let directory = URL(fileURLWithPath: dataDir).standardizedFileURL.path
        return "mixpeek-proxy/\(host)/" + String(directory.drop { $0 == "/" })
    }

    /// The key file a data dir's log gets without `log_signing_key_file`.
    public static func defaultKeyFile(dataDir: String) -> String {
        URL(fileURLWithPath: dataDir).appendingPathComponent("log-signing.key").path
    }

    /// The key file a group member's data dir cosigns the group's log with, without
    /// `log_signing_key_file`.
    public static func defaultGroupKeyFile(dataDir: String) -> String {
        URL(fileURLWithPath: dataDir).appendingPathComponent("group-log-signing.key").path
    }

    /// Reads the key in `keyFile`, or, when `create` and there is no such file, makes one
    /// (mode 0600) for a key named `origin`. The file is Go's `sumdb/note` private key text,
    /// `PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x01 ‖ seed)>`, so Go's tools read it too.
    public static func load(keyFile: String, origin: String, create: Bool) throws -> LogSigning {
        guard SignedNote.isValidName(origin) else { throw LogKeyError.invalidOrigin(origin) }
        if !FileManager.default.fileExists(atPath: keyFile) {
            guard create else { throw LogKeyError.missing(keyFile) }
            let seed = Array(Curve25519.Signing.PrivateKey().rawRepresentation)
            guard let signer = SignedNote.Signer(name: origin, seed: seed) else { throw LogKeyError.invalidOrigin(origin) }
            let text = "PRIVATE+KEY+\(origin)+\(String(format: "%08x", signer.keyID))+\(Base64.encode([0x01] + seed))\n"
            try DataFiles.createPrivateFile(at: keyFile)
            try Data(text.utf8).write(to: URL(fileURLWithPath: keyFile))
            return LogSigning(origin: origin, signer: signer)
        }
        return LogSigning(origin: origin, signer: try read(keyFile))
    }

    /// The verifier key of the key in `keyFile` (`audit log-key`).
    public static func verifier(keyFile: String) throws -> SignedNote.Verifier {
        try read(keyFile).verifier
    }

    private static func read(_ keyFile: String) throws -> SignedNote.Signer {
        guard FileManager.default.fileExists(atPath: keyFile) else { throw LogKeyError.missing(keyFile) }
        guard let text = try? String(contentsOfFile: keyFile, encoding: .utf8) else { throw LogKeyError.unreadable(keyFile) }
        guard let signer = parse(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw LogKeyError.malformed(keyFile) }
        return signer
    }

    static func parse(_ text: String) -> SignedNote.Signer? {
        let parts = text.split(separator: "+", maxSplits: 4, omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "PRIVATE", parts[1] == "KEY", let id = UInt32(parts[3], radix: 16),
              let raw = Base64.decode(parts[4]), raw.count == 33, raw[0] == 0x01,
              let signer = SignedNote.Signer(name: String(parts[2]), seed: Array(raw.dropFirst())), signer.keyID == id else { return nil }
        return signer
    }
}

/// Why the log cannot sign. The messages name files, never what is in them.
public enum LogKeyError: Error, CustomStringConvertible {
    case invalidOrigin(String)
    case missing(String)
    case unreadable(String)
    case malformed(String)

    public var description: String {
        switch self {
        case .invalidOrigin(let origin):
            "the log origin \(origin.debugDescription) is not a valid signed-note name (no spaces, no '+'); set log_origin"
        case .missing(let file): "no log signing key at \(file) (the proxy makes it at its first start)"
        case .unreadable(let file): "cannot read the log signing key \(file)"
        case .malformed(let file): "\(file) is not a log signing key (PRIVATE+KEY+<name>+<id>+<key>, Ed25519)"
        }
    }
}
