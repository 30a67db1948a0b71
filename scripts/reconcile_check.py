#!/usr/bin/env python3
"""`audit reconcile` against the real binary and the fake's audit trail (issue 26).

1. Mutations through the proxy and two made directly at the fake (a create, a delete):
   reconcile reports exactly those two as around_proxy and exits 1; the same with a page of 2.
2. A proxy killed mid-mutation (the fake slow): after restart the intent is unknown;
   reconcile settles it as applied, appends a resolution record, `audit query` shows it,
   `audit verify` passes, the proxy appends after it, and a second run appends nothing.
3. A 429 from the audit endpoint is retried after Retry-After; a 401/403 exits 3 naming
   the ADMIN permission; no token exits 2.
4. The token never appears in any output, log line or file under the data dirs.
Prints `reconcile: N passed, M failed`.
"""
import datetime, json, os, subprocess, sys, tempfile, threading, time, urllib.request, urllib.error

import proctools
from proctools import Checks, stop

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".build/debug/mixpeek-proxy")
TOKEN = "sk_reconcile_client_0123456789abcdef"
ADMIN = "sk_reconcile_ADMIN_SECRET_9f8e7d6c5b4a"
USER = "rec@example.com"

check = Checks()
outputs = []  # every stdout and stderr a command printed, to look for the admin token in


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def call(port, method, path, body=None, token=TOKEN, timeout=15):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except Exception as error:
        return None, str(error)


def keys(user=USER):
    return f"/v1/organizations/users/{user}/api-keys"


def run(*args, env_token=ADMIN):
    env = dict(os.environ)
    env.pop("MIXPEEK_PROXY_RECONCILE_TOKEN", None)
    if env_token is not None:
        env["MIXPEEK_PROXY_RECONCILE_TOKEN"] = env_token
    result = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120, env=env)
    outputs.append(result.stdout + result.stderr)
    return result


def reconcile(data, fake_port, since, *extra, env_token=ADMIN):
    return run("audit", "reconcile", "--since", since, "--data-dir", data, "--upstream", f"http://127.0.0.1:{fake_port}",
               "--format", "jsonl", *extra, env_token=env_token)


def findings(result):
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def fault(fake_port, query):
    request = urllib.request.Request(f"http://127.0.0.1:{fake_port}/_fake/fault?{query}", data=b"", method="POST")
    urllib.request.urlopen(request, timeout=5).read()


def around_the_proxy(work, logs):
    data = os.path.join(work, "around")
    fake, fake_port = proctools.start(BIN, ["fake-upstream", "--port", "0"], logs("fake1"))
    proxy = None
    try:
        proxy, port = proctools.start(BIN, ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}",
                                            "--data-dir", data], logs("proxy1"))
        since = now()
        statuses = [
            call(port, "POST", keys(), {"name": "through-1"})[0],
            call(port, "POST", keys() + "/through-1/rotate")[0],
            call(port, "PATCH", keys() + "/through-1", {"description": "rotated once"})[0],
            call(port, "POST", keys(), {"name": "through-2"})[0],
            call(port, "DELETE", keys() + "/through-1")[0],
            call(port, "POST", keys(), {"name": "through-3"})[0],
            call(port, "DELETE", keys() + "/admin-key")[0],  # 403: no event, no finding
        ]
        check("around: the mutations through the proxy were answered", statuses == [200] * 6 + [403], str(statuses))
        direct = [call(fake_port, "POST", keys(), {"name": "made-directly"})[0], call(fake_port, "DELETE", keys() + "/through-3")[0]]
        check("around: the two direct mutations were applied by the fake", direct == [200, 200], str(direct))
        result = reconcile(data, fake_port, since)
        rows = findings(result)
        around = sorted((row["action"], row["key_name"]) for row in rows if row["finding"] == "around_proxy")
        check("around: exactly the direct create and delete are around_proxy",
              around == [("create", "made-directly"), ("delete", "through-3")] and len(rows) == 2, result.stdout + result.stderr)
        check("around: exit status 1", result.returncode == 1, f"{result.returncode} {result.stderr}")
        check("around: jsonl has the contract's fields",
              all({"finding", "action", "key_id", "key_name", "user_email", "time", "audit_id", "record_seq"} <= set(row) for row in rows)
              and all(row["audit_id"] and row["key_id"] for row in rows), result.stdout)
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{fake_port}/v1/organizations/audit/logs?resource_type=api_key&limit=2",
                headers={"Authorization": f"Bearer {ADMIN}"}), timeout=5) as response:
            page = json.loads(response.read())
        check("paging: the fake pages (limit 2 of more)", len(page["results"]) == 2 and page["total"] == 8, json.dumps(page)[:300])
        paged = reconcile(data, fake_port, since, "--page-size", "2")
        check("paging: a page of 2 finds the same", findings(paged) == rows and paged.returncode == 1, paged.stdout + paged.stderr)
        fault(fake_port, "op=audit&kind=ratelimit&value=2")
        started = time.time()
        limited = reconcile(data, fake_port, since, "--page-size", "3")
        waited = time.time() - started
        check("429: retried after Retry-After, same findings", findings(limited) == rows and limited.returncode == 1 and waited >= 2,
              f"{waited:.1f}s {limited.stdout} {limited.stderr}")
        for status in (401, 403):
            fault(fake_port, f"op=audit&kind=status&value={status}")
            refused = reconcile(data, fake_port, since)
            check(f"{status}: exit 3 and an error naming the ADMIN permission",
                  refused.returncode == 3 and "ADMIN" in refused.stderr and not refused.stdout, f"{refused.returncode} {refused.stderr}")
        fault(fake_port, "op=audit&kind=off")
        missing = reconcile(data, fake_port, since, env_token=None)
        check("no token: exit 2 naming the variable", missing.returncode == 2 and "MIXPEEK_PROXY_RECONCILE_TOKEN" in missing.stderr,
              f"{missing.returncode} {missing.stderr}")
        table = run("audit", "reconcile", "--since", since, "--data-dir", data, "--upstream", f"http://127.0.0.1:{fake_port}")
        check("table: one line a finding under a header", len(table.stdout.splitlines()) == 3 and "around_proxy" in table.stdout, table.stdout)
        verify = run("audit", "verify", "--data-dir", data)
        check("around: nothing appended, audit verify passes", verify.returncode == 0, verify.stdout)
    finally:
        if proxy:
            stop(proxy)
        stop(fake)


