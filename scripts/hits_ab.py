#!/usr/bin/env python3
"""Two or more builds side by side on list hits, which is what this machine's noise allows: for
each round, for each binary in turn, a fresh data dir, the fake upstream (from the first binary)
and the proxy as shipped (request log on, to a file here) with `--cache-ttl 3600` (so that no
round sees an expiry), one list warmed, then `wrk -t2 -cCLIENTS` on that list for SECONDS:
hits/s, wrk's p50 and p99, the proxy's CPU per hit.

    python3 scripts/hits_ab.py ROUNDS SECONDS BINARY...      env: CLIENTS (64), PIN (1: proxy on core 0, wrk on core 1)

Prints a line per run and the medians per binary. Needs wrk (scripts/setup.sh installs it).
"""
import http.client, os, re, statistics, subprocess, sys, tempfile

import proctools

ROUNDS, SECONDS = int(sys.argv[1]), int(sys.argv[2])
BINARIES = [os.path.abspath(b) for b in sys.argv[3:]]
CLIENTS = int(os.environ.get("CLIENTS", "64"))
PIN = os.environ.get("PIN", "1") == "1"
TOKEN = "sk_bench_0123456789abcdefghijklmnop"
LIST = "/v1/organizations/users/bench@example.com/api-keys"


def call(port, method, path, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=body, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status, response.getheader("X-Cache")


def run(binary, fake_port, label):
    work = tempfile.mkdtemp(prefix="mixpeek-hits-ab-")
    pin = ["taskset", "-c", "0"] if PIN else []
    args = ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", os.path.join(work, "data"),
            "--access-log", os.path.join(work, "access.log"), "--cache-ttl", "3600", "--credential-recheck", "3600"]
    if pin:
        proc, port = proctools.start("taskset", ["-c", "0", binary, *args], os.path.join(work, "proxy.log"))
    else:
        proc, port = proctools.start(binary, args, os.path.join(work, "proxy.log"))
    try:
        call(port, "POST", LIST, b'{"name": "bench-key"}')
        call(port, "GET", LIST)
        if call(port, "GET", LIST)[1] != "HIT":
            raise RuntimeError("the warmed list is not a HIT")
        c0 = proctools.cpu_seconds(proc.pid)
        wrk = (["taskset", "-c", "1"] if pin else []) + ["wrk", "-t2", f"-c{CLIENTS}", f"-d{SECONDS}s", "--latency",
                                                       "-H", f"Authorization: Bearer {TOKEN}", f"http://127.0.0.1:{port}{LIST}"]
        out = subprocess.run(wrk, capture_output=True, text=True, timeout=SECONDS + 60).stdout
        c1 = proctools.cpu_seconds(proc.pid)
        figures = proctools.wrk_figures(out)
        requests, rate, p50, p99 = figures["requests"], figures["rate"], figures["p50"], figures["p99"]
        if figures["bad"]:
            raise RuntimeError(f"{figures['bad']} lists were not answered 200")
    finally:
        proctools.stop(proc)
        subprocess.run(["rm", "-rf", work])
    return {"rate": rate, "p50": p50, "p99": p99, "cpu_us": (c1 - c0) * 1e6 / requests}


def main():
    runs = proctools.side_by_side(BINARIES, ROUNDS, run, lambda r: f"{r['rate']:.0f} hits/s, p50 {r['p50']:.3f} ms p99 {r['p99']:.3f} ms, "
                                  f"proxy {r['cpu_us']:.1f} CPU µs/hit")
    print(f"\n| binary | hits/s ({CLIENTS} clients{', pinned' if PIN else ''}) | p50 / p99 ms | proxy CPU µs/hit |")
    print("|---|---:|---:|---:|")
    for binary, results in runs.items():
        med = {key: statistics.median(r[key] for r in results) for key in ("rate", "p50", "p99", "cpu_us")}
        print(f"| {binary} | {med['rate']:.0f} | {med['p50']:.3f} / {med['p99']:.3f} | {med['cpu_us']:.1f} |")
    return 0


sys.exit(main())
