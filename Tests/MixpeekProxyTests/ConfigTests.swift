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
        let readme = try String(contentsOfFile: Self.shippedFile.replacingOccurrences(of: "config/mixpeek-proxy.conf", with: "README.md"), encoding: .utf8)
        for key in ProxyConfig.keys {
            #expect(readme.contains("| \(key.name) | `--\(key.name.replacingOccurrences(of: "_", with: "-"))` | `\(key.environment)` |"),
                    "\(key.name) is missing from the README's configuration table")
        }
    }

    @Test("the audit HMAC key comes from the environment only, and an empty one is none")
    func hmacKeyFromEnvironment() throws {
        #expect(try ProxyConfig.load(file: nil, environment: ["MIXPEEK_PROXY_AUDIT_HMAC_KEY": "k1"], flags: [:]).auditHMACKey == "k1")
        #expect(try ProxyConfig.load(file: nil, environment: ["MIXPEEK_PROXY_AUDIT_HMAC_KEY": ""], flags: [:]).auditHMACKey == nil)
        #expect(throws: ConfigError.self) { try ProxyConfig.load(file: nil, environment: [:], flags: ["audit_hmac_key": "k1"]) }
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
        ("event_loops", "-1", "flag --event-loops"), ("status_page", "public", "flag --status-page"),
        ("access_log", "", "flag --access-log"), ("access_log", "/tmp", "flag --access-log"),
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

    @Test("a non-loopback address is refused unless explicitly allowed", arguments: ["0.0.0.0", "127.example.com"])
    func loopbackOnly(host: String) async throws {
        var config = ProxyConfig()
        config.host = host
        config.port = 0
        config.dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("nl-\(UUID())").path
        await #expect(throws: ConfigError.self) { _ = try await ProxyApp.start(config: config) }
        #expect(!FileManager.default.fileExists(atPath: config.dataDir), "refused before anything is created")
    }

    @Test("loopback is an IP literal in 127.0.0.0/8, ::1, or exactly localhost; a name that merely starts with 127. is not", arguments: [
        ("127.0.0.1", true), ("127.255.255.254", true), ("127.1.2.3", true), ("::1", true), ("0:0:0:0:0:0:0:1", true),
        ("localhost", true),
        ("127.example.com", false), ("127.0.0.1.example.com", false), ("127.0.0.1.", false), ("127.", false),
        ("127.0.0.256", false), ("localhost.example.com", false), ("0.0.0.0", false), ("::", false), ("10.0.0.1", false),
        ("128.0.0.1", false), ("::2", false), ("", false),
    ])
    func loopbackHosts(host: String, loopback: Bool) {
        var config = ProxyConfig()
        config.host = host
        #expect(config.hostIsLoopback == loopback)
    }
}
