import Crypto
import Foundation

/// The status page: one HTML document rendered from a `StatusSnapshot`, with its style and
/// script inline and allowed by hash in a strict Content-Security-Policy. Every element that
/// shows a figure names its place in the JSON (`data-v`) and its format (`data-f`); the script
/// reads `/_proxy/status.json` every few seconds and fills the same elements with the same
/// formats, so the first paint and each refresh show one thing. Without JavaScript the page
/// reloads itself instead.
enum StatusPage {
    /// How often a page without JavaScript reloads itself; the script refreshes every 5 s.
    static let reloadSeconds = 10

    static func render(_ status: StatusSnapshot) -> String {
        let html: HTML = """
            <!doctype html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>mixpeek-proxy status</title>
            <link rel="icon" href="data:,">
            <noscript><meta http-equiv="refresh" content="\(reloadSeconds)"></noscript>
            <style>\(HTML.constant(style))</style>
            </head>
            <body>
            <header>
            <h1>mixpeek-proxy</h1>
            <p>as of <span data-v="generated_at" data-f="time">\(Format.time(status.generated_at))</span>
            · up since <span data-v="started_at" data-f="time">\(Format.time(status.started_at))</span>
            <span id="live" class="badge s-unknown" hidden>live</span></p>
            </header>
            <main>
            \(savings(status.savings))
            \(upstream(status.upstream))
            \(cache(status.cache))
            \(audit(status.audit))
            \(group(status.group))
            </main>
            <script>\(HTML.constant(script))</script>
            </body>
            </html>

            """
        return html.text
    }

    // MARK: Panels

    private static func savings(_ savings: StatusSnapshot.Savings) -> HTML {
        """
        <section id="savings" class="panel">
        <h2>Savings</h2>
        <div class="figures">
        \(figure("hit ratio", "savings.hit_ratio", Format.percent(savings.hit_ratio), format: "pct", big: true))
        \(figure("upstream list calls saved", "savings.upstream_list_calls_saved", String(savings.upstream_list_calls_saved), big: true))
        \(figure("hits", "savings.hits", String(savings.hits)))
        \(figure("misses", "savings.misses", String(savings.misses)))
        \(figure("stale", "savings.stale", String(savings.stale)))
        \(figure("coalesced", "savings.coalesced", String(savings.coalesced)))
        </div>
        \(chart(savings.minutes))
        <p class="legend"><span class="key saved"></span>from the cache <span class="key miss"></span>upstream
        <span class="key stale"></span>stale · list requests a minute, last hour</p>
        </section>
        """
    }

    private static func upstream(_ upstream: StatusSnapshot.Upstream) -> HTML {
        """
        <section id="upstream" class="panel">
        <h2>Upstream</h2>
        <p><span data-v="upstream.state" data-f="text" data-badge class="badge s-\(upstream.state.rawValue)">\(upstream.state.rawValue)</span>
        <code data-v="upstream.url" data-f="text">\(upstream.url)</code></p>
        <dl>
        <dt>last call</dt><dd data-v="upstream.last_call" data-f="time">\(Format.time(upstream.last_call))</dd>
        <dt>last error</dt><dd><span data-v="upstream.last_error.time" data-f="time">\(Format.time(upstream.last_error?.time))</span>
        <span data-v="upstream.last_error.message" data-f="optional" class="why">\(Format.optional(upstream.last_error?.message))</span></dd>
        \(latency("list misses", "upstream.list_misses", upstream.list_misses))
        \(latency("mutations", "upstream.mutations", upstream.mutations))
        </dl>
        <p class="note">Latencies of upstream calls in the last <span data-v="upstream.window_seconds" data-f="minutes">\(Format.minutes(upstream.window_seconds))</span>.</p>
        </section>
        """
    }

    private static func latency(_ label: String, _ path: String, _ latency: StatusSnapshot.Latency) -> HTML {
        """
        <dt>\(label)</dt><dd>p50 <b data-v="\(path).p50_ms" data-f="ms">\(Format.milliseconds(latency.p50_ms))</b>
        · p99 <b data-v="\(path).p99_ms" data-f="ms">\(Format.milliseconds(latency.p99_ms))</b>
        (<span data-v="\(path).count">\(latency.count)</span> calls)</dd>
        """
    }

