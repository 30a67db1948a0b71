#!/usr/bin/env python3
"""Bounded soak of the real binaries: mixed list and mutation load while upstream faults
are switched on and off. Reports errors, open file descriptors and memory (RSS) of the
proxy at start and end; they must not grow. `--seconds 60` by default; CI runs 10.
Prints `soak: N passed, M failed`.
"""
import argparse, collections, json, os, random, re, signal, subprocess, sys, tempfile, threading, time
import http.client

import proctools
from proctools import Checks, stop

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=60)
parser.add_argument("--clients", type=int, default=8)
parser.add_argument("--binary", default=".build/debug/mixpeek-proxy")
args = parser.parse_args()
BIN = os.path.abspath(args.binary)


check = Checks()


def start(args, log):
    return proctools.start(BIN, args, log)


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def request(port, method, path, token, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    except Exception:
        return "exception"
    finally:
        connection.close()


with tempfile.TemporaryDirectory() as work:
    data = os.path.join(work, "data")
    fake, fake_port = start(["fake-upstream", "--port", "0"], os.path.join(work, "fake.log"))
    proxy, port = start(["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", data,
                         "--upstream-timeout", "1", "--cache-ttl", "2", "--log-level", "warning"], os.path.join(work, "proxy.log"))
    try:
        tokens = [f"sk_soak_{n}_0123456789abcdefghij" for n in range(3)]
        users = [f"user{n}@example.com" for n in range(6)]
        statuses = collections.Counter()
        mutations_answered = collections.Counter()
        lock = threading.Lock()
        stop_at = time.time() + args.seconds
        warm = time.time() + min(2.0, args.seconds / 5)

        def client(seed):
            rng = random.Random(seed)
            n = 0
            while time.time() < stop_at:
                n += 1
                token, user = rng.choice(tokens), rng.choice(users)
                base = f"/v1/organizations/users/{user}/api-keys"
                roll = rng.random()
                if roll < 0.8:
                    status, kind = request(port, "GET", base + rng.choice(["", "?include_revoked=true"]), token), "list"
                elif roll < 0.9:
                    status, kind = request(port, "POST", base, token, {"name": f"k{seed}-{n}"}), "mutation"
                elif roll < 0.95:
                    status, kind = request(port, "POST", f"{base}/k{seed}-{n - 1}/rotate", token), "mutation"
                else:
                    status, kind = request(port, "DELETE", f"{base}/k{seed}-{n - 2}", token), "mutation"
                with lock:
                    statuses[(kind, status)] += 1
                    if kind == "mutation" and status != "exception":
                        mutations_answered[status] += 1

        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(max(0, warm - time.time()))
        fds_start, rss_start = fds(proxy.pid), rss_kib(proxy.pid)

        faults = ["kind=status&value=503&op=list", "kind=delay&value=1500", "kind=drop&op=create", "kind=status&value=500", "kind=off"]
        step = 0
        while time.time() < stop_at - 1:
            fault = faults[step % len(faults)]
            request(fake_port, "POST", "/_fake/fault?" + fault, tokens[0])
            step += 1
            time.sleep(min(2.0, max(0.2, (stop_at - time.time()) / 6)))
        request(fake_port, "POST", "/_fake/fault?kind=off", tokens[0])
        for thread in threads:
            thread.join(30)
        time.sleep(1.5)  # idle keep-alive and upstream connections settle
        fds_end, rss_end = fds(proxy.pid), rss_kib(proxy.pid)
        health = request(port, "GET", "/_proxy/health", tokens[0])

        total = sum(statuses.values())
        unexpected = {key: count for key, count in statuses.items() if key[1] not in (200, 400, 403, 404, 500, 502, 503, 504)}
        print(f"soak: {total} requests in {args.seconds:.0f} s with {step} fault switches; by (kind, status): {dict(statuses)}")
        print(f"soak: open fds {fds_start} -> {fds_end}; RSS {rss_start} KiB -> {rss_end} KiB")
        check("no exceptions, crashes or unexpected statuses", not unexpected and proxy.poll() is None, f"{unexpected}")
        check("healthy at the end", health == 200, f"{health}")
        check("open file descriptors do not grow", fds_end <= fds_start + 8, f"{fds_start} -> {fds_end}")
        check("memory does not grow without bound", rss_end <= rss_start + 64 * 1024, f"{rss_start} -> {rss_end} KiB")
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(20)
        verify = subprocess.run([BIN, "audit", "verify", "--data-dir", data], capture_output=True, text=True, timeout=120)
        check("audit chain intact after the soak", verify.returncode == 0, verify.stdout + verify.stderr)
        rows = subprocess.run([BIN, "audit", "query", "--data-dir", data, "--format", "jsonl"], capture_output=True, text=True, timeout=120).stdout.splitlines()
        answered = sum(mutations_answered.values())
        check("every answered mutation is in the audit log", len(rows) >= answered, f"{answered} answered, {len(rows)} audited")
    finally:
        for proc in (proxy, fake):
            stop(proc)

sys.exit(check.summary("soak"))
