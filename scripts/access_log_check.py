#!/usr/bin/env python3
"""The request log against the real binary: no line lost, none at SIGTERM, SIGHUP reopens.

1. `serve` with its default flags (request log on stderr, redirected here to a file): N
   requests from several keep-alive clients, then SIGTERM at once; the file must hold exactly
   N request lines, as many as the proxy counted in mixpeek_proxy_requests_total, and
   mixpeek_proxy_log_lines_dropped_total must be 0.
2. `serve --access-log FILE`: N/2 requests, the file renamed (as logrotate does), SIGHUP,
   N/2 more, SIGTERM: N/2 lines in the renamed file and N/2 in the new one.
3. `serve --access-log off`: N/10 requests, no request line anywhere.

    scripts/access_log_check.py --binary .build/debug/mixpeek-proxy [--requests 20000] [--clients 8]

Prints `access log: N passed, M failed`; exits non-zero on a failure.
"""
import argparse, http.client, os, re, signal, sys, tempfile, threading, time

import proctools
from proctools import Checks, stop

parser = argparse.ArgumentParser()
parser.add_argument("--binary", default=".build/debug/mixpeek-proxy")
parser.add_argument("--requests", type=int, default=20000)
parser.add_argument("--clients", type=int, default=8)
args = parser.parse_args()
BIN = os.path.abspath(args.binary)
TOKEN = "sk_logcheck_0123456789abcdefghij"
PATH = "/v1/organizations/users/alice@example.com/api-keys"
REQUEST_LINE = re.compile(r" \[MixpeekProxy\] request$")

check = Checks()


def send(port, count, clients):
    """`count` list requests over `clients` keep-alive connections; returns the statuses seen."""
    statuses = {}
    lock = threading.Lock()

    def client(share):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        seen = {}
        for _ in range(share):
            try:
                connection.request("GET", PATH, headers={"Authorization": f"Bearer {TOKEN}"})
                response = connection.getresponse()
                response.read()
                seen[response.status] = seen.get(response.status, 0) + 1
            except Exception as error:
                seen[type(error).__name__] = seen.get(type(error).__name__, 0) + 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.close()
        with lock:
            for key, value in seen.items():
                statuses[key] = statuses.get(key, 0) + value

    shares = [count // clients + (1 if n < count % clients else 0) for n in range(clients)]
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def metric(port, name):
    """The sum of a metric's samples (every label set) from /_proxy/metrics."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/_proxy/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def request_lines(path):
    with open(path, errors="replace") as f:
        return sum(1 for line in f if REQUEST_LINE.search(line.rstrip("\n")))


with tempfile.TemporaryDirectory() as work:
    fake, fake_port = proctools.start(BIN, ["fake-upstream", "--port", "0"], os.path.join(work, "fake.log"))
    upstream = f"http://127.0.0.1:{fake_port}"
    n = args.requests
    try:
        # 1. Defaults: the request log on stderr, which this script sends to a file.
        stderr_file = os.path.join(work, "proxy-defaults.err")
        proxy, port = proctools.start(BIN, ["serve", "--port", "0", "--upstream", upstream,
                                            "--data-dir", os.path.join(work, "d1")], stderr_file)
        statuses = send(port, n, args.clients)
        check(f"defaults: {n} requests answered 200", statuses == {200: n}, f"statuses {statuses}")
        counted = int(metric(port, "mixpeek_proxy_requests_total"))
        dropped = int(metric(port, "mixpeek_proxy_log_lines_dropped_total"))
        stop(proxy, signal.SIGTERM)
        check("defaults: the proxy exited 0 on SIGTERM", proxy.returncode == 0, f"exit {proxy.returncode}")
        lines = request_lines(stderr_file)
        check(f"defaults: exactly {n} request lines on stderr after SIGTERM", lines == n, f"{lines} lines")
        check("defaults: as many lines as mixpeek_proxy_requests_total", lines == counted, f"{lines} lines, {counted} counted")
        check("defaults: mixpeek_proxy_log_lines_dropped_total is 0", dropped == 0, f"{dropped} dropped")

        # 2. A file, renamed then SIGHUP (logrotate), then SIGTERM.
        log = os.path.join(work, "access.log")
        proxy, port = proctools.start(BIN, ["serve", "--port", "0", "--upstream", upstream, "--access-log", log,
                                            "--data-dir", os.path.join(work, "d2")], os.path.join(work, "proxy-file.err"))
        first, second = n // 2, n - n // 2
        send(port, first, args.clients)
        os.rename(log, log + ".1")
        proxy.send_signal(signal.SIGHUP)
        # The proxy writes out the lines recorded before the signal to the renamed file, then
        # creates a new one at the configured path.
        deadline = time.time() + 5
        while not os.path.exists(log) and time.time() < deadline:
            time.sleep(0.02)
        check("file: the proxy survives SIGHUP and opens a new file", proxy.poll() is None and os.path.exists(log),
              f"exit {proxy.returncode}")
        send(port, second, args.clients)
        stop(proxy, signal.SIGTERM)
        old, new = request_lines(log + ".1"), request_lines(log)
        check(f"file: {first} lines in the renamed file, {second} in the reopened one", (old, new) == (first, second),
              f"{old} and {new}")
        with open(os.path.join(work, "proxy-file.err")) as f:
            stray = sum(1 for line in f if REQUEST_LINE.search(line.rstrip("\n")))
        check("file: no request line on stderr", stray == 0, f"{stray} lines")

        # 3. Off.
        stderr_file = os.path.join(work, "proxy-off.err")
        proxy, port = proctools.start(BIN, ["serve", "--port", "0", "--upstream", upstream, "--access-log", "off",
                                            "--data-dir", os.path.join(work, "d3")], stderr_file)
        send(port, max(n // 10, 1), args.clients)
        stop(proxy, signal.SIGTERM)
        lines = request_lines(stderr_file)
        check("off: no request line", lines == 0, f"{lines} lines")
    finally:
        stop(fake)

sys.exit(check.summary("access log"))
