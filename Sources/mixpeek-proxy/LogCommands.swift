import ArgumentParser
import Foundation
import MixpeekLog
import MixpeekProxy

/// `--checkpoint FILE` (a signed checkpoint saved earlier) and the key that must have signed it.
struct SavedCheckpointOption: ParsableArguments {
    @Option(help: "A signed checkpoint saved earlier (`audit checkpoint > FILE`, or GET /_proxy/log/checkpoint): the log must extend it.")
    var checkpoint: String?
    @Option(help: "The log's verifier key (`audit log-key`); default: the one of the data dir's log-signing.key.")
    var logKey: String?

    /// The checkpoint in `--checkpoint`, its signature checked; nil without the flag.
    func read(_ dataDir: DataDirOption) throws -> Checkpoint? {
        guard let checkpoint else { return nil }
        guard let note = try? String(contentsOfFile: checkpoint, encoding: .utf8) else {
            throw ValidationError("cannot read the checkpoint file \(checkpoint)")
        }
        return try Self.open(note, what: "the saved checkpoint \(checkpoint)", verifier: try verifier(dataDir))
    }

    func verifier(_ dataDir: DataDirOption) throws -> SignedNote.Verifier? {
        if let logKey {
            guard let verifier = SignedNote.Verifier(verifierKey: logKey) else {
                throw ValidationError("--log-key must be a verifier key as `audit log-key` prints it (<name>+<8 hex>+<base64>)")
            }
            return verifier
        }
        return try? LogSigning.verifier(keyFile: LogSigning.defaultKeyFile(dataDir: dataDir.path))
    }

    /// `note` as a checkpoint signed by `verifier`; exit 1 naming what is wrong when it is not.
    static func open(_ note: String, what: String, verifier: SignedNote.Verifier?) throws -> Checkpoint {
        let opened: SignedNote.Opened
        do {
            opened = try SignedNote.open(note, verifiers: verifier.map { [$0] } ?? [])
        } catch SignedNote.OpenError.badSignature {
            print("audit log BROKEN: the signature on \(what) does not verify (it was altered)")
            throw ExitCode(1)
        } catch {
            throw ValidationError("\(what) is not a signed note")
        }
        if let verifier, !opened.verifiedBy.contains(verifier.name) {
            print("audit log BROKEN: \(what) is not signed by \(verifier.verifierKey)")
            throw ExitCode(1)
        }
        if verifier == nil {
            FileHandle.standardError.write(Data("warning: no verifier key (--log-key), so the signature on \(what) was not checked\n".utf8))
        }
        guard let checkpoint = Checkpoint(text: opened.text) else { throw ValidationError("\(what) is not a checkpoint") }
        return checkpoint
    }
}

extension Audit {
    struct LogKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "log-key",
            abstract: "Print the audit log's verifier key: what checks its signed checkpoints (the private key is never printed).",
            discussion: """
                Examples:
                  mixpeek-proxy audit log-key --data-dir ./mixpeek-proxy-data > log.vkey
                """)

        @OptionGroup var dataDir: DataDirOption
        @Option(help: "The signing key file (log_signing_key_file; default log-signing.key in the data dir).")
        var keyFile: String?

        func run() async throws {
            do {
                print(try LogSigning.verifier(keyFile: keyFile ?? LogSigning.defaultKeyFile(dataDir: dataDir.path)).verifierKey)
            } catch let error as LogKeyError {
                throw ValidationError(error.description)
            }
        }
    }

    struct ShowCheckpoint: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "checkpoint",
            abstract: "Print the audit log's latest signed checkpoint (C2SP tlog-checkpoint in a signed note).",
            discussion: """
                Keep one somewhere else; `audit verify --checkpoint FILE` later shows the log still extends it.
                Examples:
                  mixpeek-proxy audit checkpoint --data-dir ./mixpeek-proxy-data > checkpoint-2026-10-01
                """)

        @OptionGroup var dataDir: DataDirOption

        func run() async throws {
            guard let note = try Audit.open(dataDir).latestCheckpoint() else {
                throw ValidationError("the audit log has no checkpoint yet (the proxy signs one at its start)")
            }
            print(note, terminator: "")
        }
    }

    struct Prove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print and check the inclusion proof of one log entry (a record's index is its seq - 1).",
            discussion: """
                Against the checkpoint in --checkpoint, or the latest one in the data dir.
                Exit status: 0 the proof verifies, 1 it does not.
                Examples:
                  mixpeek-proxy audit prove --index 41
                  mixpeek-proxy audit prove --index 41 --checkpoint checkpoint-2026-10-01
                """)

        @OptionGroup var dataDir: DataDirOption
        @OptionGroup var saved: SavedCheckpointOption
        @Option(help: "The entry's index (the Mixpeek-Proxy-Audit-Index of a mutation's answer).") var index: Int64

        func run() async throws {
            let log = try Audit.open(dataDir)
            let checkpoint: Checkpoint
            if let given = try saved.read(dataDir) {
                checkpoint = given
            } else {
                guard let note = try log.latestCheckpoint() else { throw ValidationError("the audit log has no checkpoint yet") }
                checkpoint = try SavedCheckpointOption.open(note, what: "the latest checkpoint", verifier: try saved.verifier(dataDir))
            }
            guard let inclusion = try log.inclusion(index: index, size: checkpoint.size) else {
                throw ValidationError("entry \(index) is not in the tree of \(checkpoint.size) entries the checkpoint signs")
            }
            print("entry \(index) of \(checkpoint.size): \(String(decoding: inclusion.entry, as: UTF8.self))")
            print("leaf hash: \(MerkleTree.leafHash(inclusion.entry).base64)")
            print("proof (\(inclusion.proof.count) hashes):")
            for hash in inclusion.proof { print("  \(hash.base64)") }
            print("root: \(checkpoint.root.base64)")
            let holds = MerkleTree.verifyInclusion(
                leaf: MerkleTree.leafHash(inclusion.entry), index: index, size: checkpoint.size, proof: inclusion.proof, root: checkpoint.root)
            guard holds else {
                print("inclusion proof does NOT verify: entry \(index) as the log holds it is not the one the checkpoint signs")
                throw ExitCode(1)
            }
            print("inclusion proof verifies: entry \(index) is in the checkpoint's tree of \(checkpoint.size) entries")
        }
    }
}
