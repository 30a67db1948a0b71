import ArgumentParser
import Foundation
import Logging
import MixpeekProxy

struct Cache: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "See what the list cache saves, or empty it.",
        subcommands: [Stats.self, Purge.self])

    static func open(_ dataDir: DataDirOption) throws -> CacheStore {
        try CacheStore.open(
            path: try dataDir.existingFile("cache.sqlite"), bounds: .init(maxEntries: .max, maxBytes: .max),
            logger: Logger(label: "mixpeek-proxy.cache"))
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Entries, bytes, hits, misses, stale serves and upstream list calls saved.",
            discussion: """
                Counters are saved by the running proxy every 5 s and when it stops; the live figures
                are at GET /_proxy/stats.
                Example:
                  mixpeek-proxy cache stats --data-dir ./mixpeek-proxy-data
                """)

        @OptionGroup var dataDir: DataDirOption
        @Flag(help: "Print JSON instead of text.") var json = false

        func run() throws {
            let store = try Cache.open(dataDir)
            let (entries, bytes) = try store.size()
            let counters = try store.loadCounters()
            if json {
                let object: [String: Any] = [
                    "entries": entries, "bytes": bytes, "hits": counters.hits, "misses": counters.misses,
                    "stale": counters.stale, "bypass": counters.bypass, "coalesced": counters.coalesced,
                    "upstream_list_calls": counters.upstreamListCalls, "upstream_list_calls_saved": counters.saved,
                    "hit_ratio": (counters.hitRatio * 1000).rounded() / 1000,
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            print("""
                entries                    \(entries)
                bytes                      \(bytes)
                hits                       \(counters.hits)
                misses                     \(counters.misses)
                stale serves               \(counters.stale)
                coalesced waits            \(counters.coalesced)
                bypassed (uncacheable)     \(counters.bypass)
                upstream list calls        \(counters.upstreamListCalls)
                upstream list calls saved  \(counters.saved)
                hit ratio                  \(String(format: "%.1f%%", counters.hitRatio * 100))
                """)
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete cached lists from the cache file: one user's, or all.",
            discussion: """
                A running proxy also keeps hits in memory for at most the TTL; restart it, or wait
                the TTL, for a purge to reach those.
                Examples:
                  mixpeek-proxy cache purge --user alice@example.com
                  mixpeek-proxy cache purge
                """)

        @OptionGroup var dataDir: DataDirOption
        @Option(help: "Only this user's lists (every credential).") var user: String?

        func run() async throws {
            let store = try Cache.open(dataDir)
            let before = try store.size().entries
            try await store.delete(user: user)
            let after = try store.size().entries
            print("purged \(before - after) cached list(s)\(user.map { " of \($0)" } ?? "")")
        }
    }
}
