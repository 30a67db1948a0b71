import Foundation
import MixpeekProxy
import Testing

@Suite("Configuration")
struct ConfigTests {
    static let shippedFile = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config/mixpeek-proxy.conf").path

    @Test("the shipped config file is valid and states the defaults")
    func shippedFileIsTheDefaults() throws {
        let config = try ProxyConfig.load(file: Self.shippedFile, environment: [:], flags: [:])
        #expect(config == ProxyConfig())
    }

    @Test("every setting is documented in the shipped file")
    func everyKeyDocumented() throws {
        let text = try String(contentsOfFile: Self.shippedFile, encoding: .utf8)
        for key in ProxyConfig.keys {
            #expect(text.contains("\(key.name) ="), "\(key.name) is missing from config/mixpeek-proxy.conf")
        }
    }

    @Test("flags win over the environment, which wins over the file")
    func precedence() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID()).conf").path
        try "cache_ttl = 10\nport = 9000\nlog_format = json\n".write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let config = try ProxyConfig.load(
            file: file, environment: ["MIXPEEK_PROXY_CACHE_TTL": "20", "MIXPEEK_PROXY_PORT": "9100"], flags: ["port": "9200"])
        #expect(config.cacheTTL == 20)
        #expect(config.port == 9200)
        #expect(config.logFormat == .json)
    }

    @Test("an unknown key stops start-up with a message naming it and its line")
    func unknownKey() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID()).conf").path
        try "port = 8080\ncache_tl = 10\n".write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let error = #expect(throws: ConfigError.self) { try ProxyConfig.load(file: file, environment: [:], flags: [:]) }
        #expect(error?.message.contains("unknown setting 'cache_tl'") == true)
        #expect(error?.message.contains("line 2") == true)
    }

    @Test("a bad value names the key, the value and where it came from", arguments: [
        ("port", "eighty", "flag --port"), ("cache_ttl", "-1", "flag --cache-ttl"), ("upstream", "ftp://x", "flag --upstream"),
        ("log_level", "loud", "flag --log-level"), ("pass_through", "maybe", "flag --pass-through"),
        ("event_loops", "-1", "flag --event-loops"), ("access_log", "", "flag --access-log"), ("access_log", "/tmp", "flag --access-log"),
        ("access_log", "logs/", "flag --access-log"),
    ])
    func badValue(key: String, value: String, source: String) throws {
        let error = #expect(throws: ConfigError.self) { try ProxyConfig.load(file: nil, environment: [:], flags: [key: value]) }
        #expect(error?.message.hasPrefix("\(key) = \"\(value)\" in \(source): expected") == true)
    }

    @Test("event_loops: one by default, as set, and 0 means the CPUs the process may run on")
    func eventLoops() throws {
        #expect(ProxyConfig().resolvedEventLoops == 1)
        #expect(try ProxyConfig.load(file: nil, environment: ["MIXPEEK_PROXY_EVENT_LOOPS": "3"], flags: [:]).resolvedEventLoops == 3)
        let perCPU = try ProxyConfig.load(file: nil, environment: [:], flags: ["event_loops": "0"]).resolvedEventLoops
        #expect((1...ProcessInfo.processInfo.activeProcessorCount).contains(perCPU))
    }

    @Test("access_log: stderr by default, off, or a file path; log_level does not turn it off")
    func accessLog() throws {
        #expect(ProxyConfig().accessLog == .stderr)
        #expect(try ProxyConfig.load(file: nil, environment: [:], flags: ["access_log": "OFF"]).accessLog == .off)
        #expect(try ProxyConfig.load(file: nil, environment: [:], flags: ["access_log": "stderr"]).accessLog == .stderr)
        #expect(try ProxyConfig.load(file: nil, environment: ["MIXPEEK_PROXY_ACCESS_LOG": "/var/log/mixpeek-proxy/access.log"], flags: [:])
            .accessLog == .file("/var/log/mixpeek-proxy/access.log"))
        #expect(try ProxyConfig.load(file: nil, environment: [:], flags: ["log_level": "warning"]).accessLog == .stderr)
    }

    @Test("an access_log file that cannot be opened stops start-up with a message naming it")
    func accessLogUnopenable() async throws {
        var config = ProxyConfig()
        config.port = 0
        config.dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("al-\(UUID())").path
        config.accessLog = .file("/nonexistent-\(UUID())/access.log")
        defer { try? FileManager.default.removeItem(atPath: config.dataDir) }
        let error = await #expect(throws: ConfigError.self) { _ = try await ProxyApp.start(config: config) }
        #expect(error?.message.hasPrefix("access_log: cannot open /nonexistent-") == true)
    }

    @Test("a bad environment value names the variable")
    func badEnvironment() throws {
        let error = #expect(throws: ConfigError.self) {
            try ProxyConfig.load(file: nil, environment: ["MIXPEEK_PROXY_UPSTREAM_TIMEOUT": "soon"], flags: [:])
        }
        #expect(error?.message.contains("MIXPEEK_PROXY_UPSTREAM_TIMEOUT") == true)
    }

    @Test("a non-loopback address is refused unless explicitly allowed")
    func loopbackOnly() async throws {
        var config = ProxyConfig()
        config.host = "0.0.0.0"
        config.port = 0
        config.dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("nl-\(UUID())").path
        await #expect(throws: ConfigError.self) { _ = try await ProxyApp.start(config: config) }
    }
}
