#!/usr/bin/env python3
"""Two or more builds side by side on a group's mutation rate, which is what this machine's
noise allows (a shared VM whose speed moves by a quarter from one hour to the next): for each
round, for each binary in turn, a fresh PostgreSQL, the fake upstream and MEMBERS proxies in
one group, then 16 wrk connections of creates, 8 on A and 8 on B (`group_bench.mutation_rate`).

    python3 scripts/group_ab.py ROUNDS SECONDS BINARY...      env: MEMBERS (2)

Prints a line per run (creates/s; PostgreSQL transactions, proxies' CPU, PostgreSQL's CPU and
the fake's CPU per create; `audit verify` exit code) and the medians per binary. Needs wrk and
PostgreSQL (scripts/setup.sh installs both).
"""
import os, statistics, subprocess, sys, tempfile, time

import group_bench
import pgtools
import proctools

ROUNDS, SECONDS = int(sys.argv[1]), int(sys.argv[2])
BINARIES = [os.path.abspath(b) for b in sys.argv[3:]]
MEMBERS = int(os.environ.get("MEMBERS", "2"))


def run(binary, label):
    work = tempfile.mkdtemp(prefix="mixpeek-group-ab-")
    procs = []
    with pgtools.Postgres() as pg:
        pg.psql("CREATE ROLE mixpeek_proxy LOGIN PASSWORD 'pw'")
        subprocess.run([binary, "group", "setup", "--postgres-url", pg.url, "--role", "mixpeek_proxy"], check=True,
                       capture_output=True)
        url = pg.url_for("mixpeek_proxy", "pw")
        try:
            fake, fake_port = proctools.start(binary, ["fake-upstream", "--port", "0"], os.path.join(work, "fake.log"))
            procs.append(fake)
            common = ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--cache-ttl", "3600"]
            ports, pids = [], []
            for name in "ABCD"[:MEMBERS]:
                proc, port = proctools.start(binary, common + ["--data-dir", os.path.join(work, name), "--postgres-url", url,
                                                               "--proxy-id", name], os.path.join(work, name + ".log"))
                procs.append(proc)
                ports.append(port)
                pids.append(proc.pid)
            time.sleep(1.5)
            group_bench.mutation_rate(ports[:2], "warm" + label, seconds=2)
            commits = lambda: int(pg.psql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'"))
            x0, p0, f0, s0 = commits(), sum(map(group_bench.cpu_seconds, pids)), group_bench.cpu_seconds(fake.pid), group_bench.server_cpu(pg)
            rate, errors = group_bench.mutation_rate(ports[:2], label, seconds=SECONDS)
            per = 1e6 / (rate * SECONDS)
            figures = {"rate": rate, "errors": errors, "xact": (commits() - x0) * per / 1e6,
                       "proxies": (sum(map(group_bench.cpu_seconds, pids)) - p0) * per,
                       "pg": group_bench.server_cpu(pg, s0) * per, "fake": (group_bench.cpu_seconds(fake.pid) - f0) * per}
            verify = subprocess.run([binary, "audit", "verify", "--postgres-url", url] +
                                    sum((["--witness", os.path.join(work, n)] for n in "ABCD"[:MEMBERS]), []),
                                    capture_output=True, text=True)
            figures["verify"] = verify.returncode
            return figures
        finally:
            for proc in procs:
                proctools.stop(proc)
            subprocess.run(["rm", "-rf", work])


results = {binary: [] for binary in BINARIES}
for round_number in range(ROUNDS):
    for index, binary in enumerate(BINARIES):
        f = run(binary, f"r{round_number}b{index}")
        results[binary].append(f)
        print(f"round {round_number} {binary}: {f['rate']:.0f} creates/s ({f['errors']} not 2xx), {f['xact']:.2f} transactions, "
              f"CPU µs per create: proxies {f['proxies']:.0f}, PostgreSQL {f['pg']:.0f}, fake {f['fake']:.0f}; verify exit {f['verify']}",
              flush=True)
for binary, runs in results.items():
    median = lambda key: statistics.median(r[key] for r in runs)
    print(f"median {binary}: {median('rate'):.0f} creates/s, proxies {median('proxies'):.0f} µs, PostgreSQL {median('pg'):.0f} µs, "
          f"fake {median('fake'):.0f} µs per create")
sys.exit(1 if any(r["verify"] or r["errors"] for runs in results.values() for r in runs) else 0)
