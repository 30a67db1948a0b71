#!/usr/bin/env python3
"""Do the verifiable log's tiles slow list hits? (issue 24, item 7)

Starts the fake upstream and BINARY's `serve` as shipped (request log to a file), makes
MUTATIONS creates (so that the log has full tiles), primes one list, then in interleaved
rounds measures cache hits (`wrk -t1 -c32 -dSECONDS` on that list) three ways:

  alone             nothing else;
  + tiles           a client fetching, as fast as answers come on 4 connections, a full hash
                    tile, a full entry bundle and the checkpoint in turn (an auditor's or a
                    mirror's reads, far more than a real one makes);
  + health          the same client fetching `/_proxy/health` instead: the cost of any
                    concurrent client on 2 cores, to tell the tiles' own cost from it.

Prints hits/s (median), hits p99, the reads/s the second client got, and the ratios.

    python3 scripts/tiles_vs_hits.py BINARY     env: ROUNDS (3), SECONDS (6), MUTATIONS (300)
"""
import http.client, json, os, re, statistics, subprocess, sys, tempfile, threading, time

import proctools

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".build/release/mixpeek-proxy")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECONDS = int(os.environ.get("SECONDS", "6"))
MUTATIONS = int(os.environ.get("MUTATIONS", "300"))
TOKEN = "sk_bench_0123456789abcdefghijklmnop"
LIST = "/v1/organizations/users/tiles@example.com/api-keys"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def hits(port):
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{SECONDS}s", "--latency", "-H", f"Authorization: Bearer {TOKEN}",
                          f"http://127.0.0.1:{port}{LIST}"], capture_output=True, text=True, timeout=SECONDS + 60).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))


def reader(port, paths, stop, counts):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    n = 0
    while not stop.is_set():
        connection.request("GET", paths[n % len(paths)])
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {paths[n % len(paths)]} answered {response.status}")
        n += 1
    counts.append(n)


def measure(port, paths):
    if not paths:
        return hits(port) + (0.0,)
    stop, counts = threading.Event(), []
    threads = [threading.Thread(target=reader, args=(port, paths, stop, counts)) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    rate, p99 = hits(port)
    stop.set()
    for thread in threads:
        thread.join()
    return rate, p99, sum(counts) / (time.monotonic() - started)


def main():
    work = tempfile.mkdtemp(prefix="mixpeek-tiles-")
    fake, fake_port = proctools.start(BIN, ["fake-upstream", "--port", "0"], os.path.join(work, "fake.log"))
    proxy, port = proctools.start(BIN, ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir",
                                        os.path.join(work, "data"), "--cache-ttl", "3600", "--access-log", os.path.join(work, "access.log")],
                                  os.path.join(work, "proxy.log"))
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for n in range(MUTATIONS):
            connection.request("POST", LIST.replace("tiles@", "writer@"), body=json.dumps({"name": f"t-{n}"}), headers=HEADERS)
            response = connection.getresponse()
            response.read()
        connection.request("GET", LIST, headers=HEADERS)
        connection.getresponse().read()
        tiles = ["/_proxy/log/tile/0/000", "/_proxy/log/tile/entries/000", "/_proxy/log/checkpoint"]
        ways = {"alone": [], "+ tiles": tiles, "+ health": ["/_proxy/health"]}
        results = {way: [] for way in ways}
        for _ in range(ROUNDS):
            for way, paths in ways.items():
                results[way].append(measure(port, paths))
        print(f"\nList hits, `wrk -t1 -c32 -d{SECONDS}s`, {ROUNDS} interleaved rounds, medians; a log of {2 * MUTATIONS} entries\n")
        print("| hits | hits/s | × alone | hits p99 ms | the other client's reads/s |")
        print("|---|---:|---:|---:|---:|")
        alone = statistics.median(r[0] for r in results["alone"])
        for way in ways:
            rate = statistics.median(r[0] for r in results[way])
            p99 = statistics.median(r[1] for r in results[way])
            reads = statistics.median(r[2] for r in results[way])
            print(f"| {way} | {rate:.0f} | {rate / alone:.2f} | {p99:.2f} | {reads:.0f} |")
    finally:
        proctools.stop(proxy)
        proctools.stop(fake)
        subprocess.run(["rm", "-rf", work])


main()
