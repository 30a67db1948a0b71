import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Times as the audit log, the JSON logs and the fake upstream write them.
public enum Timestamp {
    /// An RFC 3339 date-time (`format: date-time`), with or without fractional seconds; one
    /// without an offset is read as UTC, as pydantic reads a naive time for this API.
    public static func parse(_ text: String) -> Date? {
        let pattern = #"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?$"#
        guard text.range(of: pattern, options: .regularExpression) != nil else { return nil }
        var normalized = text.replacingOccurrences(of: " ", with: "T").uppercased()
        // Foundation reads at most milliseconds.
        if let fraction = normalized.range(of: #"\.\d+"#, options: .regularExpression), normalized[fraction].count > 4 {
            normalized.replaceSubrange(fraction, with: normalized[fraction].prefix(4))
        }
        if !(normalized.hasSuffix("Z") || normalized.dropFirst(19).contains("+") || normalized.dropFirst(19).contains("-")) {
            normalized += "Z"
        }
        let withFraction = ISO8601DateFormatter()
        withFraction.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let plain = ISO8601DateFormatter()
        plain.formatOptions = [.withInternetDateTime]
        return withFraction.date(from: normalized) ?? plain.date(from: normalized)
    }

    /// `date` as the proxy writes times, e.g. `2026-11-27T18:54:03.343Z`: byte for byte what
    /// Foundation's ISO 8601 style (year, month, day, time with fractional seconds) makes of
    /// it, at a small part of its cost, which was measurable at a thousand records a second.
    public static func string(_ date: Date) -> String {
        // Split as Foundation does: whole seconds and truncated milliseconds of the time since
        // 2001, the number a `Date` holds. Years before 1900 are left to Foundation, whose
        // calendar turns Julian before 1582 where gmtime stays Gregorian.
        let sinceReference = date.timeIntervalSinceReferenceDate
        let whole = sinceReference.rounded(.down)
        var parts = tm()
        guard whole.magnitude < 1e11, case var seconds = time_t(whole + Date.timeIntervalBetween1970AndReferenceDate),
              gmtime_r(&seconds, &parts) != nil, (1900...9999).contains(parts.tm_year + 1900) else {
            return date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
        }
        var text: [UInt8] = []
        text.reserveCapacity(24)
        func put(_ value: Int32, digits: Int, then separator: Unicode.Scalar) {
            var divisor: Int32 = 1
            for _ in 1..<digits { divisor *= 10 }
            while divisor > 0 {
                text.append(UInt8(ascii: "0") + UInt8(value / divisor % 10))
                divisor /= 10
            }
            text.append(UInt8(ascii: separator))
        }
        put(parts.tm_year + 1900, digits: 4, then: "-")
        put(parts.tm_mon + 1, digits: 2, then: "-")
        put(parts.tm_mday, digits: 2, then: "T")
        put(parts.tm_hour, digits: 2, then: ":")
        put(parts.tm_min, digits: 2, then: ":")
        put(parts.tm_sec, digits: 2, then: ".")
        put(Int32(min((sinceReference - whole) * 1000, 999)), digits: 3, then: "Z")
        return String(decoding: text, as: UTF8.self)
    }
}
