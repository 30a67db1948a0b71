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
}

/// Runs `body` with a fresh private directory, removed afterwards.
func withScratchDir(_ body: (String) async throws -> Void) async throws {
    let dir = TestProxy.makeDataDir()
    try DataFiles.createPrivateDirectory(at: dir)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try await body(dir)
}

/// The bounds are enforced from totals kept by every write, not by counting the table on each
/// store: replacing an entry, deleting a user and another process emptying the file must all
/// leave them right.
@Suite("Cache store bounds")
struct CacheStoreBoundsTests {
    static func key(_ user: String) -> CacheKey { CacheKey(credential: "c", user: user, includeRevoked: false) }
    static func entry(_ bytes: Int, at time: Double) -> CachedList {
        CachedList(status: 200, contentType: nil, etag: nil, lastModified: nil, body: ByteBuffer(repeating: 0x7B, count: bytes), storedAt: time)
    }

    @Test("replacing one entry again and again counts it once; deleting a user frees its room")
    func replaceAndDelete() async throws {
        try await withScratchDir { dir in
            let store = try CacheStore.open(path: dir + "/cache.sqlite", bounds: .init(maxEntries: 2, maxBytes: 1 << 20), logger: .init(label: "test"))
            for time in 1...5 { store.save(Self.entry(100, at: Double(time)), for: Self.key("a"), logger: .init(label: "test")) }
            store.save(Self.entry(100, at: 6), for: Self.key("b"), logger: .init(label: "test"))
            #expect(try await store.load(Self.key("a")) != nil, "five stores of one key are one entry, so b did not evict it")
            #expect(try await store.load(Self.key("b")) != nil)
            try await store.delete(user: "a")
            store.save(Self.entry(100, at: 7), for: Self.key("c"), logger: .init(label: "test"))
            #expect(try await store.load(Self.key("b")) != nil, "a's delete made room for c")
            #expect(try await store.load(Self.key("c")) != nil)
            store.save(Self.entry(100, at: 8), for: Self.key("d"), logger: .init(label: "test"))
            #expect(try await store.load(Self.key("b")) == nil, "the oldest goes once the bound is passed")
            #expect(try store.size().entries == 2)
        }
    }

    @Test("bytes are counted by replacement size, and another process emptying the file is noticed")
    func bytesAndOutsideChanges() async throws {
        try await withScratchDir { dir in
            let path = dir + "/cache.sqlite"
            let store = try CacheStore.open(path: path, bounds: .init(maxEntries: 100, maxBytes: 1_000), logger: .init(label: "test"))
            store.save(Self.entry(900, at: 1), for: Self.key("a"), logger: .init(label: "test"))
            store.save(Self.entry(100, at: 2), for: Self.key("a"), logger: .init(label: "test"))
            store.save(Self.entry(800, at: 3), for: Self.key("b"), logger: .init(label: "test"))
            #expect(try await store.load(Self.key("a")) != nil, "a shrank to 100 bytes: 900 in all fits")
            let other = try CacheStore.open(path: path, bounds: .init(maxEntries: 100, maxBytes: 1_000), logger: .init(label: "test"))
            try await other.delete(user: nil)
            for (index, user) in ["c", "d", "e"].enumerated() {
                store.save(Self.entry(300, at: Double(10 + index)), for: Self.key(user), logger: .init(label: "test"))
            }
            for user in ["c", "d", "e"] {
                #expect(try await store.load(Self.key(user)) != nil, "\(user): the file was emptied elsewhere, so 900 bytes fit")
            }
            #expect(try store.size().bytes == 900)
        }
    }
}
