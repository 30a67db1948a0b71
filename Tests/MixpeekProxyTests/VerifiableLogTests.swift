import AsyncHTTPClient
import Foundation
import GRDB
import Logging
import MixpeekFake
import MixpeekLog
@testable import MixpeekProxy
import NIOHTTP1
import Testing

@Suite("Verifiable audit log")
struct VerifiableLogTests {
    static let logger = Logger(label: "verifiable-log-test")

    static func tempDir() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("log-test-\(UUID().uuidString)").path
        try DataFiles.createPrivateDirectory(at: dir)
        return dir
    }

    static func signing(_ dir: String) throws -> LogSigning {
        try LogSigning.load(keyFile: dir + "/log-signing.key", origin: "example.com/test-log", create: true)
    }

    static func intent(_ n: Int) -> AuditIntent {
        AuditIntent(action: .create, user: "user\(n % 7)@example.com", key: "key-\(n)", caller: "sha256:0000", client: "127.0.0.1",
                    requestID: "req-\(n)", traceID: n % 2 == 0 ? String(repeating: "a", count: 32) : nil)
    }

    /// Appends `count` intents concurrently, so that they are group-committed in batches.
    static func append(_ count: Int, to log: AuditLog) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for n in 0..<count { group.addTask { _ = try await log.recordIntent(intent(n)) } }
            try await group.waitForAll()
        }
    }

    static func records(_ path: String) throws -> [AuditRecord] {
        try DatabaseQueue(path: path).read { db in try AuditRecord.fetchAll(db, sql: "SELECT * FROM audit_records ORDER BY seq") }
    }

    /// The subtree hashes of `leaves`, computed in memory (perfect subtrees only).
    static func reader(_ leaves: [TreeHash]) -> SubtreeReader {
        func hash(_ lo: Int, _ hi: Int) -> TreeHash {
            hi - lo == 1 ? leaves[lo] : MerkleTree.nodeHash(hash(lo, (lo + hi) / 2), hash((lo + hi) / 2, hi))
        }
        return { level, index in hash(Int(index) << level, (Int(index) + 1) << level) }
    }

    static func checkpoint(_ note: String, _ verifier: SignedNote.Verifier) throws -> Checkpoint {
        let opened = try SignedNote.open(note, verifiers: [verifier])
        #expect(opened.verifiedBy == [verifier.name])
        return try #require(Checkpoint(text: opened.text))
    }

    static func entries(_ bundle: [UInt8]) -> [[UInt8]] {
        var entries: [[UInt8]] = []
        var at = 0
        while at + 2 <= bundle.count {
            let length = Int(bundle[at]) << 8 | Int(bundle[at + 1])
            entries.append(Array(bundle[(at + 2)..<(at + 2 + length)]))
            at += 2 + length
        }
        return entries
    }

    @Test("an audit file from before the tree gets its tree built once at migration, and it verifies")
    func treeBuiltAtMigration() async throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/audit.sqlite"
        do {
            let queue = try DatabaseQueue(path: path)
            try AuditLog.migrator.migrate(queue, upTo: "v4-actor-key")
            try await queue.write { db in
                var head: (seq: Int64, hash: String) = (0, AuditRecord.genesis)
                for n in 0..<300 {
                    let record = AuditLog.intent(Self.intent(n), time: "2026-10-01T12:00:00.000Z").chained(after: head, key: nil)
                    try record.insert(db)
                    head = (record.seq, record.hash)
                }
            }
        }
        let signing = try Self.signing(dir)
        let log = try AuditLog(path: path, signing: signing, logger: Self.logger)
        let leaves = try Self.records(path).map { MerkleTree.leafHash($0.logEntry) }
        let checkpoint = try Self.checkpoint(try #require(try log.latestCheckpoint()), signing.verifier)
        #expect(checkpoint.size == 300)
        #expect(checkpoint.origin == "example.com/test-log")
        #expect(checkpoint.root == (try MerkleTree.treeHash(size: 300, read: Self.reader(leaves))))
        // Appending goes on from the tree the migration built.
        try await Self.append(5, to: log)
        let grown = try Self.checkpoint(try #require(try log.latestCheckpoint()), signing.verifier)
        #expect(grown.size == 305)
        let check = try AuditLog.openForReading(path: path, logger: Self.logger).verifyLog(extending: checkpoint)
        #expect(check.isIntact, "\(check.problem ?? "")")
        #expect(check.entries == 305)
    }

    @Test("a second writer without the key (audit reconcile) extends the tree; the next batch signs a checkpoint over it")
    func secondWriterExtendsTheTree() async throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/audit.sqlite"
        let signing = try Self.signing(dir)
        let log = try AuditLog(path: path, signing: signing, logger: Self.logger)
        try await Self.append(10, to: log)
        let other = try AuditLog(path: path, logger: Self.logger)
        _ = try await other.recordIntent(Self.intent(99))
        #expect(try Self.checkpoint(try #require(try log.latestCheckpoint()), signing.verifier).size == 10)
        // This log's remembered head is stale: its batch is chained again after the file's.
        _ = try await log.recordIntent(Self.intent(100))
        let checkpoint = try Self.checkpoint(try #require(try log.latestCheckpoint()), signing.verifier)
        #expect(checkpoint.size == 12)
        let leaves = try Self.records(path).map { MerkleTree.leafHash($0.logEntry) }
        #expect(checkpoint.root == (try MerkleTree.treeHash(size: 12, read: Self.reader(leaves))))
        let empty = Checkpoint(origin: signing.origin, size: 0, root: MerkleTree.emptyTreeHash)
        #expect(try log.verifyLog(extending: empty).isIntact)
        #expect(try log.verify().isIntact)
    }

    @Test("the tiles served are the tree's: hash tiles, entry bundles, partial and full, 404 past the end")
    func tilesMatchTheTree() async throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/audit.sqlite"
        let log = try AuditLog(path: path, signing: try Self.signing(dir), logger: Self.logger)
        try await Self.append(300, to: log)
        let reader = try AuditLog(path: path, readOnly: true, logger: Self.logger)
        let records = try Self.records(path)
        let leaves = records.map { MerkleTree.leafHash($0.logEntry) }
        func served(_ path: String) -> (status: Int, body: [UInt8], cacheControl: String?) {
            let response = Proxy.logResponse(Substring(path), from: reader)
            return (Int(response.status.code), Array(response.body.readableBytesView), response.headers.first(name: "cache-control"))
        }
        let full = served("tile/0/000")
        #expect(full.status == 200)
        #expect(full.body == leaves[0..<256].flatMap(\.bytes))
        #expect(full.cacheControl == "public, max-age=31536000, immutable")
        let partial = served("tile/0/001.p/44")
        #expect(partial.body == leaves[256..<300].flatMap(\.bytes))
        #expect(partial.cacheControl != "public, max-age=31536000, immutable")
        #expect(served("tile/1/000.p/1").body == (try MerkleTree.treeHash(size: 256, read: Self.reader(leaves))).bytes)
        #expect(Self.entries(served("tile/entries/000").body) == records[0..<256].map(\.logEntry))
        #expect(Self.entries(served("tile/entries/001.p/44").body) == records[256..<300].map(\.logEntry))
        for beyond in ["tile/0/001", "tile/0/002", "tile/0/001.p/45", "tile/1/000", "tile/entries/001", "tile/2/000.p/1"] {
            let response = Proxy.logResponse(Substring(beyond), from: reader)
            #expect(response.status == .notFound, "\(beyond)")
            #expect(String(buffer: response.body).contains("mixpeek_proxy.not_found"))
        }
        #expect(served("tile/0/0").status == 404)
        #expect(served("checkpoint").status == 200)
        // Each entry is the record's one line of JSON.
        let entry = try #require(try JSONSerialization.jsonObject(with: Data(records[4].logEntry)) as? [String: Any])
        #expect(entry["seq"] as? Int == 5)
        #expect(entry["hash"] as? String == records[4].hash)
        #expect(!records[4].logEntry.contains(UInt8(ascii: "\n")))
    }

    @Test("every answered mutation's Mixpeek-Proxy-Audit-Index is provably in the checkpoint fetched right after")
    func answersAreCovered() async throws {
        try await withTestProxy { proxy in
            let verifier = try LogSigning.verifier(keyFile: proxy.dataDir + "/log-signing.key")
            func get(_ path: String) async throws -> TestResponse {
                try await proxy.request(.GET, "/_proxy/log/" + path, token: nil)
            }
            func bytes(_ path: String) async throws -> [UInt8] {
                let response = try await proxy.client.execute(HTTPClientRequest(url: proxy.url + "/_proxy/log/" + path), timeout: .seconds(10))
                #expect(response.status == .ok, "\(path)")
                return Array(try await response.body.collect(upTo: 1 << 20).readableBytesView)
            }
            var answers = [try await proxy.create(name: "k1")]
            answers.append(try await proxy.update(key: "k1"))
            answers.append(try await proxy.rotate(key: "k1"))
            answers.append(try await proxy.create(name: "k2"))
            answers.append(try await proxy.delete(key: "k1"))
            answers.append(try await proxy.delete(key: "nope"))
            for answer in answers {
                let index = try #require(answer.header("Mixpeek-Proxy-Audit-Index").flatMap { Int64($0) })
                let fetched = try await get("checkpoint")
                #expect(fetched.header("cache-control") == "no-store")
                let checkpoint = try Self.checkpoint(fetched.body, verifier)
                #expect(index < checkpoint.size)
                var leaves: [TreeHash] = []
                for n in 0...((checkpoint.size - 1) / 256) {
                    let width = min(256, checkpoint.size - n * 256)
                    let tile = Tiles.Tile(level: 0, index: n, width: Int(width))
                    let data = try await bytes(tile.path)
                    leaves += stride(from: 0, to: data.count, by: 32).map { TreeHash(data[$0..<($0 + 32)])! }
                }
                let bundle = Tiles.Tile(level: nil, index: index / 256, width: Int(min(256, checkpoint.size - index / 256 * 256)))
                let entry = Self.entries(try await bytes(bundle.path))[Int(index % 256)]
                #expect(MerkleTree.leafHash(entry) == leaves[Int(index)])
                let proof = try MerkleTree.inclusionProof(index: index, size: checkpoint.size, read: Self.reader(leaves))
                #expect(MerkleTree.verifyInclusion(leaf: MerkleTree.leafHash(entry), index: index, size: checkpoint.size, proof: proof,
                                                   root: checkpoint.root))
                let json = try #require(try JSONSerialization.jsonObject(with: Data(entry)) as? [String: Any])
                #expect(json["kind"] as? String == "outcome")
                #expect(json["request_id"] as? String == answer.header("x-request-id"))
            }
        }
    }

    @Test("the signing key is 0600 and reaches no answer, status page or checkpoint; the log follows status_page")
    func keyStaysHome() async throws {
        try await withTestProxy { proxy in
            let keyFile = proxy.dataDir + "/log-signing.key"
            let attributes = try FileManager.default.attributesOfItem(atPath: keyFile)
            #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
            let text = try String(contentsOfFile: keyFile, encoding: .utf8)
            // PRIVATE+KEY+<name>+<id>+<base64 key>: the base64 may itself hold a '+'.
            let parts = text.split(separator: "+", maxSplits: 4)
            #expect(parts.count == 5)
            let secret = String(try #require(parts.last)).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(secret.count == 44)
            let created = try await proxy.create(name: "k1")
            for path in ["/_proxy/", "/_proxy/status.json", "/_proxy/log/checkpoint", "/_proxy/log/tile/entries/000.p/2", "/_proxy/stats"] {
                #expect(!(try await proxy.request(.GET, path, token: nil)).body.contains(secret), "\(path)")
            }
            #expect(!created.body.contains(secret))
            let refused = try await proxy.request(.GET, "/_proxy/log/checkpoint", token: nil, headers: ["host": "proxy.example.com"])
            #expect(refused.status == 403)
        }
        try await withTestProxy(configure: { $0.statusPage = .off }) { proxy in
            let off = try await proxy.request(.GET, "/_proxy/log/checkpoint", token: nil)
            #expect(off.status == 404)
        }
    }

    @Test("a mutation whose audit record would exceed a log entry is refused before forwarding")
    func oversizedRecordRefused() async throws {
        try await withTestProxy { proxy in
            let name = String(repeating: "n", count: 70_000)
            let answer = try await proxy.create(name: name)
            #expect(answer.status == 413)
            #expect(answer.error?["code"] as? String == "mixpeek_proxy.audit_record_too_large")
            #expect(answer.header("Mixpeek-Proxy-Audit-Index") == nil)
            #expect(!(try await proxy.list().keyNames.contains(name)))
        }
    }

    @Test("a record changed under the tree, or the log truncated, is caught against a saved checkpoint, naming the index")
    func tamperCaught() async throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/audit.sqlite"
        let signing = try Self.signing(dir)
        do {
            let log = try AuditLog(path: path, signing: signing, logger: Self.logger)
            try await Self.append(40, to: log)
        }
        let saved = try Self.checkpoint(try #require(try AuditLog.openForReading(path: path, logger: Self.logger).latestCheckpoint()),
                                        signing.verifier)
        #expect(try AuditLog.openForReading(path: path, logger: Self.logger).verifyLog(extending: saved).isIntact)
        let copy = dir + "/truncated.sqlite"
        for suffix in ["", "-wal"] where FileManager.default.fileExists(atPath: path + suffix) {
            try FileManager.default.copyItem(atPath: path + suffix, toPath: copy + suffix)
        }
        let queue = try DatabaseQueue(path: path)
        try await queue.write { db in
            try db.execute(sql: "DROP TRIGGER audit_records_no_update")
            try db.execute(sql: "UPDATE audit_records SET user_email = 'mallory@example.com' WHERE seq = 13")
        }
        let changed = try AuditLog.openForReading(path: path, logger: Self.logger).verifyLog(extending: saved)
        #expect(!changed.isIntact)
        #expect(changed.badIndex == 12)
        let truncating = try DatabaseQueue(path: copy)
        try await truncating.write { db in
            try db.execute(sql: "DROP TRIGGER audit_records_no_delete; DROP TRIGGER log_subtrees_no_delete")
            try db.execute(sql: "DELETE FROM audit_records WHERE seq > 30")
            try db.execute(sql: "DELETE FROM log_subtrees WHERE level = 0 AND idx >= 30")
        }
        let truncated = try AuditLog.openForReading(path: copy, logger: Self.logger).verifyLog(extending: saved)
        #expect(truncated.badIndex == 30)
    }
}
