#!/usr/bin/env python3
"""Durably audited mutations per second (issue 6: >= 1,000/s at 16 concurrent clients).

Starts `fake-upstream` and `serve` from BINARY, then for DURATION seconds each drives CLIENTS
keep-alive connections doing one kind of mutation as fast as answers come back:
  create  POST .../users/bench@example.com/api-keys {"name": "k-<unique>"}   (200)
  patch   PATCH .../users/u<n>@example.com/api-keys/k<i> {}                  (404: audited as rejected)
Every answered mutation has a durable intent and an outcome in audit.sqlite. Prints the rate
of each and the proxy's CPU time per mutation (less disturbed than the rate by other work on
the machine), then stops both processes and runs `audit verify` on the data dir; exits 1 when an
answer was unexpected or verify fails.

    scripts/mutation_rate.py [BINARY]
    env: DURATION (8), CLIENTS (16), KINDS ("create,patch"), DATA_DIR (default: in a temp dir removed afterwards)
"""
import http.client, json, os, subprocess, sys, tempfile, threading, time

import proctools

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".build/release/mixpeek-proxy")
DURATION = float(os.environ.get("DURATION", "8"))
CLIENTS = int(os.environ.get("CLIENTS", "16"))
KINDS = os.environ.get("KINDS", "create,patch").split(",")
HEADERS = {"Authorization": "Bearer sk_test_0123456789abcdef", "Content-Type": "application/json"}


def create(client, i):
    return "POST", "/v1/organizations/users/bench@example.com/api-keys", json.dumps({"name": f"k-{client}-{i}"}), 200


def patch(client, i):
    return "PATCH", f"/v1/organizations/users/u{client}@example.com/api-keys/k{i}", "{}", 404


MUTATIONS = {"create": create, "patch": patch}


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(port, mutation):
    """CLIENTS threads, one connection each, for DURATION seconds: (answered as expected, other, per-second counts)."""
    started = time.monotonic()
    deadline = started + DURATION
    seconds = [0] * (int(DURATION) + 1)
    totals = {"expected": 0, "other": 0}
    lock = threading.Lock()

    def client(n):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        expected = other = i = 0
        mine = [0] * len(seconds)
        try:
            while time.monotonic() < deadline:
                method, path, body, status = mutation(n, i)
                i += 1
                try:
                    connection.request(method, path, body=body, headers=HEADERS)
                    response = connection.getresponse()
                    response.read()
                    ok = response.status == status
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    ok = False
                if ok:
                    expected += 1
                    mine[min(int(time.monotonic() - started), len(mine) - 1)] += 1
                else:
                    other += 1
        finally:
            connection.close()
            with lock:
                totals["expected"] += expected
                totals["other"] += other
                for second, count in enumerate(mine):
                    seconds[second] += count

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DURATION + 30)
    elapsed = time.monotonic() - started
    return totals["expected"], totals["other"], elapsed, seconds[: int(DURATION)]


def main():
    with tempfile.TemporaryDirectory(prefix="mutation-rate-") as work:
        data = os.environ.get("DATA_DIR") or os.path.join(work, "data")
        fake, fake_port = proctools.start(BIN, ["fake-upstream", "--port", "0"], os.path.join(work, "fake.log"))
        failed = False
        try:
            proxy, port = proctools.start(BIN, ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}",
                                                "--data-dir", data, "--log-level", "warning"], os.path.join(work, "proxy.log"))
            try:
                print(f"{CLIENTS} keep-alive clients, {DURATION:g} s each; data dir {data}; proxy pid {proxy.pid}", flush=True)
                for name, mutation in ((name, MUTATIONS[name]) for name in KINDS):
                    cpu = cpu_seconds(proxy.pid)
                    expected, other, elapsed, seconds = drive(port, mutation)
                    cpu = cpu_seconds(proxy.pid) - cpu
                    failed |= other > 0
                    print(f"{name}: {expected / elapsed:.0f} mutations/s ({expected} answered as expected, {other} other; "
                          f"per second {min(seconds)}..{max(seconds)}; proxy CPU {cpu * 1e6 / max(expected + other, 1):.0f} µs each)",
                          flush=True)
            finally:
                proctools.stop(proxy)
        finally:
            proctools.stop(fake)
        verify = subprocess.run([BIN, "audit", "verify", "--data-dir", data], capture_output=True, text=True, timeout=120)
        said = (verify.stdout.strip().splitlines() or [verify.stderr.strip()])[-1]
        print(f"audit verify: {'passes' if verify.returncode == 0 else 'FAILS'} ({said})")
        failed |= verify.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