    private static func cache(_ cache: StatusSnapshot.Cache) -> HTML {
        """
        <section id="cache" class="panel">
        <h2>Cache</h2>
        <dl>
        <dt>entries on disk</dt><dd><span data-v="cache.entries">\(Format.text(cache.entries.map(String.init)))</span>
        of <span data-v="cache.entries_max">\(cache.entries_max)</span>
        <meter data-m="cache.entries" data-max="cache.entries_max" value="\(cache.entries ?? 0)" max="\(cache.entries_max)"></meter></dd>
        <dt>bytes on disk</dt><dd><span data-v="cache.bytes" data-f="bytes">\(Format.bytes(cache.bytes))</span>
        of <span data-v="cache.bytes_max" data-f="bytes">\(Format.bytes(cache.bytes_max))</span>
        <meter data-m="cache.bytes" data-max="cache.bytes_max" value="\(cache.bytes ?? 0)" max="\(cache.bytes_max)"></meter></dd>
        <dt>memory tier</dt><dd><span data-v="cache.memory_bytes" data-f="bytes">\(Format.bytes(cache.memory_bytes))</span>
        of <span data-v="cache.memory_bytes_max" data-f="bytes">\(Format.bytes(cache.memory_bytes_max))</span>,
        <span data-v="cache.memory_entries">\(cache.memory_entries)</span> lists
        <meter data-m="cache.memory_bytes" data-max="cache.memory_bytes_max" value="\(cache.memory_bytes)" max="\(cache.memory_bytes_max)"></meter></dd>
        <dt>TTL</dt><dd><span data-v="cache.ttl_seconds" data-f="seconds">\(Format.seconds(cache.ttl_seconds))</span>,
        stale when the upstream fails for <span data-v="cache.stale_if_error_seconds" data-f="seconds">\(Format.seconds(cache.stale_if_error_seconds))</span> more</dd>
        <dt>revoked keys</dt><dd><span data-v="cache.revoked_credentials">\(cache.revoked_credentials)</span>,
        through this proxy: their secrets read nothing from the cache</dd>
        </dl>
        \(table(id: "revocations", caption: "the newest \(StatusBoard.recentRevocations) revocations, newest first",
                columns: revocationColumns, empty: "no key revoked through this proxy", rows: cache.recent_revocations.map(revocationCells)))
        </section>
        """
    }

    /// The columns of the revocations table, as `mutationColumns`.
    static let revocationColumns: [Column] = [
        ("time", "time", "time"), ("key_prefix", "prefix", "text"), ("key_name", "key", "text"),
        ("user_email", "owner", "text"), ("via", "by", "text"), ("proxy_id", "through", "text"),
    ]

    private static func revocationCells(_ revoked: StatusSnapshot.RevokedKey) -> [HTML] {
        [
            "<td>\(Format.time(revoked.time))</td>", "<td>\(Format.text(revoked.key_prefix))</td>", "<td>\(revoked.key_name)</td>",
            "<td>\(revoked.user_email)</td>", "<td>\(revoked.via)</td>", "<td>\(Format.text(revoked.proxy_id ?? "this proxy"))</td>",
        ]
    }

    typealias Column = (field: String, heading: String, format: String)

    /// A table the script refills from status.json: it reads the columns from the head and the
    /// text of the one row a table without items has from `data-empty`, so both are written
    /// here once; a row of `cells` an item.
    private static func table(id: String, caption: String, columns: [Column], empty: String, rows: [[HTML]]) -> HTML {
        let head: [HTML] = columns.map { "<th data-c=\"\($0.field)\" data-f=\"\($0.format)\">\($0.heading)</th>" }
        let body: [HTML] = rows.isEmpty ? ["<tr><td colspan=\"\(columns.count)\">\(empty)</td></tr>"] : rows.map { "<tr>\($0)</tr>" }
        return """
            <div class="scroll">
            <table id="\(id)" data-empty="\(empty)">
            <caption>\(caption)</caption>
            <thead><tr>\(head)</tr></thead>
            <tbody>\(body)</tbody>
            </table>
            </div>
            """
    }

