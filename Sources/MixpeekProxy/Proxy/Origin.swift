import Foundation

/// An origin (RFC 6454: scheme, host, port) that redirects may name.
struct Origin: Sendable, Equatable {
    var scheme: String
    var host: String
    var port: Int

    /// The origin of an `http` or `https` URL; nil for anything else.
    init?(url: String) {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
              let defaultPort = Self.defaultPorts[scheme], let host = components.host?.lowercased(), !host.isEmpty
        else { return nil }
        self.scheme = scheme
        self.host = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        port = components.port ?? defaultPort
    }

    init(scheme: String, host: String, port: Int) {
        self.scheme = scheme
        self.host = host
        self.port = port
    }

    private static let defaultPorts = ["http": 80, "https": 443]

    /// `scheme://host:port`, with an IPv6 host in brackets and a default port left out.
    var serialized: String {
        let host = host.contains(":") ? "[\(host)]" : host
        return port == Self.defaultPorts[scheme] ? "\(scheme)://\(host)" : "\(scheme)://\(host):\(port)"
    }
}
