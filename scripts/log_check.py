#!/usr/bin/env python3
"""The verifiable audit log, end to end against the real binary, judged by Go's sumdb code.

Starts `fake-upstream` and `serve`, makes mutations (each answer names its entry in
Mixpeek-Proxy-Audit-Index), saves the checkpoint, makes more, and runs the outside verifier
(scripts/tlog_client, Go's sumdb/tlog and sumdb/note over HTTP; it also holds the checkpoint's
origin to its key's name and to the saved checkpoint's): it must pass. Then it
tampers with copies of the stopped proxy's data dir — a record changed with its triggers
dropped, the same with the hash chain recomputed after it (which the chain alone then passes),
the log truncated to an earlier checkpoint, then grown into a forked history signed
with the real key — and shows that `audit verify --checkpoint` and the Go verifier both fail,
naming the index; and the same key serving under another origin is refused as another log.

    python3 scripts/log_check.py .build/debug/mixpeek-proxy
"""
import json, os, shutil, sqlite3, subprocess, sys, tempfile, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proctools
from proctools import Checks, stop

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".build/debug/mixpeek-proxy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
work = tempfile.mkdtemp(prefix="log-check-")
check = Checks()
TOKEN = "sk_logcheck_0123456789abcdefghijkl"


def logs(name):
    return os.path.join(work, name + ".log")


def build_client():
    out = os.path.join(ROOT, ".build", "tlog-client")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
               GOCACHE=os.environ.get("GOCACHE", os.path.join(ROOT, ".build", "go-cache")))
    subprocess.run(["go", "build", "-o", out, "./scripts/tlog_client"], cwd=ROOT, env=env, check=True)
    return out