def killed_mid_mutation(work, logs):
    data = os.path.join(work, "crash")
    fake, fake_port = proctools.start(BIN, ["fake-upstream", "--port", "0", "--delay-ms", "1500"], logs("fake2"))
    proxy = None
    try:
        serve = ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", data]
        proxy, port = proctools.start(BIN, serve, logs("proxy2"))
        since = now()
        thread = threading.Thread(target=call, args=(port, "POST", keys(), {"name": "in-flight"}))
        thread.start()
        time.sleep(0.6)  # the intent is durable and the fake has applied it; its answer is 1.5 s away
        proxy.kill()
        proxy.wait(10)
        thread.join(15)
        proxy, port = proctools.start(BIN, serve, logs("proxy2b"))
        rows = [json.loads(line) for line in run("audit", "query", "--data-dir", data, "--format", "jsonl").stdout.splitlines()]
        check("crash: after restart the intent is unknown", [row["outcome"] for row in rows] == ["unknown"], str(rows))
        result = reconcile(data, fake_port, since)
        found = findings(result)
        check("crash: reconcile settles it as applied with the upstream's audit_id",
              len(found) == 1 and found[0]["finding"] == "resolved_unknown" and found[0]["resolution"] == "applied"
              and found[0]["audit_id"].startswith("aud_") and found[0]["record_seq"] == rows[0]["seq"], result.stdout + result.stderr)
        check("crash: a resolved unknown alone exits 0", result.returncode == 0, f"{result.returncode} {result.stderr}")
        after = [json.loads(line) for line in run("audit", "query", "--data-dir", data, "--format", "jsonl").stdout.splitlines()]
        check("crash: audit query shows the settled outcome and the audit_id",
              len(after) == 1 and after[0]["outcome"] == "applied" and after[0]["upstream_audit_id"] == found[0]["audit_id"]
              and after[0]["key_id"] == found[0]["key_id"] and after[0]["resolution_seq"] == 3, str(after))
        settled = run("audit", "query", "--data-dir", data, "--outcome", "applied", "--format", "jsonl")
        check("crash: --outcome applied finds it", len(settled.stdout.splitlines()) == 1, settled.stdout + settled.stderr)
        verify = run("audit", "verify", "--data-dir", data)
        check("crash: audit verify passes with the resolution, no unknown left",
              verify.returncode == 0 and "3 records" in verify.stdout and "unknown" not in verify.stdout, verify.stdout)
        status, _ = call(port, "POST", keys(), {"name": "after-resolution"})
        verify = run("audit", "verify", "--data-dir", data)
        check("crash: the running proxy appends after reconcile's record", status == 200 and verify.returncode == 0
              and "5 records" in verify.stdout, f"{status} {verify.stdout}")
        again = reconcile(data, fake_port, since)
        verify = run("audit", "verify", "--data-dir", data)
        check("crash: a second run finds nothing and appends nothing",
              findings(again) == [] and again.returncode == 0 and "5 records" in verify.stdout, again.stdout + again.stderr + verify.stdout)
    finally:
        if proxy:
            stop(proxy)
        stop(fake)


def token_never_written(work):
    leaks = [i for i, text in enumerate(outputs) if ADMIN in text]
    check("token: in no command's output", not leaks, f"outputs {leaks}")
    found = []
    for root, _, files in os.walk(work):
        for name in files:
            with open(os.path.join(root, name), "rb") as file:
                if ADMIN.encode() in file.read():
                    found.append(os.path.join(root, name))
    check("token: in no file under the data dirs nor any log", not found, str(found))


with tempfile.TemporaryDirectory() as work:
    logs = lambda name: os.path.join(work, name + ".log")
    for scenario in (around_the_proxy, killed_mid_mutation):
        try:
            scenario(work, logs)
        except Exception as error:
            check(scenario.__name__, False, repr(error))
    token_never_written(work)

sys.exit(check.summary("reconcile"))
