import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// SIGHUP opens the request-log file again: logrotate renames the file, then sends SIGHUP
/// (its `postrotate`), and the lines after it go to a new file at the configured path.
final class HangUpSignal {
    private let source: any DispatchSourceSignal

    init(reopening accessLog: AccessLog) {
        // Without this the signal's default action would end the process.
        signal(SIGHUP, SIG_IGN)
        source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        source.setEventHandler { Task { await accessLog.reopen() } }
        source.resume()
    }

    func cancel() {
        source.cancel()
    }
}
