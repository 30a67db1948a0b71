#!/usr/bin/env python3
"""Figures of a group of proxies on PostgreSQL (issue 13), in one run, printed as markdown:

1. hits/s through a proxy in a group of 3 vs a lone proxy (wrk -t2 -c64 on one list URL,
   interleaved rounds, medians; both as shipped: request log on, to a file; --cache-ttl 3600),
   and through a fourth member with `--group-hit-check read` (one PostgreSQL read per hit: the
   simple alternative to leases);
2. a mutation's latency, sequential creates, through a proxy in the group of 3 vs the lone one
   (p50, p99 and the p50 added);
3. durably audited mutations/s at 16 clients (wrk, scripts/wrk_creates.lua) spread over 2
   proxies into the one chain, in the group of 3 and again once the third has left (a group of
   2), then `audit verify --postgres-url --witness` on the chain.

    scripts/group_bench.py BINARY        env: ROUNDS (3), SECONDS (8), CREATES (300), SMOKE (0)
Needs wrk and PostgreSQL (scripts/setup.sh installs both); starts its own PostgreSQL on loopback.
"""
import http.client, json, os, re, statistics, subprocess, sys, tempfile, threading, time

import pgtools
import proctools

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".build/release/mixpeek-proxy")
SMOKE = os.environ.get("SMOKE") == "1"
ROUNDS = int(os.environ.get("ROUNDS", "1" if SMOKE else "3"))
SECONDS = float(os.environ.get("SECONDS", "1" if SMOKE else "8"))
CREATES = int(os.environ.get("CREATES", "20" if SMOKE else "300"))
TOKEN = "sk_bench_0123456789abcdefghijklmnop"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
LIST = "/v1/organizations/users/bench@example.com/api-keys"


def wrk(port):
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{int(SECONDS)}s", "--latency", "-H", f"Authorization: Bearer {TOKEN}",
                          f"http://127.0.0.1:{port}{LIST}"], capture_output=True, text=True, timeout=SECONDS + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, float(p99.group(1)) * scale, int(non2xx.group(1)) if non2xx else 0


def request(port, method, path, body=None, connection=None):
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=HEADERS)
    response = conn.getresponse()
    response.read()
    return response.status, response.getheader("X-Cache")


def latencies(port, label):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for i in range(CREATES):
        start = time.perf_counter()
        status, _ = request(port, "POST", "/v1/organizations/users/lat@example.com/api-keys", {"name": f"{label}-{i}"}, conn)
        times.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise RuntimeError(f"create through {label} answered {status}")
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1 if len(times) >= 100 else -1]


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pids(pg):
    """PostgreSQL's processes now: every backend and background process it lists."""
    return [int(pid) for pid in pg.psql("SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()").split()]


def server_cpu(pg, since=None):
    """CPU seconds of PostgreSQL's processes, per pid; with `since` (an earlier reading), the
    total since then, counting the backends started meanwhile whole (a proxy opens some lazily)."""
    now = {}
    for pid in set(server_pids(pg)) | set(since or {}):
        try:
            now[pid] = cpu_seconds(pid)
        except OSError:
            pass
    return now if since is None else sum(value - since.get(pid, 0) for pid, value in now.items())


