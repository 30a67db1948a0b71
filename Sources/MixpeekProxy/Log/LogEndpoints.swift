import Foundation
import MixpeekHTTP
import MixpeekLog
import NIOCore
import NIOHTTP1

/// `GET /_proxy/log/checkpoint`, `/_proxy/log/tile/<L>/<N>[.p/<W>]` and
/// `/_proxy/log/tile/entries/<N>[.p/<W>]`: the verifiable log as C2SP tlog-tiles serves it,
/// read-only, under the status page's access rule. Read on a connection of the status page's
/// reader, off the event loop.
extension Proxy {
    static let logPrefix = "/_proxy/log/"

    func logEndpoint(_ request: HTTPRequest, on eventLoop: any EventLoop) -> HTTPReply {
        guard settings.statusPage != .off else {
            return .now(ProxyError.notFound("the log is served with the status page, which is off (status_page = off)").response())
        }
        if let refusal = Self.statusRefusal(request, access: settings.statusPage) {
            return .now(refusal.response())
        }
        guard request.method == .GET || request.method == .HEAD else {
            return .now(ProxyError.methodNotAllowed(allowed: "GET, HEAD").response())
        }
        let path = request.path.dropFirst(Self.logPrefix.count)
        let promise = eventLoop.makePromise(of: HTTPResponse.self)
        if let log {
            DispatchQueue.global(qos: .userInitiated).async {
                promise.succeed(Self.logResponse(path, from: log))
            }
        } else if let cosigner = (audit as? GroupAuditLog)?.cosigner {
            // The group's log, read from PostgreSQL.
            promise.completeWithTask {
                var note: String?
                var bytes: [UInt8]?
                var failure: (any Error)?
                do {
                    if path == "checkpoint" {
                        note = try await cosigner.servedCheckpoint()
                    } else if path.hasPrefix("tile/"), let tile = Tiles.parse(path.dropFirst("tile/".count)) {
                        bytes = try await cosigner.tile(tile)
                    }
                } catch {
                    failure = error
                }
                func read<T>(_ value: T?) throws -> T? {
                    if let failure { throw failure }
                    return value
                }
                return Self.logResponse(path, checkpoint: { try read(note) }, tile: { _ in try read(bytes) })
            }
        } else {
            return .now(ProxyError.notFound("this proxy serves no verifiable log (its audit log is not open)").response())
        }
        return .later(promise.futureResult)
    }

    /// A lone proxy's log, from its audit file.
    static func logResponse(_ path: Substring, from log: AuditLog) -> HTTPResponse {
        logResponse(path, checkpoint: log.latestCheckpoint, tile: log.tile)
    }

    static func logResponse(_ path: Substring, checkpoint: () throws -> String?, tile read: (Tiles.Tile) throws -> [UInt8]?) -> HTTPResponse {
        do {
            if path == "checkpoint" {
                guard let note = try checkpoint() else { return ProxyError.notFound("the log has no checkpoint yet").response() }
                return HTTPResponse(
                    status: .ok, headers: ["Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"],
                    body: ByteBuffer(string: note))
            }
            guard path.hasPrefix("tile/"), let tile = Tiles.parse(path.dropFirst("tile/".count)) else {
                return ProxyError.notFound("no such log path; try /_proxy/log/checkpoint, /_proxy/log/tile/<L>/<N>[.p/<W>], /_proxy/log/tile/entries/<N>[.p/<W>]").response()
            }
            guard let bytes = try read(tile) else {
                return ProxyError.notFound("\(tile.path) is beyond the tree of the latest checkpoint").response()
            }
            // A full tile never changes; a partial one is replaced by a wider one as the log grows.
            return HTTPResponse(
                status: .ok,
                headers: ["Content-Type": "application/octet-stream",
                          "Cache-Control": tile.isFull ? "public, max-age=31536000, immutable" : "no-cache"],
                body: ByteBuffer(bytes: bytes))
        } catch {
            return ProxyError.logUnreadable.response()
        }
    }
}
