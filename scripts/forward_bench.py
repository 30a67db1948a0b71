#!/usr/bin/env python3
"""Forwarding side by side (issue 28): every request reaches the origin.

An nginx origin answers a 4 KiB JSON body on plain HTTP and on TLS (a self-signed certificate
made here). In front of it, each as shipped (one worker / one event loop, a request log to a
file): nginx `proxy_pass` with upstream keepalive (TLS: `proxy_ssl_session_reuse on`, the
certificate verified), and each BINARY's `serve` (TLS: `--upstream-ca-file`). The call is a
pass-through `GET /v1/organizations/api-keys/k1/usage`, which nobody caches. For each upstream
(plain, TLS) and each client count, ROUNDS interleaved rounds of `wrk -t2 -cN -dSECONDS` on
the origin direct, nginx and each binary; medians of req/s, p50, p99, and the front's CPU per
request (utime + stime of its processes over the run).

    python3 scripts/forward_bench.py BINARY...   env: ROUNDS (3), SECONDS (6), CLIENTS ("8,64"), TLS (1), PIN ("": off; e.g. "1" pins the fronts to CPU 1)

Prints a markdown table per upstream. Needs nginx, wrk and openssl (scripts/setup.sh).
"""
import os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

import proctools

BINARIES = [os.path.abspath(b) for b in sys.argv[1:]]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECONDS = int(os.environ.get("SECONDS", "6"))
CLIENTS = [int(c) for c in os.environ.get("CLIENTS", "8,64").split(",")]
WITH_TLS = os.environ.get("TLS", "1") == "1"
PIN = os.environ.get("PIN", "")
PATH = "/v1/organizations/api-keys/k1/usage"
TOKEN = "sk_bench_0123456789abcdefghijklmnop"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except FileNotFoundError:
            pass
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def ms(text):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise RuntimeError(f"wrk printed a latency of {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def wrk(port, clients, scheme="http"):
    out = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{SECONDS}s", "--latency", "-H", f"Authorization: Bearer {TOKEN}",
                          f"{scheme}://127.0.0.1:{port}{PATH}"], capture_output=True, text=True, timeout=SECONDS + 60).stdout
    if "Requests/sec" not in out or not re.search(r"99%\s+\S+", out):
        raise RuntimeError(f"wrk on port {port}: {out[-800:]}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50": ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)), "p99": ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
            "bad": int(bad.group(1)) if bad else 0, "errors": errors.group(1) if errors else ""}


