#!/usr/bin/env python3
"""Crash and shutdown checks against the real binary (issue 5, item 4).

1. kill -9 during a burst of mutations: after a restart `audit verify` passes, every
   mutation the clients sent has an intent, and the interrupted ones read `unknown`.
2. SIGTERM with requests in flight: they finish with their real answers, nothing is lost,
   and the audit records them as `ok`.
3. A corrupt cache file is moved aside and the proxy serves lists.
4. A self-signed TLS upstream is refused (502) unless its CA file is configured.
5. SIGTERM to `serve` and Ctrl-C to `demo` print no ERROR line.
Prints `crash: N passed, M failed`.
"""
import json, os, re, signal, subprocess, sys, tempfile, threading, time, urllib.request, urllib.error

import proctools
from proctools import Checks, stop

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".build/debug/mixpeek-proxy")
TOKEN = "sk_crash_0123456789abcdefghijklmnop"


check = Checks()


def start(args, log):
    return proctools.start(BIN, args, log)


def call(port, method, path, body=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except Exception as error:  # connection reset by the kill
        return None, str(error)


def audit(data_dir, *args):
    return subprocess.run([BIN, "audit", *args, "--data-dir", data_dir], capture_output=True, text=True, timeout=60)


def kill_during_burst(work):
    data = os.path.join(work, "kill9")
    fake, fake_port = start(["fake-upstream", "--port", "0", "--delay-ms", "400"], os.path.join(work, "fake1.log"))
    try:
        proxy, port = start(["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", data,
                             "--log-level", "warning"], os.path.join(work, "proxy1.log"))
        answers = []
        def client(n):
            answers.append(call(port, "POST", "/v1/organizations/users/burst@example.com/api-keys", {"name": f"k-{n}"}))
        threads = [threading.Thread(target=client, args=(n,)) for n in range(24)]
        for thread in threads:
            thread.start()
            time.sleep(0.03)
        time.sleep(0.2)
        proxy.kill()  # SIGKILL: no chance to write outcomes
        proxy.wait(10)
        for thread in threads:
            thread.join(15)
        answered = sum(1 for status, _ in answers if status == 200)
        # Restart: orphans are closed as unknown.
        proxy, port = start(["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", data,
                             "--log-level", "warning"], os.path.join(work, "proxy1b.log"))
        stop(proxy)
        verify = audit(data, "verify")
        check("kill -9 mid-burst: audit verify passes after restart", verify.returncode == 0, verify.stdout + verify.stderr)
        rows = [json.loads(line) for line in audit(data, "query", "--format", "jsonl").stdout.splitlines() if line]
        unknown = [row for row in rows if row["outcome"] == "unknown"]
        ok = [row for row in rows if row["outcome"] == "ok"]
        check("kill -9 mid-burst: interrupted mutations read unknown", len(unknown) >= 1,
              f"{len(rows)} rows, {len(unknown)} unknown")
        check("kill -9 mid-burst: every answered mutation is recorded ok", len(ok) >= answered,
              f"{answered} answered 200, {len(ok)} recorded ok")
        check("kill -9 mid-burst: no gaps in seq", [r["seq"] for r in rows] == sorted(r["seq"] for r in rows))
        check("kill -9 mid-burst: verify names the unknown mutations", "unknown outcome" in verify.stdout, verify.stdout)
    finally:
        stop(fake)


def sigterm_in_flight(work):
    data = os.path.join(work, "term")
    fake, fake_port = start(["fake-upstream", "--port", "0", "--delay-ms", "800"], os.path.join(work, "fake2.log"))
    try:
        proxy, port = start(["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", data,
                             "--log-level", "warning"], os.path.join(work, "proxy2.log"))
        answers = []
        def client(n):
            answers.append(call(port, "POST", "/v1/organizations/users/term@example.com/api-keys", {"name": f"t-{n}"}))
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        proxy.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(15)
        code = proxy.wait(15)
        statuses = sorted(str(status) for status, _ in answers)
        check("SIGTERM: requests in flight finish with their real answer", statuses == ["200"] * 8, f"{statuses}")
        check("SIGTERM: the proxy exits 0", code == 0, f"exit {code}")
        rows = [json.loads(line) for line in audit(data, "query", "--format", "jsonl").stdout.splitlines() if line]
        check("SIGTERM: every in-flight mutation is audited ok", [r["outcome"] for r in rows] == ["ok"] * 8,
              f"{[r['outcome'] for r in rows]}")
        check("SIGTERM: audit verify passes", audit(data, "verify").returncode == 0)
        errors = [line for line in open(os.path.join(work, "proxy2.log")) if "ERROR" in line or "Cannot schedule" in line]
        check("SIGTERM: shutdown prints no ERROR line (nothing scheduled on a stopped event loop)", not errors, f"{errors[:3]}")
    finally:
        stop(fake)


def demo_interrupted(work):
    """The first thing a newcomer sees after the tour is what Ctrl-C prints."""
    log = os.path.join(work, "demo.log")
    proxy, port = proctools.start(BIN, ["demo", "--port", "0", "--data-dir", os.path.join(work, "demo-data")], log)
    status, _ = call(port, "GET", "/v1/organizations/users/demo@example.com/api-keys")
    proxy.send_signal(signal.SIGINT)
    code = proxy.wait(20)
    errors = [line for line in open(log) if "ERROR" in line or "Cannot schedule" in line]
    check("demo: Ctrl-C (SIGINT) exits 0 and prints no ERROR line", status == 200 and code == 0 and not errors,
          f"list {status}, exit {code}, {errors[:3]}")


def corrupt_cache(work):
    data = os.path.join(work, "corrupt")
    os.makedirs(data, mode=0o700)
    with open(os.path.join(data, "cache.sqlite"), "wb") as f:
        f.write(os.urandom(8192))
    fake, fake_port = start(["fake-upstream", "--port", "0"], os.path.join(work, "fake3.log"))
    try:
        proxy, port = start(["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", data,
                             "--log-level", "warning"], os.path.join(work, "proxy3.log"))
        first = call(port, "GET", "/v1/organizations/users/c@example.com/api-keys")
        second = call(port, "GET", "/v1/organizations/users/c@example.com/api-keys")
        stop(proxy)
        check("corrupt cache file: lists are served", first[0] == 200 and second[0] == 200, f"{first[0]} {second[0]}")
        check("corrupt cache file: moved aside", any(n.startswith("cache.sqlite.corrupt-") for n in os.listdir(data)),
              f"{os.listdir(data)}")
    finally:
        stop(fake)


def tls_verification(work):
    import http.server, ssl
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = b'{"tls": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    upstream = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        proxy, port = start(["serve", "--port", "0", "--upstream", upstream, "--data-dir", os.path.join(work, "tls1"),
                             "--upstream-timeout", "5"], os.path.join(work, "proxy4.log"))
        status, body = call(port, "GET", "/v1/anything")
        stop(proxy)
        check("TLS: a self-signed upstream is refused with 502", status == 502 and "not trusted" in body, f"{status} {body[:200]}")
        proxy, port = start(["serve", "--port", "0", "--upstream", upstream, "--data-dir", os.path.join(work, "tls2"),
                             "--upstream-ca-file", cert], os.path.join(work, "proxy5.log"))
        status, body = call(port, "GET", "/v1/anything")
        stop(proxy)
        check("TLS: trusted with --upstream-ca-file", status == 200 and "tls" in body, f"{status} {body[:200]}")
    finally:
        server.shutdown()


with tempfile.TemporaryDirectory() as work:
    for scenario in (kill_during_burst, sigterm_in_flight, demo_interrupted, corrupt_cache, tls_verification):
        try:
            scenario(work)
        except Exception as error:
            check(scenario.__name__, False, repr(error))

sys.exit(check.summary("crash"))