def call(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Authorization", "Bearer " + TOKEN)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers


def mutations(port, names):
    """Creates, rotates and deletes each key; returns the answers' audit indexes."""
    indexes = []
    base = "/v1/organizations/users/alice@example.com/api-keys"
    for name in names:
        for method, path, body in [("POST", base, {"name": name}), ("POST", f"{base}/{name}/rotate", None),
                                   ("DELETE", f"{base}/{name}", None)]:
            status, headers = call(port, method, path, body)
            indexes.append(headers.get("Mixpeek-Proxy-Audit-Index"))
    return indexes


def field(value):
    """`AuditRecord.appendField`: `|length:value` (UTF-8 bytes), `|-` for none."""
    if value is None:
        return b"|-"
    data = str(value).encode()
    return b"|" + str(len(data)).encode() + b":" + data


def chain_hash(row, previous):
    """The chain's SHA-256 of a record after `previous` (`AuditRecord.canonicalEncoding`),
    written from its definition here, for the tamper that recomputes the chain."""
    import hashlib
    keys = row.keys()
    get = lambda name: row[name] if name in keys else None
    duration = get("duration_ms")
    body = b"".join(field(v) for v in [
        get("kind"), get("intent_seq"), get("time"), get("action"), get("user_email"), get("key_name"), get("caller"),
        get("client"), get("request_id"), get("upstream_status"), get("outcome"),
        None if duration is None else "%.3f" % duration, get("key_id"), get("key_prefix"), get("key_hash")])
    actor = [get("actor_key_id"), get("actor_key_prefix"), get("actor_key_name"), get("actor_user")]
    if any(v is not None for v in actor):
        body += b"".join(field(v) for v in [get("trace_id")] + actor)
        if get("upstream_audit_id") is not None:
            body += field(get("upstream_audit_id"))
    elif get("upstream_audit_id") is not None:
        body += field(get("trace_id")) + field(get("upstream_audit_id"))
    elif get("trace_id") is not None:
        body += field(get("trace_id"))
    encoding = b"mixpeek-proxy-audit-v1" + field(row["seq"]) + body + field(previous)
    return hashlib.sha256(encoding).hexdigest()


def run(args):
    result = subprocess.run(args, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def main():
    client = build_client()
    data = os.path.join(work, "data")
    fake, fake_port = proctools.start(BIN, ["fake-upstream", "--port", "0"], logs("fake"))
    serve = ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", data]
    try:
        proxy, port = proctools.start(BIN, serve, logs("proxy"))
        url = f"http://127.0.0.1:{port}"
        code, key = run([BIN, "audit", "log-key", "--data-dir", data])
        key = key.strip()
        check("audit log-key prints a verifier key", code == 0 and key.count("+") >= 2, key)
        first = mutations(port, [f"early-{n}" for n in range(30)])
        check("every mutation's answer carries Mixpeek-Proxy-Audit-Index", all(i is not None for i in first), str(first))
        saved = os.path.join(work, "saved.checkpoint")
        code, out = run([client, "-save", saved, url, key])
        check("Go's verifier passes the first checkpoint", code == 0, out)
        later = mutations(port, [f"late-{n}" for n in range(70)])
        code, out = run([client, "-saved", saved, url, key])
        check("Go's verifier passes the grown log, consistent with the saved checkpoint", code == 0, out)
        print("   " + out.strip())
        last = int(later[-1])
        code, out = run([BIN, "audit", "prove", "--data-dir", data, "--index", str(last)])
        check("audit prove verifies the last answer's index", code == 0 and "inclusion proof verifies" in out, out)
        code, out = run([BIN, "audit", "checkpoint", "--data-dir", data])
        check("audit checkpoint prints a signed checkpoint", code == 0 and out.count("\n") >= 4 and "\u2014 " in out, out)
        code, out = run([BIN, "audit", "verify", "--data-dir", data, "--checkpoint", saved])
        check("audit verify --checkpoint passes the untouched log", code == 0 and "audit log consistent" in out, out)
        # The contract's words: an entry's bytes are the line `audit query --format jsonl`
        # prints for its record (`--records`: every record, not mutations).
        lines = subprocess.run([BIN, "audit", "query", "--data-dir", data, "--records", "--format", "jsonl"],
                               capture_output=True).stdout.split(b"\n")[:-1]
        size = int(open(saved).read().split("\n")[1])
        served = []
        for n in range((len(lines) + 255) // 256):
            width = min(256, len(lines) - n * 256)
            suffix = "" if width == 256 else f".p/{width}"
            with urllib.request.urlopen(f"{url}/_proxy/log/tile/entries/{n:03d}{suffix}") as response:
                bundle = response.read()
            while bundle:
                length = int.from_bytes(bundle[:2], "big")
                served.append(bundle[2:2 + length])
                bundle = bundle[2 + length:]
        check(f"audit query --records --format jsonl prints each record's log entry, byte for byte the served entries ({len(lines)})",
              len(lines) > size and lines == served, f"{len(lines)} lines, {len(served)} served; first {lines[:1]} vs {served[:1]}")
        stop(proxy)

        def both_catch(copy, what, entry):
            """`audit verify --checkpoint` on the tampered copy, then Go's verifier on a proxy
            serving it: both fail, naming `entry`."""
            code, out = run([BIN, "audit", "verify", "--data-dir", copy, "--checkpoint", saved])
            check(f"audit verify --checkpoint catches {what}, naming entry {entry}", code == 1 and f"entry {entry}" in out, out)
            proxy, port = proctools.start(BIN, serve[:-1] + [copy], logs("proxy-" + os.path.basename(copy)))
            code, out = run([client, "-saved", saved, f"http://127.0.0.1:{port}", key])
            check(f"Go's verifier catches {what}, naming entry {entry}", code == 1 and f"entry {entry} " in out, out)
            stop(proxy)

        # A record changed in place, its triggers dropped: the tree still holds the old leaf.
        changed = os.path.join(work, "changed")
        shutil.copytree(data, changed)
        db = sqlite3.connect(os.path.join(changed, "audit.sqlite"))
        db.executescript("DROP TRIGGER audit_records_no_update;"
                         "UPDATE audit_records SET user_email = 'mallory@example.com' WHERE seq = 8;")
        db.close()
        both_catch(changed, "a changed record", 7)

        # A record changed and the hash chain recomputed after it (what whoever holds the file
        # can do): the chain verifies, only the tree still holds the old entry.
        rechained = os.path.join(work, "rechained")
        shutil.copytree(data, rechained)
        db = sqlite3.connect(os.path.join(rechained, "audit.sqlite"))
        db.row_factory = sqlite3.Row
        db.executescript("DROP TRIGGER audit_records_no_update;")
        db.execute("UPDATE audit_records SET user_email = 'mallory@example.com' WHERE seq = 8")
        rows = db.execute("SELECT * FROM audit_records WHERE seq >= 8 ORDER BY seq").fetchall()
        previous = db.execute("SELECT hash FROM audit_records WHERE seq = 7").fetchone()[0]
        for row in rows:
            digest = chain_hash(row, previous)
            db.execute("UPDATE audit_records SET prev_hash = ?, hash = ? WHERE seq = ?", (previous, digest, row["seq"]))
            previous = digest
        db.commit()
        db.close()
        code, out = run([BIN, "audit", "verify", "--data-dir", rechained])
        check("a record changed with the chain recomputed: the hash chain alone verifies (the tamper is a good one)",
              code == 0 and "audit chain intact" in out, out)
        both_catch(rechained, "it", 7)

        # Truncated back to an earlier checkpoint, tree and checkpoints too.
        truncated = os.path.join(work, "truncated")
        shutil.copytree(data, truncated)
        size = int(open(saved).read().split("\n")[1])
        db = sqlite3.connect(os.path.join(truncated, "audit.sqlite"))
        # An even size ends on an outcome: the proxy restarted on it has no intent to close.
        keep = db.execute("SELECT max(size) FROM log_checkpoints WHERE size < ? - 10 AND size % 2 = 0", (size,)).fetchone()[0]
        db.executescript("DROP TRIGGER audit_records_no_delete; DROP TRIGGER log_subtrees_no_delete;"
                         "DROP TRIGGER log_checkpoints_no_delete;")
        db.execute("DELETE FROM audit_records WHERE seq > ?", (keep,))
        db.execute("DELETE FROM log_subtrees WHERE (idx + 1) << level > ?", (keep,))
        db.execute("DELETE FROM log_checkpoints WHERE size > ?", (keep,))
        db.commit()
        db.close()
        code, out = run([BIN, "audit", "verify", "--data-dir", truncated, "--checkpoint", saved])
        check(f"audit verify --checkpoint catches the log truncated to {keep}, naming entry {keep}",
              code == 1 and f"entry {keep}" in out, out)
        # The copy serves under the original log's origin (its default would name the copy's
        # directory): an operator forking the log keeps its identity, key and name alike.
        origin = open(saved).read().split("\n", 1)[0]
        proxy, port = proctools.start(BIN, serve[:-1] + [truncated, "--log-origin", origin], logs("proxy-truncated"))
        code, out = run([client, "-saved", saved, f"http://127.0.0.1:{port}", key])
        check(f"Go's verifier catches the truncation, naming entry {keep}", code == 1 and f"entry {keep}" in out, out)
        # A forked history: the truncated log grown again past the saved checkpoint, every new
        # checkpoint signed with the real key (it lives in the data dir).
        mutations(port, [f"fork-{n}" for n in range(10)])
        code, out = run([client, "-saved", saved, f"http://127.0.0.1:{port}", key])
        check("Go's verifier catches a forked history signed with the real key", code == 1 and "rewritten" in out, out)
        stop(proxy)
        code, out = run([BIN, "audit", "verify", "--data-dir", truncated, "--checkpoint", saved])
        check("audit verify --checkpoint catches the forked history", code == 1 and "rewritten" in out, out)
        # The same key signing under another origin (a copy served with its default origin) is
        # another log to the verifier, not this one grown.
        renamed = os.path.join(work, "renamed")
        shutil.copytree(data, renamed)
        proxy, port = proctools.start(BIN, serve[:-1] + [renamed], logs("proxy-renamed"))
        mutations(port, ["renamed-0"])
        code, out = run([client, f"http://127.0.0.1:{port}", key])
        stop(proxy)
        check("Go's verifier refuses a checkpoint whose origin is not its key's name", code == 1 and "origin" in out, out)
    finally:
        stop(fake)
    status = check.summary("log check")
    if status == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs and data kept in {work}")
    return status


if __name__ == "__main__":
    sys.exit(main())