    /// The columns of the mutations table: JSON field, heading, format. The script reads them
    /// from the table's head, so they are written down once.
    static let mutationColumns: [Column] = [
        ("time", "time", "time"), ("action", "action", "text"), ("user_email", "user", "text"), ("key_name", "key", "text"),
        ("outcome", "outcome", "text"), ("upstream_status", "status", "text"), ("caller", "caller", "text"), ("actor", "acting key", "text"),
        ("request_id", "request id", "text"), ("trace_id", "trace id", "text"),
    ]

    /// The verifier key auditors check the log's signed checkpoints with (docs/AUDIT.md).
    private static func logKey(_ key: String?) -> HTML {
        guard let key else { return "" }
        return """
            <p>log verifier key <code id="log-key">\(key)</code> · <a href="/_proxy/log/checkpoint">signed checkpoint</a></p>
            """
    }

    private static func logProblem(_ problem: String?) -> HTML {
        guard let problem else { return "" }
        return """
            <p id="log-problem" class="why">mutations refused: \(Format.text(problem))</p>
            """
    }

    private static func audit(_ audit: StatusSnapshot.Audit) -> HTML {
        let verdict = Format.verdict(audit.last_verification)
        return """
            <section id="audit" class="panel wide">
            <h2>Audit</h2>
            <p><span data-v="audit.records">\(audit.records)</span> records · head
            <code id="head" data-v="audit.head" data-f="text">\(Format.text(audit.head))</code>
            <button id="copy-head" type="button" hidden>copy</button></p>
            <form id="verify-form" method="post" action="/_proxy/audit/verify">
            <p>last verification: <span id="verdict" data-v="audit.last_verification" data-f="verdict" data-badge class="badge s-\(verdict)">\(verdict)</span>
            <span data-v="audit.last_verification.time" data-f="time">\(Format.time(audit.last_verification?.time))</span>
            <span data-v="audit.last_verification.problem" data-f="optional" class="why">\(Format.optional(audit.last_verification?.problem))</span>
            <button id="verify" type="submit">verify now</button></p>
            </form>
            \(logKey(audit.log_verifier_key))\(logProblem(audit.log_problem))
            \(reconcile(audit.reconcile))
            \(table(id: "mutations", caption: "the newest \(StatusBoard.recentMutations) mutations, newest first",
                    columns: mutationColumns, empty: "no mutations yet", rows: audit.recent.map(mutationCells)))
            </section>
            """
    }

    /// The last round of `reconcile_interval`, when it is on: "3 changes made around the proxy
    /// in the last 24 h".
    private static func reconcile(_ reconcile: StatusSnapshot.Reconcile?) -> HTML {
        guard let reconcile else { return "" }
        return """
            <p id="reconcile">reconcile with the upstream's audit log:
            <strong><span data-v="audit.reconcile.around_proxy">\(Format.text(reconcile.around_proxy.map(String.init)))</span>
            changes made around the proxy</strong> in the last \(reconcile.window_hours) h ·
            <span data-v="audit.reconcile.unconfirmed">\(Format.text(reconcile.unconfirmed.map(String.init)))</span> unconfirmed ·
            <span data-v="audit.reconcile.resolved_unknown">\(Format.text(reconcile.resolved_unknown.map(String.init)))</span> unknowns settled ·
            as of <span data-v="audit.reconcile.time" data-f="time">\(Format.time(reconcile.time))</span>, every \(Format.seconds(reconcile.interval_seconds))
            <span data-v="audit.reconcile.problem" data-f="optional" class="why">\(Format.optional(reconcile.problem))</span></p>
            """
    }

