#!/usr/bin/env python3
"""Two or more builds side by side on a lone proxy's durable creates, which is what this
machine's noise allows: for each round, for each binary in turn, a fresh data dir, the fake
upstream (from the first binary, so that the upstream is the same for all) and the proxy as
shipped (its defaults: request log on, to a file here), then

- 16 wrk connections of creates (scripts/wrk_creates.lua, unique names) for SECONDS: creates/s,
  wrk's p50 and p99, the proxy's CPU per create;
- CREATES sequential creates on one keep-alive connection: p50 and p99 of a create.

    python3 scripts/create_ab.py ROUNDS SECONDS BINARY...      env: CREATES (300), CLIENTS (16)

Prints a line per run and the medians per binary; every run's data dir then passes
`audit verify`. Needs wrk (scripts/setup.sh installs it).
"""
import http.client, json, os, re, statistics, subprocess, sys, tempfile, time

import proctools

ROUNDS, SECONDS = int(sys.argv[1]), int(sys.argv[2])
BINARIES = [os.path.abspath(b) for b in sys.argv[3:]]
CREATES = int(os.environ.get("CREATES", "300"))
CLIENTS = int(os.environ.get("CLIENTS", "16"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "sk_bench_0123456789abcdefghijklmnop"


def sequential(port, label):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for n in range(CREATES):
        started = time.perf_counter()
        connection.request("POST", "/v1/organizations/users/seq@example.com/api-keys", body=json.dumps({"name": f"{label}-{n}"}),
                           headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"a sequential create answered {response.status}")
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99) - 1]


def run(binary, fake_port, label):
    work = tempfile.mkdtemp(prefix="mixpeek-create-ab-")
    data = os.path.join(work, "data")
    proc, port = proctools.start(binary, ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", data,
                                          "--access-log", os.path.join(work, "access.log")], os.path.join(work, "proxy.log"))
    try:
        sequential(port, f"warm-{label}")
        c0 = proctools.cpu_seconds(proc.pid)
        out = subprocess.run(["wrk", "-t2", f"-c{CLIENTS}", f"-d{SECONDS}s", "--latency", "-s", os.path.join(ROOT, "scripts", "wrk_creates.lua"),
                              f"http://127.0.0.1:{port}/", "--", label], capture_output=True, text=True, timeout=SECONDS + 60).stdout
        c1 = proctools.cpu_seconds(proc.pid)
        figures = proctools.wrk_figures(out)
        requests, rate, p50, p99 = figures["requests"], figures["rate"], figures["p50"], figures["p99"]
        if figures["bad"]:
            raise RuntimeError(f"{figures['bad']} creates were not answered 200")
        seq50, seq99 = sequential(port, f"seq-{label}")
    finally:
        proctools.stop(proc)
    verify = subprocess.run([binary, "audit", "verify", "--data-dir", data], capture_output=True, text=True)
    subprocess.run(["rm", "-rf", work])
    return {"rate": rate, "p50": p50, "p99": p99, "cpu_us": (c1 - c0) * 1e6 / requests, "seq50": seq50, "seq99": seq99,
            "verify": verify.returncode}


def main():
    runs = proctools.side_by_side(BINARIES, ROUNDS, run, lambda r: f"{r['rate']:.0f} creates/s, wrk p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms, "
                                  f"proxy {r['cpu_us']:.0f} CPU µs/create; sequential p50 {r['seq50']:.2f} ms p99 {r['seq99']:.2f} ms; "
                                  f"verify exit {r['verify']}")
    print(f"\n| binary | creates/s ({CLIENTS} clients) | wrk p50 / p99 ms | proxy CPU µs/create | sequential create p50 / p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for binary, results in runs.items():
        med = {key: statistics.median(r[key] for r in results) for key in ("rate", "p50", "p99", "cpu_us", "seq50", "seq99")}
        print(f"| {binary} | {med['rate']:.0f} | {med['p50']:.2f} / {med['p99']:.2f} | {med['cpu_us']:.0f} | {med['seq50']:.2f} / {med['seq99']:.2f} |")
    return 0 if all(r["verify"] == 0 for results in runs.values() for r in results) else 1


sys.exit(main())
