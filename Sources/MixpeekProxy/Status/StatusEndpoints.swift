import Foundation
import MixpeekHTTP
import NIOCore
import NIOHTTP1

/// Who may see the status page and its JSON (`status_page`).
public enum StatusPageAccess: String, Sendable, CaseIterable {
    /// Every client that can reach the proxy.
    case on
    /// Nobody: the paths answer 404.
    case off
    /// Clients on this machine only, asking for it by a loopback name (the default).
    case loopback
}

/// `GET /_proxy/` (the page), `GET /_proxy/status.json` (its data) and
/// `POST /_proxy/audit/verify` (the page's verify button).
extension Proxy {
    static let statusPaths: Set<Substring> = ["/_proxy", "/_proxy/", "/_proxy/status.json", "/_proxy/audit/verify"]

    func statusEndpoint(_ request: HTTPRequest, on eventLoop: any EventLoop) -> HTTPReply {
        guard let status, settings.statusPage != .off else {
            return .now(ProxyError.notFound("the status page is off (status_page = off)").response())
        }
        if let refusal = Self.statusRefusal(request, access: settings.statusPage) {
            return .now(refusal.response())
        }
        func later(_ work: @escaping @Sendable () async -> HTTPResponse) -> HTTPReply {
            let promise = eventLoop.makePromise(of: HTTPResponse.self)
            promise.completeWithTask(work)
            return .later(promise.futureResult)
        }
        switch (request.method, request.path) {
        case (.GET, "/_proxy/status.json"), (.HEAD, "/_proxy/status.json"):
            return later { Self.withStatusHeaders(Self.json(await status.snapshot()), policy: "default-src 'none'; frame-ancestors 'none'") }
        case (.GET, "/_proxy/audit/verify"), (.HEAD, "/_proxy/audit/verify"):
            return .now(ProxyError.methodNotAllowed(allowed: "POST").response())
        case (.POST, "/_proxy/audit/verify"):
            // A form posted without the script wants the page back; the script wants the result.
            let wantsPage = request.headers.first(name: "accept")?.contains("text/html") == true
            return later {
                let result = await status.verifyAudit()
                if wantsPage {
                    return Self.withStatusHeaders(HTTPResponse(status: .seeOther, headers: ["location": "/_proxy/"]), policy: "default-src 'none'")
                }
                return Self.withStatusHeaders(Self.json(result), policy: "default-src 'none'; frame-ancestors 'none'")
            }
        case (.GET, _), (.HEAD, _):
            return later {
                let page = StatusPage.render(await status.snapshot())
                return Self.withStatusHeaders(
                    HTTPResponse(status: .ok, headers: ["content-type": "text/html; charset=utf-8"], body: ByteBuffer(string: page)),
                    policy: StatusPage.contentSecurityPolicy)
            }
        default:
            return .now(ProxyError.methodNotAllowed(allowed: request.path == "/_proxy/audit/verify" ? "POST" : "GET").response())
        }
    }

    /// Why `request` may not see the page under `access`, or nil.
    ///
    /// With `loopback`, the client must connect from this machine and name the proxy by a
    /// loopback address or `localhost` in `Host`: a web page elsewhere whose domain resolves to
    /// 127.0.0.1 (DNS rebinding) then gets nothing. With any setting, a POST from a browser
    /// must come from a page of this proxy (`Origin`), so that another site cannot make a
    /// visitor's browser post to it, nor a request its browser marks as cross-site.
    static func statusRefusal(_ request: HTTPRequest, access: StatusPageAccess) -> ProxyError? {
        let host = request.headers.first(name: "host")
        if access == .loopback {
            guard let remote = request.remoteAddress, isLoopback(remote) else {
                return .forbidden("the status page is served to clients on this machine only (status_page = loopback)")
            }
            guard let host, isLoopbackName(host) else {
                return .forbidden("the status page answers only to a loopback Host (127.0.0.1, [::1] or localhost)")
            }
        }
        if request.method != .GET && request.method != .HEAD {
            // A browser says where a request comes from in `Sec-Fetch-Site` even when it sends
            // no `Origin`; `none` is the user's own action (typed, bookmarked).
            if let site = request.headers.first(name: "sec-fetch-site"), site != "same-origin", site != "none" {
                return .forbidden("a request from another site (Sec-Fetch-Site \(site)) may not change anything on the proxy")
            }
            if let origin = request.headers.first(name: "origin") {
                guard let host, origin == "http://\(host)" || origin == "https://\(host)" else {
                    return .forbidden("a request from another site's page (Origin \(origin)) may not use the status page")
                }
            }
        }
        return nil
    }

    static func isLoopback(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4(let v4):
            return UInt32(bigEndian: v4.address.sin_addr.s_addr) >> 24 == 127
        case .v6:
            guard let ip = address.ipAddress?.lowercased() else { return false }
            return ip == "::1" || (ip.hasPrefix("::ffff:127.") && !ip.dropFirst(7).contains(":"))
        default:
            return false
        }
    }

    /// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
    static func isLoopbackName(_ host: String) -> Bool {
        var name = host.lowercased()
        if name.hasPrefix("[") {
            return name.hasPrefix("[::1]") && (name == "[::1]" || name.hasPrefix("[::1]:"))
        }
        if let colon = name.lastIndex(of: ":") { name = String(name[..<colon]) }
        if name == "localhost" { return true }
        let octets = name.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
    }

    /// Adds what every status response carries: never stored, no sniffing, no referrer, and
    /// its Content-Security-Policy.
    private static func withStatusHeaders(_ response: HTTPResponse, policy: String) -> HTTPResponse {
        var response = response
        response.headers.replaceOrAdd(name: "cache-control", value: "no-store")
        response.headers.replaceOrAdd(name: "content-security-policy", value: policy)
        response.headers.replaceOrAdd(name: "x-content-type-options", value: "nosniff")
        response.headers.replaceOrAdd(name: "referrer-policy", value: "no-referrer")
        return response
    }
}