    private static func mutationCells(_ mutation: StatusSnapshot.Mutation) -> [HTML] {
        [
            "<td>\(Format.time(mutation.time))</td>", "<td>\(mutation.action)</td>", "<td>\(mutation.user_email)</td>",
            "<td>\(Format.text(mutation.key_name))</td>", "<td class=\"o-\(mutation.outcome)\">\(mutation.outcome)</td>",
            "<td>\(Format.text(mutation.upstream_status.map(String.init)))</td>", "<td>\(mutation.caller)</td>",
            "<td>\(Format.text(mutation.actor))</td>",
            "<td>\(mutation.request_id)</td>", "<td>\(Format.text(mutation.trace_id))</td>",
        ]
    }

    /// This proxy in its group (`postgres_url`), and whether its role could rewrite the chain;
    /// nothing for a lone proxy.
    private static func group(_ group: StatusSnapshot.Group?) -> HTML {
        guard let group else { return "" }
        let role: HTML
        switch group.audit_role_can_rewrite {
        case .none: role = "not checked yet (the proxy has not joined)"
        case .some(false): role = "may append to the chain and read it, not rewrite it"
        case .some(true):
            role = "<strong class=\"badge s-broken\">can rewrite the chain</strong> (\(group.audit_role_rights.joined(separator: ", "))): set up with <code>group migrate --grant</code>, or start with <code>--append-only-role</code> to refuse this"
        }
        return """
            <section id="group" class="panel wide">
            <h2>Group</h2>
            <p>proxy <code>\(group.proxy_id)</code> · <span>\(group.state)</span> · LISTEN <span id="group-listen">\(group.listening ? "connected" : "down")</span> · hits <span id="group-serving">\(group.serving_hits ? "served (lease held)" : "not served")</span> · read to <span id="group-read">\(String(group.read_seq))</span> of <span id="group-head">\(group.chain_head.map(String.init) ?? "?")</span> · open mutations <span id="group-open">\(group.open_intents)</span></p>
            <p>PostgreSQL role: <span id="audit-role">\(role)</span></p>
            \(members(group.members))
            </section>
            """
    }

    /// The group's members as `mixpeek_proxies` has them: lease, position, lag.
    private static func members(_ members: [StatusSnapshot.Member]) -> HTML {
        guard !members.isEmpty else { return "<p class=\"empty\">members: PostgreSQL did not answer</p>" }
        let rows = members.map { member -> HTML in
            let lease = member.live ? "live, \(member.lease_left_seconds) s left" : "ended \(-member.lease_left_seconds) s ago"
            return "<tr class=\"\(member.live ? "live" : "gone")\"><td><code>\(member.proxy_id)</code></td><td>\(lease)</td><td>\(String(member.read_seq))</td><td>\(String(member.lag))</td><td>\(member.protocol)</td></tr>"
        }
        return """
            <table id="group-members"><thead><tr><th>member</th><th>lease</th><th>read to</th><th>behind</th><th>protocol</th></tr></thead>
            <tbody>\(rows)</tbody></table>
            """
    }

    private static func figure(_ label: String, _ path: String, _ value: String, format: String = "text", big: Bool = false) -> HTML {
        """
        <div class="figure\(big ? " big" : "")"><span class="value" data-v="\(path)" data-f="\(format)">\(value)</span><span class="label">\(label)</span></div>
        """
    }

    // MARK: Chart

    /// Chart geometry, shared with the script through the SVG's attributes.
    static let chartSlots = MinuteHistory.capacity + 1
    static let slotWidth = 10
    static let chartHeight = 160
    /// Room above the bars for the peak label.
    static let chartTop = 24

