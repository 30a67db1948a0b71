import Foundation
import GRDB
@testable import MixpeekProxy
import NIOCore
import Testing

/// A large cache file is opened without reading every page first; the whole-file check runs
/// in the background, and damage it finds still ends with the file moved aside.
@Suite("Cache store start")
struct CacheStoreStartTests {
    static let bounds = CacheStore.Bounds(maxEntries: 1_000, maxBytes: 1 << 20)
    static let key = CacheKey(credential: "c", user: "alice@example.com", includeRevoked: false)
    static let entry = CachedList(status: 200, contentType: "application/json", etag: nil, lastModified: nil,
                                  body: ByteBuffer(string: #"{"keys":[]}"#), storedAt: 1)

    @Test("a sound file checked in the background stays in use")
    func soundFileStaysInUse() async throws {
        try await withScratchDir { dir in
            let path = dir + "/cache.sqlite"
            let first = try CacheStore.open(path: path, bounds: Self.bounds, logger: .init(label: "test"))
            first.save(Self.entry, for: Self.key, logger: .init(label: "test"))
            #expect(try await first.load(Self.key) == Self.entry)

            let store = try CacheStore.open(path: path, bounds: Self.bounds, logger: .init(label: "test"), checkBeforeUse: 0)
            await store.backgroundCheckFinished()
            #expect(try await store.load(Self.key) == Self.entry)
            #expect(try Self.aside(dir).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: path + ".damaged"))
        }
    }

    @Test("damage the background check finds stops the file's use, and the next start moves it aside")
    func damageFoundInBackground() async throws {
        try await withScratchDir { dir in
            let path = dir + "/cache.sqlite"
            try CacheTests.Damage.damagedPage.write(to: path)
            let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
            let store = try CacheStore.open(path: path, bounds: Self.bounds, logger: .init(label: "test"), checkBeforeUse: size - 1)
            #expect(try Self.aside(dir).isEmpty, "opened as it is: only the whole-file check sees this damage")
            await store.backgroundCheckFinished()
            #expect(FileManager.default.fileExists(atPath: path + ".damaged"))
            store.save(Self.entry, for: Self.key, logger: .init(label: "test"))
            #expect(try await store.load(Self.key) == nil, "a damaged file is no longer read or written")
            #expect(try Self.aside(dir).isEmpty, "not moved while in use")

            let next = try CacheStore.open(path: path, bounds: Self.bounds, logger: .init(label: "test"), checkBeforeUse: size - 1)
            #expect(try Self.aside(dir).count == 1)
            #expect(!FileManager.default.fileExists(atPath: path + ".damaged"))
            next.save(Self.entry, for: Self.key, logger: .init(label: "test"))
            #expect(try await next.load(Self.key) == Self.entry)
        }
    }

    @Test("a file that is not a database is moved aside at open, whatever its size",
          arguments: [CacheTests.Damage.garbage, .badHeader])
    func unreadableFileMovedAsideAtOpen(_ damage: CacheTests.Damage) async throws {
        try await withScratchDir { dir in
            let path = dir + "/cache.sqlite"
            try damage.write(to: path)
            let store = try CacheStore.open(path: path, bounds: Self.bounds, logger: .init(label: "test"), checkBeforeUse: 0)
            #expect(try Self.aside(dir).count == 1)
            store.save(Self.entry, for: Self.key, logger: .init(label: "test"))
            #expect(try await store.load(Self.key) == Self.entry)
        }
    }

    static func aside(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("cache.sqlite.corrupt-") }
    }

    func withScratchDir(_ body: (String) async throws -> Void) async throws {
        let dir = TestProxy.makeDataDir()
        try DataFiles.createPrivateDirectory(at: dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await body(dir)
    }
}