def mutation_rate(ports, label, clients=16, seconds=None):
    """Creates/s with `clients` connections spread over `ports`: one wrk per port (C, so the
    load generator takes little of the 2 cores the proxies, PostgreSQL and the fake share),
    each create a key of its own over four users. Returns (rate, responses not 200)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_creates.lua")
    seconds = int(seconds or SECONDS)
    per = clients // len(ports)
    runs = [subprocess.Popen(["wrk", f"-t{min(2, per)}", f"-c{per}", f"-d{seconds}s", "-s", script,
                              f"http://127.0.0.1:{port}/", "--", f"{label}{port}"], stdout=subprocess.PIPE, text=True)
            for port in ports]
    outs = [run.communicate(timeout=seconds + 60)[0] for run in runs]
    rate = sum(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) for out in outs)
    errors = sum(int(m.group(1)) for out in outs for m in [re.search(r"Non-2xx or 3xx responses: (\d+)", out)] if m)
    return rate, errors


def main():
    work = tempfile.mkdtemp(prefix="mixpeek-group-bench-")
    procs = []
    with pgtools.Postgres() as pg:
        version = pg.psql("SHOW server_version")
        pg.psql("CREATE ROLE mixpeek_proxy LOGIN PASSWORD 'pw'")
        subprocess.run([BIN, "group", "setup", "--postgres-url", pg.url, "--role", "mixpeek_proxy"], check=True,
                       capture_output=True, timeout=60)
        url = pg.url_for("mixpeek_proxy", "pw")
        try:
            fake, fake_port = proctools.start(BIN, ["fake-upstream", "--port", "0"], os.path.join(work, "fake.log"))
            procs.append(fake)
            common = ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--cache-ttl", "3600"]
            lone, lone_port = proctools.start(BIN, common + ["--data-dir", os.path.join(work, "lone")], os.path.join(work, "lone.log"))
            procs.append(lone)
            members = []
            for name in "ABC":
                proc, port = proctools.start(BIN, common + ["--data-dir", os.path.join(work, name), "--postgres-url", url,
                                                            "--proxy-id", name], os.path.join(work, f"{name}.log"))
                procs.append(proc)
                members.append(port)
            # The simple alternative: a fourth member that reads the user's newest record per hit.
            reader, reader_port = proctools.start(BIN, common + ["--data-dir", os.path.join(work, "R"), "--postgres-url", url,
                                                                 "--proxy-id", "R", "--group-hit-check", "read"], os.path.join(work, "R.log"))
            procs.append(reader)
            time.sleep(1)
            for port in [lone_port, reader_port] + members:
                request(port, "GET", LIST)
            for port in (lone_port, members[0], reader_port):
                if request(port, "GET", LIST)[1] != "HIT":
                    raise RuntimeError("the list is not a HIT before the hit rounds")

            rounds = {"lone": [], "group": [], "read": []}
            for _ in range(ROUNDS):
                for label, port in (("lone", lone_port), ("group", members[0]), ("read", reader_port)):
                    rounds[label].append(wrk(port))
            # The reader leaves the group (its lease ends at SIGTERM): the mutation figures are of a group of 3.
            proctools.stop(reader)
            med = {label: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), sum(r[2] for r in rs))
                   for label, rs in rounds.items()}

            lone_lat = latencies(lone_port, "lone")
            group_lat = latencies(members[0], "grp")
            cpu, fake_cpu = cpu_seconds(lone.pid), cpu_seconds(fake.pid)
            lone_rate, _ = mutation_rate([lone_port], "lone")
            lone_cpu = (cpu_seconds(lone.pid) - cpu) / (lone_rate * SECONDS) * 1e6
            lone_fake = (cpu_seconds(fake.pid) - fake_cpu) / (lone_rate * SECONDS) * 1e6
            group_pids = [procs[2].pid, procs[3].pid, procs[4].pid]
            cpu, fake_cpu, pg_cpu = sum(map(cpu_seconds, group_pids)), cpu_seconds(fake.pid), server_cpu(pg)
            rate, rate_errors = mutation_rate(members[:2], "grp")
            per = 1e6 / (rate * SECONDS) if rate else 0
            group_cpu = (sum(map(cpu_seconds, group_pids)) - cpu) * per
            group_fake, group_pg = (cpu_seconds(fake.pid) - fake_cpu) * per, server_cpu(pg, pg_cpu) * per
            # The same clients and proxies, once C has left: a group of 2.
            proctools.stop(procs[4])
            cpu, fake_cpu, pg_cpu = sum(map(cpu_seconds, group_pids[:2])), cpu_seconds(fake.pid), server_cpu(pg)
            rate2, rate2_errors = mutation_rate(members[:2], "two")
            per = 1e6 / (rate2 * SECONDS) if rate2 else 0
            group2_cpu = (sum(map(cpu_seconds, group_pids[:2])) - cpu) * per
            group2_fake, group2_pg = (cpu_seconds(fake.pid) - fake_cpu) * per, server_cpu(pg, pg_cpu) * per
            verify = subprocess.run([BIN, "audit", "verify", "--postgres-url", url] +
                                    sum((["--witness", os.path.join(work, n)] for n in "ABC"), []),
                                    capture_output=True, text=True, timeout=300)
        finally:
            for proc in procs:
                proctools.stop(proc)
    print(f"group figures ({ROUNDS} interleaved rounds of {SECONDS:g} s; {CREATES} sequential creates; "
          f"PostgreSQL {version} on loopback, fsync on)\n")
    print("| figure | lone proxy | proxy in a group of 3 | group ÷ lone | target |")
    print("|---|---:|---:|---:|---|")
    print(f"| hits/s (wrk -t2 -c64), median | {med['lone'][0]:.0f} | {med['group'][0]:.0f} | {med['group'][0] / med['lone'][0]:.2f} | ≥ 0.9 |")
    print(f"| hits p99 ms, median | {med['lone'][1]:.2f} | {med['group'][1]:.2f} | | |")
    print(f"| hits/s with `--group-hit-check read` (one PostgreSQL read per hit), median | | {med['read'][0]:.0f} | {med['read'][0] / med['lone'][0]:.2f} | (the alternative) |")
    print(f"| hits p99 ms with `--group-hit-check read`, median | | {med['read'][1]:.2f} | | |")
    print(f"| create latency p50 ms | {lone_lat[0]:.2f} | {group_lat[0]:.2f} | {group_lat[0] - lone_lat[0]:+.2f} ms | |")
    print(f"| create latency p99 ms | {lone_lat[1]:.2f} | {group_lat[1]:.2f} | {group_lat[1] - lone_lat[1]:+.2f} ms | |")
    print(f"| durably audited creates/s, 16 clients (group: over A and B, one chain; C listening) | {lone_rate:.0f} | {rate:.0f} ({rate_errors} not 200) | {rate / lone_rate:.2f} | group ≥ 1,000/s |")
    print(f"| proxy CPU µs per create (group: A, B and C) | {lone_cpu:.0f} | {group_cpu:.0f} | {group_cpu / lone_cpu:.2f} | |")
    print(f"| the same in a group of 2 (C stopped): creates/s | | {rate2:.0f} ({rate2_errors} not 200) | {rate2 / lone_rate:.2f} | ≥ 1,000/s |")
    print(f"| the same in a group of 2: proxy CPU µs per create (A and B) | | {group2_cpu:.0f} | {group2_cpu / lone_cpu:.2f} | |")
    print(f"| PostgreSQL CPU µs per create, all its processes (group of 3; of 2) | | {group_pg:.0f}; {group2_pg:.0f} | | |")
    print(f"| the fake upstream's CPU µs per create (group of 3; of 2) | {lone_fake:.0f} | {group_fake:.0f}; {group2_fake:.0f} | | |")
    print(f"\n`audit verify --postgres-url … --witness A B C`: {verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else verify.stderr.strip()}")
    failed = verify.returncode != 0 or med["lone"][2] or med["group"][2] or med["read"][2] or rate_errors or rate2_errors
    if failed:
        print(f"group bench: FAILED (verify exit {verify.returncode}; non-2xx lone {med['lone'][2]}, group {med['group'][2]})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