    /// Stacked bars, a minute each, right-aligned so that now is at the right edge.
    private static func chart(_ minutes: [MinuteHistory.Minute]) -> HTML {
        let peak = max(1, minutes.map { $0.hits + $0.coalesced + $0.misses + $0.stale }.max() ?? 0)
        let first = chartSlots - minutes.count
        let bars: [HTML] = minutes.enumerated().map { index, minute -> HTML in
            let x = (first + index) * slotWidth
            var y = chartTop + chartHeight
            var rects: [HTML] = []
            for (value, kind) in [(minute.hits + minute.coalesced, "saved"), (minute.misses, "miss"), (minute.stale, "stale")] where value > 0 {
                let height = max(1, value * chartHeight / peak)
                y -= height
                rects.append("<rect class=\"\(kind)\" x=\"\(x + 1)\" y=\"\(y)\" width=\"\(slotWidth - 2)\" height=\"\(height)\"></rect>")
            }
            let title = "\(Format.time(minute.start)): \(minute.hits + minute.coalesced) from the cache, \(minute.misses) upstream, \(minute.stale) stale"
            return "<g class=\"\(minute.partial ? "partial" : "minute")\"><title>\(title)</title>\(rects)</g>"
        }
        let width = chartSlots * slotWidth
        return """
            <svg id="chart" viewBox="0 0 \(width) \(chartHeight + 44)" role="img" aria-label="list requests a minute, last hour"
            data-slots="\(chartSlots)" data-slot="\(slotWidth)" data-height="\(chartHeight)" data-top="\(chartTop)">
            <line class="axis" x1="0" y1="\(chartTop + chartHeight)" x2="\(width)" y2="\(chartTop + chartHeight)"></line>
            <text class="tick" x="0" y="18">peak <tspan id="chart-peak">\(peak)</tspan>/min</text>
            <text class="tick" x="0" y="\(chartHeight + 42)">−60 min</text>
            <text class="tick" x="\(width)" y="\(chartHeight + 42)" text-anchor="end">now</text>
            <g id="bars">\(bars)</g>
            </svg>
            """
    }

    // MARK: Formats

    /// The formats of `data-f`, as the script has them too.
    enum Format {
        static let none = "–"

        static func text(_ value: String?) -> String { value ?? none }
        /// For a detail shown only when there is one.
        static func optional(_ value: String?) -> String { value ?? "" }
        static func percent(_ value: Double) -> String { String(format: "%.1f%%", value * 100) }
        static func milliseconds(_ value: Double?) -> String { value.map { String(format: "%.1f ms", $0) } ?? none }
        static func seconds(_ value: Double) -> String { value == value.rounded() ? "\(Int(value)) s" : "\(value) s" }
        static func minutes(_ seconds: Int) -> String { "\(seconds / 60) min" }

        /// `2026-12-02T03:04:05.678Z` as `2026-12-02 03:04:05`.
        static func time(_ value: String?) -> String {
            guard let value else { return none }
            return String(value.prefix(19)).replacingOccurrences(of: "T", with: " ")
        }

        static func bytes(_ value: Int?) -> String {
            guard let value else { return none }
            if value < 1024 { return "\(value) B" }
            var amount = Double(value) / 1024
            for unit in ["KiB", "MiB", "GiB"] {
                if amount < 1024 || unit == "GiB" { return String(format: "%.1f", amount) + " " + unit }
                amount /= 1024
            }
            return none
        }

        static func verdict(_ verification: StatusSnapshot.Verification?) -> String {
            guard let verification else { return "never" }
            return verification.intact ? "intact" : "broken"
        }
    }

    // MARK: Style and script

    /// `Content-Security-Policy` of the page: nothing but its own inline style and script (by
    /// hash), requests to itself, and forms posted to itself.
    static let contentSecurityPolicy =
        "default-src 'none'; style-src '\(hash(style))'; script-src '\(hash(script))'; connect-src 'self'; "
        + "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

    private static func hash(_ text: StaticString) -> String {
        "sha256-" + Data(SHA256.hash(data: Data("\(text)".utf8))).base64EncodedString()
    }

