#!/usr/bin/env python3
"""The figure issue 3 asks for: upstream list calls for a script that lists 100 times and
mutates 5 times, through the proxy (cache on) and with every list forced past the cache
(`Cache-Control: no-cache`, what a proxy without a cache would do); and the latency of a
cache hit as a client on one keep-alive connection sees it (median, p99 over N hits).
"""
import http.client, json, os, statistics, sys, tempfile, time

import proctools

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".build/release/mixpeek-proxy")
TOKEN = "sk_savings_0123456789abcdefghijklmnop"
HITS = int(os.environ.get("HITS", "5000"))


def run(work, label, refresh):
    fake, fake_port = proctools.start(BIN, ["fake-upstream", "--port", "0"], os.path.join(work, f"fake-{label}.log"))
    proxy, port = proctools.start(BIN, ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}",
                                        "--data-dir", os.path.join(work, label), "--log-level", "warning"],
                                  os.path.join(work, f"proxy-{label}.log"))
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        if refresh:
            headers["Cache-Control"] = "no-cache"
        path = "/v1/organizations/users/ci@example.com/api-keys"
        for n in range(100):
            if n % 20 == 10:
                connection.request("POST", path, body=json.dumps({"name": f"k{n}"}), headers=headers)
                connection.getresponse().read()
            connection.request("GET", path, headers=headers)
            connection.getresponse().read()
        connection.request("GET", "/_proxy/stats")
        stats = json.loads(connection.getresponse().read())
        latencies = []
        if not refresh:
            for _ in range(HITS):
                started = time.perf_counter()
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                latencies.append((time.perf_counter() - started) * 1e6)
                assert response.getheader("X-Cache") == "HIT"
        return stats["cache"]["upstream_list_calls"], latencies
    finally:
        proctools.stop(proxy)
        proctools.stop(fake)


with tempfile.TemporaryDirectory() as work:
    cached, latencies = run(work, "cached", refresh=False)
    uncached, _ = run(work, "uncached", refresh=True)
latencies.sort()
print("| script: 100 lists, 5 creates | upstream list calls |")
print("|---|---|")
print(f"| through mixpeek-proxy (cache) | {cached} |")
print(f"| every list forced past the cache (no-cache) | {uncached} |")
print(f"hit latency on one keep-alive connection, {len(latencies)} hits from Python http.client: "
      f"median {statistics.median(latencies):.0f} µs, p99 {latencies[int(len(latencies) * 0.99)]:.0f} µs")
