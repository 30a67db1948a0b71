import ArgumentParser
import Foundation
import MixpeekLog
import MixpeekProxy
import PostgresNIO
import Logging

/// `--checkpoint FILE` (a signed checkpoint saved earlier) and the key that must have signed it.
struct SavedCheckpointOption: ParsableArguments {
    @Option(help: "A signed checkpoint saved earlier (`audit checkpoint > FILE`, or GET /_proxy/log/checkpoint): the log must extend it.")
    var checkpoint: String?
    @Option(help: "The log's verifier key (`audit log-key`); default: the one of the data dir's log-signing.key (group-log-signing.key with --postgres-url).")
    var logKey: String?

    /// The checkpoint in `--checkpoint`, its signature checked; nil without the flag.
    func read(_ dataDir: DataDirOption, group: Bool = false) throws -> Checkpoint? {
        guard let checkpoint else { return nil }
        guard let note = try? String(contentsOfFile: checkpoint, encoding: .utf8) else {
            throw ValidationError("cannot read the checkpoint file \(checkpoint)")
        }
        return try Self.open(note, what: "the saved checkpoint \(checkpoint)", verifier: try verifier(dataDir, group: group))
    }

    func verifier(_ dataDir: DataDirOption, group: Bool = false) throws -> SignedNote.Verifier? {
        if let logKey {
            guard let verifier = SignedNote.Verifier(verifierKey: logKey) else {
                throw ValidationError("--log-key must be a verifier key as `audit log-key` prints it (<name>+<8 hex>+<base64>)")
            }
            return verifier
        }
        return try? LogSigning.verifier(keyFile: Self.keyFile(dataDir.path, group: group))
    }

    /// The key file a data dir's proxy signs with: alone, or as a member of a group.
    static func keyFile(_ dataDir: String, group: Bool) -> String {
        group ? LogSigning.defaultGroupKeyFile(dataDir: dataDir) : LogSigning.defaultKeyFile(dataDir: dataDir)
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
        @Flag(help: "The key the data dir's proxy cosigns its group's log with (group-log-signing.key).")
        var group = false

        func run() async throws {
            do {
                print(try LogSigning.verifier(keyFile: keyFile ?? SavedCheckpointOption.keyFile(dataDir.path, group: group)).verifierKey)
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
                  mixpeek-proxy audit checkpoint --postgres-url postgres://auditor@db/mixpeek > group-checkpoint
                """)

        @OptionGroup var dataDir: DataDirOption
        @OptionGroup var postgres: PostgresOption

        func run() async throws {
            if let url = try postgres.url(dataDirGiven: dataDir.dataDir != nil) {
                let note = try await Audit.withGroup(url) { connection, logger in
                    try await GroupLogTree.latestCheckpoint(on: connection, logger: logger)
                }
                guard let note else { throw ValidationError("the group's log has no checkpoint yet (its members sign one within a second of starting)") }
                print(note, terminator: "")
                return
            }
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
        @OptionGroup var postgres: PostgresOption
        @OptionGroup var saved: SavedCheckpointOption
        @Option(help: "The entry's index (the Mixpeek-Proxy-Audit-Index of a mutation's answer).") var index: Int64

        func run() async throws {
            let group = try postgres.url(dataDirGiven: dataDir.dataDir != nil)
            let checkpoint: Checkpoint
            if let given = try saved.read(dataDir, group: group != nil) {
                checkpoint = given
            } else {
                let latest = try await group.asyncMap { url in
                    try await Audit.withGroup(url) { connection, logger in try await GroupLogTree.latestCheckpoint(on: connection, logger: logger) }
                } ?? Audit.open(dataDir).latestCheckpoint()
                guard let note = latest else { throw ValidationError("the audit log has no checkpoint yet") }
                checkpoint = try SavedCheckpointOption.open(note, what: "the latest checkpoint", verifier: try saved.verifier(dataDir, group: group != nil))
            }
            let found = try await group.asyncMap { [index] url in
                try await Audit.withGroup(url) { connection, logger in
                    try await GroupLogTree.inclusion(index: index, size: checkpoint.size, on: connection, logger: logger)
                }
            } ?? Audit.open(dataDir).inclusion(index: index, size: checkpoint.size)
            guard let inclusion = found else {
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

extension Optional {
    func asyncMap<T>(_ transform: (Wrapped) async throws -> T) async rethrows -> T? {
        guard let self else { return nil }
        return try await transform(self)
    }
}

extension Audit {
    /// Runs `body` on a connection to the group's database, closed after; a failure to read
    /// exits 2 naming why.
    static func withGroup<T>(_ url: PostgresURL, _ body: (PostgresConnection, Logger) async throws -> T) async throws -> T {
        let logger = Logs.quiet("mixpeek-proxy.audit")
        let connection = try await connect(url, logger: logger)
        do {
            let result = try await body(connection, logger)
            try? await connection.close()
            return result
        } catch {
            try? await connection.close()
            print("audit: cannot read the group's log: \(GroupError.describe(error))")
            throw ExitCode(2)
        }
    }
}