    static let style: StaticString = """
        :root{--ok:#1a7f37;--warn:#b35900;--bad:#cf222e;--dim:#6e7781;--line:#d0d7de;--panel:#f6f8fa;--fg:#1f2328;--bg:#fff}
        @media (prefers-color-scheme:dark){:root{--ok:#3fb950;--warn:#d29922;--bad:#f85149;--dim:#8b949e;--line:#30363d;--panel:#161b22;--fg:#e6edf3;--bg:#0d1117}}
        *{box-sizing:border-box}
        body{margin:0;padding:1rem;font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
        header{display:flex;flex-wrap:wrap;align-items:baseline;gap:0 1rem}
        h1{font-size:1.3rem;margin:0}
        header p{margin:.2rem 0;color:var(--dim)}
        main{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,330px),1fr));gap:1rem;margin-top:1rem}
        .panel{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;min-width:0}
        .wide{grid-column:1/-1}
        h2{font-size:1rem;margin:0 0 .6rem;text-transform:uppercase;letter-spacing:.05em;color:var(--dim)}
        .figures{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem}
        .figure{display:flex;flex-direction:column}
        .figure .value{font-size:1.2rem;font-weight:600;font-variant-numeric:tabular-nums}
        .figure.big .value{font-size:2rem}
        .label,.note,caption,.legend{color:var(--dim);font-size:.85rem}
        caption{text-align:left;padding:.3rem 0}
        svg{width:100%;height:auto;margin-top:.6rem}
        .saved{fill:var(--ok);background:var(--ok)}.miss{fill:var(--warn);background:var(--warn)}.stale{fill:var(--bad);background:var(--bad)}
        .partial{opacity:.55}
        .axis{stroke:var(--line)}
        .tick{fill:var(--dim);font-size:20px}
        .key{display:inline-block;width:.7rem;height:.7rem;border-radius:2px;margin:0 .25rem 0 .6rem;vertical-align:-1px}
        dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem .8rem;margin:0}
        dt{color:var(--dim)}dd{margin:0;min-width:0;overflow-wrap:anywhere}
        meter{width:100%;height:.6rem;display:block}
        code{font:.85rem ui-monospace,SFMono-Regular,Menlo,monospace;overflow-wrap:anywhere}
        .badge{display:inline-block;padding:0 .5rem;border-radius:999px;color:#fff;font-weight:600;font-size:.85rem;background:var(--dim)}
        .s-reachable,.s-intact,.s-live{background:var(--ok)}.s-erroring{background:var(--warn)}.s-unreachable,.s-broken,.s-offline{background:var(--bad)}
        .why{color:var(--bad)}
        button{font:inherit;padding:.15rem .7rem;border:1px solid var(--line);border-radius:6px;background:var(--bg);color:var(--fg);cursor:pointer}
        button[disabled]{opacity:.6;cursor:progress}
        form{margin:0}
        .scroll{overflow-x:auto}
        table{border-collapse:collapse;width:100%;font-size:.85rem}
        th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid var(--line);white-space:nowrap}
        td.o-ok{color:var(--ok)}td.o-rejected{color:var(--warn)}td.o-error,td.o-timeout,td.o-unknown{color:var(--bad)}
        @media (max-width:600px){body{padding:.5rem}.figure.big .value{font-size:1.6rem}}
        """

