#!/usr/bin/env python3
"""What `credential_recheck` costs: upstream list calls for 10 credentials, each listing its
own user's keys 10 times a second for 10 s (1,000 lists), with `--cache-ttl 3600` so that only
the recheck sends lists to the upstream, for several recheck windows.

    python3 scripts/recheck_cost.py [BINARY] [--seconds S]

The expected cost is one forward per active credential per window (plus its first list).
"""
import argparse, http.client, json, os, sys, tempfile, time

import proctools

parser = argparse.ArgumentParser()
parser.add_argument("binary", nargs="?", default=".build/release/mixpeek-proxy")
parser.add_argument("--seconds", type=float, default=10)
options = parser.parse_args()
BIN = os.path.abspath(options.binary)
CREDENTIALS = 10


def run(work, recheck):
    fake, fake_port = proctools.start(BIN, ["fake-upstream", "--port", "0"], os.path.join(work, f"fake-{recheck}.log"))
    proxy, port = proctools.start(BIN, [
        "serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", os.path.join(work, f"d{recheck}"),
        "--cache-ttl", "3600", "--credential-recheck", str(recheck), "--access-log", "off", "--log-level", "warning"],
        os.path.join(work, f"proxy-{recheck}.log"))
    try:
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(CREDENTIALS)]
        lists, started = 0, time.monotonic()
        while time.monotonic() - started < options.seconds:
            tick = time.monotonic()
            for n, connection in enumerate(connections):
                connection.request("GET", f"/v1/organizations/users/user{n}@example.com/api-keys",
                                   headers={"Authorization": f"Bearer sk_recheck_{n:02d}_0123456789abcdefghij"})
                connection.getresponse().read()
                lists += 1
            time.sleep(max(0, 0.1 - (time.monotonic() - tick)))
        elapsed = time.monotonic() - started
        connections[0].request("GET", "/_proxy/stats")
        calls = json.loads(connections[0].getresponse().read())["cache"]["upstream_list_calls"]
        return lists, calls, elapsed
    finally:
        proctools.stop(proxy)
        proctools.stop(fake)


with tempfile.TemporaryDirectory() as work:
    print(f"| credential_recheck | lists | upstream list calls | expected ({CREDENTIALS} credentials × (1 + seconds / window)) |")
    print("|---|---:|---:|---:|")
    for recheck in (0, 2, 5, 30):
        lists, calls, elapsed = run(work, recheck)
        expected = lists if recheck == 0 else CREDENTIALS * (1 + int(elapsed // recheck))
        print(f"| {recheck} s{' (default)' if recheck == 30 else ''} | {lists} | {calls} | {expected} |", flush=True)
