import Foundation
import GRDB
import Logging
@testable import MixpeekProxy
import Testing

@Suite("Audit readers never change the file")
struct AuditReadOnlyTests {
    @Test("query and verify open audit.sqlite read-only: the file's bytes are the same afterwards, and a write through that log fails")
    func readOnly() async throws {
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let proxy = try await TestProxy.start(dataDir: dataDir)
        _ = try await proxy.create(name: "ro-key")
        await proxy.stop()
        let path = dataDir + "/audit.sqlite"
        let before = try Data(contentsOf: URL(fileURLWithPath: path))

        let log = try AuditLog.openForReading(path: path, logger: Logger(label: "test"))
        var entries: [AuditEntry] = []
        try log.query(AuditFilter()) { entries.append($0) }
        #expect(entries.map(\.key_name) == ["ro-key"])
        #expect(try log.verify().isIntact)
        await #expect(throws: (any Error).self) {
            try await log.recordIntent(AuditIntent(action: .delete, user: "a", key: "k", caller: "c", client: "127.0.0.1", requestID: "r"))
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
    }

    @Test("a file with a newer schema gets a clear message, not a migration")
    func newerSchema() async throws {
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let proxy = try await TestProxy.start(dataDir: dataDir)
        await proxy.stop()
        let path = dataDir + "/audit.sqlite"
        let writer = try DatabaseQueue(path: path)
        try await writer.write { db in
            try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v99-from-the-future')")
        }
        try writer.close()
        #expect {
            _ = try AuditLog.openForReading(path: path, logger: Logger(label: "test"))
        } throws: { error in
            "\(error)".contains("written by a newer mixpeek-proxy")
        }
    }
}