    static let script: StaticString = #"""
        'use strict';
        (function () {
          const none = '\u2013';
          const format = {
            text: v => v == null ? none : String(v),
            optional: v => v == null ? '' : String(v),
            pct: v => v == null ? none : (v * 100).toFixed(1) + '%',
            ms: v => v == null ? none : v.toFixed(1) + ' ms',
            seconds: v => v == null ? none : v + ' s',
            minutes: v => v == null ? none : Math.floor(v / 60) + ' min',
            time: v => v == null ? none : String(v).slice(0, 19).replace('T', ' '),
            bytes: v => {
              if (v == null) return none;
              if (v < 1024) return v + ' B';
              let amount = v / 1024;
              for (const unit of ['KiB', 'MiB', 'GiB']) {
                if (amount < 1024 || unit === 'GiB') return amount.toFixed(1) + ' ' + unit;
                amount /= 1024;
              }
            },
            verdict: v => v == null ? 'never' : (v.intact ? 'intact' : 'broken'),
          };
          const at = (data, path) => path.split('.').reduce((o, k) => o == null ? null : o[k], data);
          const svg = 'http://www.w3.org/2000/svg';
          const live = document.getElementById('live');

          function fill(data) {
            for (const el of document.querySelectorAll('[data-v]')) {
              const text = format[el.dataset.f || 'text'](at(data, el.dataset.v));
              el.textContent = text;
              if ('badge' in el.dataset) el.className = 'badge s-' + text;
            }
            for (const meter of document.querySelectorAll('meter[data-m]')) {
              meter.max = at(data, meter.dataset.max) || 1;
              meter.value = at(data, meter.dataset.m) || 0;
            }
            rows('mutations', data.audit.recent || []);
            rows('revocations', (data.cache.recent_revocations || []).map(r => Object.assign({}, r, {proxy_id: r.proxy_id || 'this proxy'})));
            chart(data.savings.minutes || []);
          }

          function rows(id, items) {
            const table = document.getElementById(id);
            const columns = [...table.querySelectorAll('th')].map(th => [th.dataset.c, th.dataset.f]);
            const body = document.createElement('tbody');
            for (const item of items) {
              const tr = body.insertRow();
              for (const [field, f] of columns) {
                const td = tr.insertCell();
                td.textContent = format[f](item[field]);
                if (field === 'outcome') td.className = 'o-' + item.outcome;
              }
            }
            if (!items.length) {
              const td = body.insertRow().insertCell();
              td.colSpan = columns.length;
              td.textContent = table.dataset.empty;
            }
            table.querySelector('tbody').replaceWith(body);
          }

          function chart(minutes) {
            const box = document.getElementById('chart');
            const slots = +box.dataset.slots, slot = +box.dataset.slot, height = +box.dataset.height, top = +box.dataset.top;
            const peak = Math.max(1, ...minutes.map(m => m.hits + m.coalesced + m.misses + m.stale));
            const bars = document.createElementNS(svg, 'g');
            bars.id = 'bars';
            minutes.forEach((m, i) => {
              const x = (slots - minutes.length + i) * slot;
              const g = document.createElementNS(svg, 'g');
              g.setAttribute('class', m.partial ? 'partial' : 'minute');
              const title = document.createElementNS(svg, 'title');
              title.textContent = format.time(m.start) + ': ' + (m.hits + m.coalesced) + ' from the cache, ' + m.misses + ' upstream, ' + m.stale + ' stale';
              g.appendChild(title);
              let y = top + height;
              for (const [value, kind] of [[m.hits + m.coalesced, 'saved'], [m.misses, 'miss'], [m.stale, 'stale']]) {
                if (value <= 0) continue;
                const h = Math.max(1, Math.floor(value * height / peak));
                y -= h;
                const rect = document.createElementNS(svg, 'rect');
                for (const [name, v] of [['class', kind], ['x', x + 1], ['y', y], ['width', slot - 2], ['height', h]]) rect.setAttribute(name, v);
                g.appendChild(rect);
              }
              bars.appendChild(g);
            });
            document.getElementById('bars').replaceWith(bars);
            document.getElementById('chart-peak').textContent = peak;
          }

          async function refresh() {
            try {
              const response = await fetch('/_proxy/status.json', {cache: 'no-store', headers: {Accept: 'application/json'}});
              if (!response.ok) throw new Error(response.status);
              fill(await response.json());
              live.textContent = 'live';
              live.className = 'badge s-live';
            } catch (error) {
              live.textContent = 'offline';
              live.className = 'badge s-offline';
            }
          }

          live.hidden = false;
          const copy = document.getElementById('copy-head');
          copy.hidden = false;
          copy.addEventListener('click', async () => {
            const head = document.getElementById('head').textContent;
            try {
              await navigator.clipboard.writeText(head);
              copy.textContent = 'copied';
            } catch (error) {
              const range = document.createRange();
              range.selectNodeContents(document.getElementById('head'));
              getSelection().removeAllRanges();
              getSelection().addRange(range);
              copy.textContent = 'selected: press Ctrl-C';
            }
            setTimeout(() => { copy.textContent = 'copy'; }, 2000);
          });
          document.getElementById('verify-form').addEventListener('submit', async event => {
            event.preventDefault();
            const button = document.getElementById('verify');
            button.disabled = true;
            button.textContent = 'verifying…';
            try {
              await fetch('/_proxy/audit/verify', {method: 'POST', headers: {Accept: 'application/json'}});
            } finally {
              await refresh();
              button.disabled = false;
              button.textContent = 'verify now';
            }
          });
          refresh();
          setInterval(refresh, 5000);
        })();
        """#
}
