#!/usr/bin/env python3
"""The status page in a real browser: Debian's headless Chromium, driven over the Chrome
DevTools Protocol on a pipe (--remote-debugging-pipe: no driver, no websocket, nothing from
PyPI).

Starts `mixpeek-proxy fake-upstream` and `mixpeek-proxy serve` in front of it, runs a tour
(creates, lists, a rotate, a 403), then in the browser: reads the page with scripts off (the
server's render) and on (the script's render from status.json) and checks they agree with
the tour, sees a list made afterwards arrive without a reload, clicks 'verify now', checks a
key named like markup stays text, that a phone-width page does not scroll sideways and that
the console shows no CSP violation or error, and saves screenshots under .build/.

    python3 scripts/status_page_check.py [path/to/mixpeek-proxy]   (default .build/debug/mixpeek-proxy)
    python3 scripts/status_page_check.py --group [path/to/mixpeek-proxy]

`--group`: two proxies in a group on a throwaway PostgreSQL (Debian's, on loopback), the tour
through one of them; the page shows the audit panel from the group's chain and the group panel
(LISTEN, lease, members and how far behind each is). Screenshot: .build/status-page-group.png.
"""
import json, os, shutil, subprocess, sys, tempfile, time, urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proctools import Checks, start, stop  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "sk_browser_0123456789abcdefghijklmnop"
MARKUP = "<img src=x onerror=alert(1)>"