def nginx(work, name, server_block):
    directory = os.path.join(work, name)
    os.makedirs(os.path.join(directory, "logs"), exist_ok=True)
    config = os.path.join(directory, "nginx.conf")
    with open(config, "w") as handle:
        handle.write(f"""
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {directory}/body; proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fcgi; uwsgi_temp_path {directory}/uwsgi; scgi_temp_path {directory}/scgi;
    keepalive_requests 1000000;
    {server_block}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", config, "-p", directory], stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "stderr"), "w"))
    return proc


def wait_port(port, timeout=15, proc=None, log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {open(log).read()[-600:] if log else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def pin(pid):
    if PIN:
        subprocess.run(["taskset", "-a", "-p", "-c", PIN, str(pid)], capture_output=True)


def main():
    work = tempfile.mkdtemp(prefix="mixpeek-forward-")
    os.chmod(work, 0o755)  # nginx's workers (nobody, when started as root) read the body file
    procs = []
    try:
        cert, key = os.path.join(work, "origin.pem"), os.path.join(work, "origin.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
        body = '{"key_id":"k1","usage":[' + ",".join('{"day":"2026-11-%02d","requests":%d}' % (1 + n % 28, n) for n in range(120)) + "]}"
        body = body[:4096 - 2] + "]}" if len(body) > 4096 else body
        body_file = os.path.join(work, "usage.json")
        with open(body_file, "w") as handle:
            handle.write(body)
        origin_port, origin_tls_port = free_port(), free_port()
        origin = nginx(work, "origin", f"""
    access_log off;
    server {{ listen 127.0.0.1:{origin_port}; location / {{ default_type application/json; root {work}; try_files /usage.json =404; }} }}
    server {{ listen 127.0.0.1:{origin_tls_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
             location / {{ default_type application/json; root {work}; try_files /usage.json =404; }} }}""")
        procs.append(origin)
        wait_port(origin_port, proc=origin, log=os.path.join(work, "origin", "stderr"))
        upstreams = [("plain HTTP", f"http://127.0.0.1:{origin_port}", "http://origin", "")]
        if WITH_TLS:
            upstreams.append(("TLS", f"https://localhost:{origin_tls_port}", "https://origin_tls",
                              f"proxy_ssl_session_reuse on; proxy_ssl_verify on; proxy_ssl_trusted_certificate {cert}; proxy_ssl_name localhost; proxy_ssl_server_name on;"))
        for label, upstream_url, nginx_target, nginx_tls in upstreams:
            front_port = free_port()
            front = nginx(work, f"front-{label[:3]}", f"""
    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
    upstream origin_tls {{ server 127.0.0.1:{origin_tls_port}; keepalive 64; }}
    access_log {work}/front-{label[:3]}/logs/access.log;
    server {{ listen 127.0.0.1:{front_port};
             location / {{ proxy_pass {nginx_target}; proxy_http_version 1.1; proxy_set_header Connection ""; {nginx_tls} }} }}""")
            procs.append(front)
            wait_port(front_port, proc=front, log=os.path.join(work, f"front-{label[:3]}", "stderr"))
            fronts = [("origin direct", origin_tls_port if label == "TLS" else origin_port, None, "https" if label == "TLS" else "http"),
                      ("nginx proxy_pass", front_port, [front.pid] + children(front.pid), "http")]
            for worker in children(front.pid):
                pin(worker)
            for index, binary in enumerate(BINARIES):
                args = ["serve", "--port", "0", "--upstream", upstream_url, "--data-dir", os.path.join(work, f"data-{label[:3]}-{index}"),
                        "--access-log", os.path.join(work, f"access-{label[:3]}-{index}.log")]
                if label == "TLS":
                    args += ["--upstream-ca-file", cert]
                proc, port = proctools.start(binary, args, os.path.join(work, f"proxy-{label[:3]}-{index}.log"))
                procs.append(proc)
                pin(proc.pid)
                fronts.append((f"mixpeek-proxy {index + 1} ({os.path.relpath(binary)})", port, [proc.pid], "http"))
            results = {(name, clients): [] for name, *_ in fronts for clients in CLIENTS}
            for name, port, _, scheme in fronts:
                wrk_out = wrk(port, 4, scheme)  # warm: connections, TLS sessions
                if wrk_out["bad"] or wrk_out["errors"]:
                    raise RuntimeError(f"{name}: {wrk_out['bad']} non-2xx answers, socket errors {wrk_out['errors']}")
            for _ in range(ROUNDS):
                for clients in CLIENTS:
                    for name, port, pids, scheme in fronts:
                        c0 = cpu_seconds(pids) if pids else 0
                        result = wrk(port, clients, scheme)
                        c1 = cpu_seconds(pids) if pids else 0
                        if result["bad"]:
                            raise RuntimeError(f"{name}: {result['bad']} non-2xx answers")
                        result["cpu_us"] = (c1 - c0) * 1e6 / result["requests"] if pids else None
                        results[(name, clients)].append(result)
            print(f"\n**{label} upstream** — `wrk -t2 -d{SECONDS}s`, {ROUNDS} interleaved rounds, medians{', fronts pinned to CPU ' + PIN if PIN else ''}\n")
            print("| clients | front | req/s | × nginx | p50 ms | p50 added over the origin | p99 ms | front CPU µs/request |")
            print("|---|---|---:|---:|---:|---:|---:|---:|")
            for clients in CLIENTS:
                med = {name: {k: statistics.median(r[k] for r in results[(name, clients)]) if results[(name, clients)][0][k] is not None else None
                              for k in ("rps", "p50", "p99", "cpu_us")} for name, *_ in fronts}
                base, direct = med["nginx proxy_pass"], med["origin direct"]
                for name, *_ in fronts:
                    m = med[name]
                    cpu = f"{m['cpu_us']:.1f}" if m["cpu_us"] is not None else "—"
                    ratio = f"{m['rps'] / base['rps']:.2f}" if name != "origin direct" else "—"
                    added = f"{m['p50'] - direct['p50']:+.3f}" if name != "origin direct" else "—"
                    print(f"| {clients} | {name} | {m['rps']:.0f} | {ratio} | {m['p50']:.3f} | {added} | {m['p99']:.3f} | {cpu} |")
            for proc in procs[1:]:
                proc.send_signal(signal.SIGTERM)
            for proc in procs[1:]:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            procs = procs[:1]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


main()