class Browser:
    """Headless Chromium and one page in it, spoken to over fds 3 (commands) and 4 (replies)."""

    def __init__(self, profile):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if not binary:
            raise RuntimeError("no chromium on PATH (scripts/setup.sh installs Debian's)")
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()

        def pipes_as_3_and_4():
            # Copied above 4 first so that neither dup2 overwrites the other's source.
            a, b = os.dup(to_browser), os.dup(from_browser)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(profile, "chromium.log"), "w"),
            close_fds=False, preexec_fn=pipes_as_3_and_4)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events = []
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(domain + ".enable")

    def _read_message(self, deadline):
        while b"\0" not in self._buffer:
            if time.time() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, session=True, timeout=30):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, seconds=15):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.evaluate(expression):
                return True
            time.sleep(0.2)
        return False

    def open(self, url, scripts=True, width=1100, height=900):
        self.call("Emulation.setScriptExecutionDisabled", {"value": not scripts})
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", {"url": url})
        deadline = time.time() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._read_message(deadline))

    def click(self, selector):
        x, y = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def screenshot(self, path):
        width = self.evaluate("window.innerWidth")
        # Measured in a short viewport, so that the picture ends where the page does.
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 200, "deviceScaleFactor": 1, "mobile": width < 600})
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            import base64
            f.write(base64.b64decode(data))

    def console_problems(self):
        problems = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Log.entryAdded" and params["entry"]["level"] == "error":
                problems.append(params["entry"]["text"])
            elif method == "Runtime.exceptionThrown":
                problems.append(json.dumps(params["exceptionDetails"])[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                problems.append(json.dumps(params.get("args"))[:300])
            elif method == "Page.javascriptDialogOpening":
                problems.append("a dialog opened: " + params.get("message", ""))
        return problems

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def send(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def tour(base):
    """2 creates, 3 lists (a miss, then hits), a rotate, a refused delete: 4 mutations."""
    keys = "/v1/organizations/users/alice@example.com/api-keys"
    statuses = [
        send(base, "POST", keys, {"name": "ci-key"})[0],
        send(base, "POST", keys, {"name": MARKUP})[0],
        send(base, "GET", keys)[0], send(base, "GET", keys)[0], send(base, "GET", keys)[0],
        send(base, "POST", keys + "/ci-key/rotate")[0],
        send(base, "DELETE", keys + "/admin-key")[0],
    ]
    return statuses


FIGURES = "Object.fromEntries([...document.querySelectorAll('[data-v]')].map(e => [e.dataset.v, e.textContent]))"
ROWS = "[...document.querySelectorAll('#mutations tbody tr')].map(tr => [...tr.cells].map(td => td.textContent))"
REVOKED = "[...document.querySelectorAll('#revocations tbody tr')].map(tr => [...tr.cells].map(td => td.textContent))"


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build/debug/mixpeek-proxy"))
    out_dir = os.path.join(ROOT, ".build")
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="mixpeek-status-")
    check = Checks()
    fake = proxy = browser = None
    try:
        fake, fake_port = start(binary, ["fake-upstream", "--port", "0"], os.path.join(work, "fake.log"))
        proxy, port = start(binary, ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}",
                                     "--data-dir", os.path.join(work, "data"), "--log-level", "warning"],
                            os.path.join(work, "proxy.log"))
        base = f"http://127.0.0.1:{port}"
        statuses = tour(base)
        check("the tour ran (200s, then 403 for admin-key)", statuses == [200, 200, 200, 200, 200, 200, 403], str(statuses))

        os.makedirs(os.path.join(work, "profile"))
        browser = Browser(os.path.join(work, "profile"))
        page = base + "/_proxy/"

        browser.open(page, scripts=False)
        served = browser.evaluate(FIGURES)
        served_revoked = browser.evaluate(REVOKED)
        check("without scripts the server's page shows the savings",
              (served.get("savings.hits"), served.get("savings.misses"), served.get("savings.upstream_list_calls_saved"),
               served.get("savings.hit_ratio")) == ("2", "1", "2", "66.7%"), json.dumps(served)[:400])
        check("without scripts the page reloads itself (noscript refresh)",
              browser.evaluate("document.querySelector('noscript') !== null && document.documentElement.innerHTML.includes('http-equiv=\"refresh\"')"))

        browser.open(page, scripts=True)
        check("the script runs under the page's CSP and refreshes from status.json",
              browser.wait_for("document.getElementById('live').textContent === 'live'"))
        live = browser.evaluate(FIGURES)
        differing = {k: (served.get(k), v) for k, v in live.items() if served.get(k) != v and k not in ("generated_at", "audit.records")}
        check("the script's render of status.json shows what the server rendered", not differing, json.dumps(differing)[:400])
        check("upstream shows reachable", live.get("upstream.state") == "reachable", live.get("upstream.state"))
        rows = browser.evaluate(ROWS)
        check("four mutations listed, newest first",
              [r[1] for r in rows] == ["delete", "rotate", "create", "create"], json.dumps(rows)[:400])
        check("the refused delete shows as rejected 403 on admin-key",
              rows and rows[0][3:6] == ["admin-key", "rejected", "403"], json.dumps(rows[:1]))
        check("a key named like markup is shown as text, never as an element",
              any(r[3] == MARKUP for r in rows) and browser.evaluate("document.querySelectorAll('main img').length") == 0)
        revoked = browser.evaluate(REVOKED)
        check("the rotate's old secret is listed among the revocations: ci-key's prefix, by rotate, through this proxy; "
              "the server's render and the script's agree",
              len(revoked) == 1 and revoked[0][1].startswith("sk_") and revoked[0][2:6] == ["ci-key", "alice@example.com", "rotate", "this proxy"]
              and revoked == served_revoked and live.get("cache.revoked_credentials") == "1",
              json.dumps([revoked, served_revoked])[:400])
        check("no token on the page", TOKEN not in browser.evaluate("document.documentElement.outerHTML"))
        check("the chain head is shown with a copy button",
              browser.evaluate("/^[0-9]+:[0-9a-f]{64}$/.test(document.getElementById('head').textContent) && !document.getElementById('copy-head').hidden"))

        # The rotate emptied alice's cache: a miss, then a hit.
        send(base, "GET", "/v1/organizations/users/alice@example.com/api-keys")
        send(base, "GET", "/v1/organizations/users/alice@example.com/api-keys")
        check("lists made afterwards show up without a reload",
              browser.wait_for("document.querySelector('[data-v=\"savings.hits\"]').textContent === '3'", seconds=12))

        check("before 'verify now' the last verification is 'never'",
              browser.evaluate("document.getElementById('verdict').textContent") == "never")
        browser.click("#verify")
        check("clicking 'verify now' shows the chain intact",
              browser.wait_for("document.getElementById('verdict').textContent === 'intact'"))
        check("the verification's time is shown",
              browser.evaluate("document.querySelector('[data-v=\"audit.last_verification.time\"]').textContent.startsWith('20')"))
        check("the chart has a bar for the running minute", browser.evaluate("document.querySelectorAll('#bars rect').length") > 0)
        browser.screenshot(os.path.join(out_dir, "status-page.png"))

        browser.open(page, scripts=True, width=390, height=844)
        browser.wait_for("document.getElementById('live').textContent === 'live'")
        check("at phone width the page does not scroll sideways",
              browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth"),
              str(browser.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")))
        browser.screenshot(os.path.join(out_dir, "status-page-phone.png"))

        problems = browser.console_problems()
        check("no CSP violation, error or dialog in the console", not problems, "; ".join(problems)[:600])
        print(f"status page check: screenshots in {out_dir}/status-page.png and status-page-phone.png")
    except Exception as error:  # a failure to even run is one failed check, with its reason
        check("the browser check ran", False, repr(error))
    finally:
        if browser:
            browser.close()
        for proc in (proxy, fake):
            if proc:
                stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return check.summary("status page check")


def group_main(binary):
    """The status page of a group member, in the browser."""
    import pgtools
    out_dir = os.path.join(ROOT, ".build")
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="mixpeek-status-group-")
    check = Checks()
    pg = fake = browser = None
    proxies = []
    try:
        pg = pgtools.Postgres()
        pg.start()
        pg.psql("CREATE ROLE mixpeek_proxy LOGIN PASSWORD 'status-page'")
        migrated = subprocess.run([binary, "group", "migrate", "--postgres-url", pg.url + "?sslmode=disable", "--grant", "mixpeek_proxy"],
                                  capture_output=True, text=True, timeout=60)
        check("group migrate --grant (exit 0)", migrated.returncode == 0, migrated.stderr[-300:])
        url = pg.url_for("mixpeek_proxy", "status-page")
        fake, fake_port = start(binary, ["fake-upstream", "--port", "0"], os.path.join(work, "fake.log"))
        ports = []
        for name in ("runner-a", "runner-b"):
            proc, port = start(binary, ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}",
                                        "--data-dir", os.path.join(work, name), "--log-level", "warning",
                                        "--postgres-url", url, "--proxy-id", name], os.path.join(work, f"{name}.log"))
            proxies.append(proc)
            ports.append(port)
        base = f"http://127.0.0.1:{ports[0]}"

        def joined():
            try:
                with urllib.request.urlopen(base + "/_proxy/status.json", timeout=5) as reply:
                    group = json.loads(reply.read()).get("group") or {}
                return len([m for m in group.get("members", []) if m.get("live")]) == 2 and group.get("serving_hits")
            except (OSError, ValueError):
                return False
        deadline = time.time() + 20
        while time.time() < deadline and not joined():
            time.sleep(0.2)
        statuses = tour(base)
        check("the tour ran through runner-a (200s, then 403 for admin-key)", statuses == [200, 200, 200, 200, 200, 200, 403], str(statuses))
        # One more mutation through the other member: the chain is the group's.
        other = send(f"http://127.0.0.1:{ports[1]}", "POST", "/v1/organizations/users/bob@example.com/api-keys", {"name": "via-b"})[0]
        check("and a create through runner-b", other == 200, str(other))

        os.makedirs(os.path.join(work, "profile"))
        browser = Browser(os.path.join(work, "profile"))
        browser.open(base + "/_proxy/", scripts=True)
        check("the script runs and refreshes from status.json", browser.wait_for("document.getElementById('live').textContent === 'live'"))
        rows = browser.evaluate(ROWS)
        check("the audit panel shows the group's chain: runner-b's create newest, then runner-a's four mutations",
              [r[1] for r in rows][:5] == ["create", "delete", "rotate", "create", "create"] and rows[0][3] == "via-b", json.dumps(rows)[:400])
        members = browser.evaluate("[...document.querySelectorAll('#group-members tbody tr')].map(tr => [tr.className, ...[...tr.cells].map(td => td.textContent)])")
        check("the group panel lists both members, live, with how far each has read",
              sorted(m[1] for m in members) == ["runner-a", "runner-b"] and all(m[0] == "live" and m[2].startswith("live") for m in members),
              json.dumps(members)[:400])
        check("and says LISTEN is connected and hits are served under the lease",
              browser.evaluate("document.getElementById('group-listen').textContent") == "connected"
              and browser.evaluate("document.getElementById('group-serving').textContent").startswith("served"))
        check("the PostgreSQL role is shown as one that cannot rewrite the chain",
              "not rewrite" in browser.evaluate("document.getElementById('audit-role').textContent"))
        browser.click("#verify")
        check("clicking 'verify now' walks the group's chain: intact",
              browser.wait_for("document.getElementById('verdict').textContent === 'intact'", seconds=30))
        check("no token on the page", TOKEN not in browser.evaluate("document.documentElement.outerHTML"))
        browser.screenshot(os.path.join(out_dir, "status-page-group.png"))
        problems = browser.console_problems()
        check("no CSP violation, error or dialog in the console", not problems, "; ".join(problems)[:600])
        print(f"status page check (group): screenshot in {out_dir}/status-page-group.png")
    except Exception as error:
        check("the browser check of a group member ran", False, repr(error))
    finally:
        if browser:
            browser.close()
        for proc in proxies + [fake]:
            if proc:
                stop(proc)
        if pg:
            pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return check.summary("status page check (group)")


if __name__ == "__main__":
    if "--group" in sys.argv[1:]:
        rest = [a for a in sys.argv[1:] if a != "--group"]
        sys.exit(group_main(os.path.abspath(rest[0] if rest else os.path.join(ROOT, ".build/debug/mixpeek-proxy"))))
    sys.exit(main())
