#!/usr/bin/env python3
"""A group of proxies on PostgreSQL against the real binary (issue 13, item 5).

Starts a throwaway PostgreSQL (scripts/postgres.sh), creates the proxies' role, runs
`group setup`, starts the fake upstream and three proxies A, B and C in one group, each with its
own data dir, and checks the claim: once any proxy in the group has sent the response to a
mutation, no proxy in the group serves a list for that user that predates it (except a list
marked `X-Cache: STALE`).

1. read-your-writes across proxies for create, update, rotate and delete;
2. a randomized, seeded property test (`--seed N` replays the clients' choices and the
   disturbances, not their timing): clients interleave mutations and lists through random
   proxies while, in spells, the proxies' LISTEN connections get PostgreSQL's announcements late
   (a relay holds them back) or a proxy is paused (SIGSTOP, less than a lease); every list is
   checked against what the clients were answered before sending it and against the fake's
   `/_fake/history`, and the cache must have served hits;
3. faults: the LISTEN connection killed, a proxy frozen (SIGSTOP) and one killed (SIGKILL) mid-
   mutation, PostgreSQL stopped mid-run, restarted under 16 clients' creates (every answered
   create has its outcome in the chain) and down at start, the role's privileges, a group with
   an HMAC-keyed chain (which the proxies chain themselves), and `audit verify --witness`
   against a rewritten and a truncated central chain;
4. the database role and credentials: a role set up with `group migrate --grant` cannot
   disable the chain's triggers or rewrite it, a self-migrating role is reported and refused
   with `--append-only-role`; `audit verify --expect-head` on the central chain; a witness file
   that cannot be written refuses mutations; the password from PGPASSWORD or a passfile, a
   warning for one in a flag; `/_proxy/health` without PostgreSQL's words;
5. trust and audit in the group: a key revoked through one proxy reads nothing from another's
   cache (by urllib and by the official SDK, also a key the other proxy never saw), the
   central chain names the acting key and keeps the trace id, the status page's audit panel
   reads the central chain, and `audit reconcile --postgres-url` finds changes made around the
   group and settles a reaped `unknown`.

Prints `PASS name` / `FAIL name: why` and `group: N passed, M failed`; exits 1 on a failure.

    python3 scripts/group_check.py .build/debug/mixpeek-proxy [--seed N] [--seconds S]
        [--only basic,property,listen,sigstop,sigkill,role,outage,restart,revoked,sdk-revoked,actor,status,
                reconcile,down-at-start,hmac,log,append-only,expect-head,witness,credentials,health-detail,reap,verify]
        [--no-pauses] [--pg-latency MS] [--without-group] [--keep]

`--without-group` starts the same proxies with no PostgreSQL (each alone) and runs checks 1 and
2 only: they must FAIL, which shows that they can.
"""
import argparse, json, os, random, re, signal, subprocess, sys, tempfile, threading, time, urllib.error, urllib.request

import pgtools
import proctools
from proctools import Checks

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("binary", nargs="?", default=".build/debug/mixpeek-proxy")
parser.add_argument("--seed", type=int, default=None, help="the property test's seed (random when not given)")
parser.add_argument("--seconds", type=float, default=20, help="the property test's length at most")
parser.add_argument("--ops", type=int, default=300, help="operations per client in the property test at most")
parser.add_argument("--clients", type=int, default=6)
parser.add_argument("--through", default="A,B,C", help="the proxies the property test's clients use (A,B,C)")
parser.add_argument("--no-pauses", dest="pauses", action="store_false",
                    help="no short SIGSTOP pauses of random proxies during the property test")
parser.add_argument("--pg-latency", type=float, default=60,
                    help="in the property test's slow spells, hold back what PostgreSQL sends A's, B's and C's LISTEN "
                         "connections (announcements) by up to this many ms per chunk; 0: no slow spells")
parser.add_argument("--only", default="", help="comma-separated check names (default: all)")
parser.add_argument("--without-group", action="store_true", help="proxies without PostgreSQL: checks 1 and 2 must fail")
parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) and print where it is")
options = parser.parse_args()

BIN = os.path.abspath(options.binary)
TOKEN = "sk_group_0123456789abcdefghijklmnop"
RECONCILE_ADMIN = "sk_group_reconcile_ADMIN_7e6d5c4b3a29"
ROLE, ROLE_PASSWORD = "mixpeek_proxy", "pw"
LEASE = 2.0             # --group-lease
UPSTREAM_TIMEOUT = 2.0  # --upstream-timeout (the reaper closes an orphan after this plus 2 s)
REAPER_MARGIN = 2.0

check = Checks()


def utc(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def keys_path(user, key=None, op=None):
    path = f"/v1/organizations/users/{user}/api-keys"
    if key is not None:
        path += f"/{key}"
    if op is not None:
        path += f"/{op}"
    return path


class Reply:
    """One HTTP exchange as a client saw it: when it was sent (t0) and answered (t1, monotonic)."""

    def __init__(self, status, headers, text, t0, t1):
        self.status, self.headers, self.text, self.t0, self.t1 = status, headers, text, t0, t1

    @property
    def json(self):
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    @property
    def cache(self):
        return self.headers.get("x-cache", "-")

    def keys(self):
        """A list's keys as {name: (description, key_prefix)}; None when it is not a list."""
        body = self.json
        if self.status != 200 or not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            return None
        return {k.get("name"): (k.get("description"), k.get("key_prefix")) for k in body["keys"]}

    def __repr__(self):
        return f"{self.status} {self.cache} {self.text[:160]!r}"


def call(port, method, path, body=None, timeout=15, token=TOKEN, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = dict(headers or {})
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, text, t0, time.monotonic())
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        return Reply(error.code, {k.lower(): v for k, v in error.headers.items()}, text, t0, time.monotonic())
    except Exception as error:  # refused, reset, timed out: no answer
        return Reply(None, {}, f"{type(error).__name__}: {error}", t0, float("inf"))


def list_keys(proxy, user):
    return call(proxy.port, "GET", keys_path(user))


def create(proxy, user, name, description=None, timeout=15):
    body = {"name": name}
    if description is not None:
        body["description"] = description
    return call(proxy.port, "POST", keys_path(user), body, timeout=timeout)


def update(proxy, user, name, description):
    return call(proxy.port, "PATCH", keys_path(user, name), {"description": description})


def rotate(proxy, user, name):
    return call(proxy.port, "POST", keys_path(user, name, "rotate"))


def delete(proxy, user, name):
    return call(proxy.port, "DELETE", keys_path(user, name))


def health(proxy, timeout=5):
    reply = call(proxy.port, "GET", "/_proxy/health", timeout=timeout, token=None)
    return reply.status, reply.json or {}


def wait_until(condition, timeout, interval=0.1):
    """Calls `condition` until it returns something true or `timeout` seconds pass; returns
    (value, seconds waited)."""
    start = time.monotonic()
    while True:
        value = condition()
        if value or time.monotonic() - start >= timeout:
            return value, time.monotonic() - start
        time.sleep(interval)


def is_error_shape(reply, status):
    """The contract's error shape, as the proxy makes it: `{"success": false, "status": N,
    "error": {"message", "type", "code" (mixpeek_proxy.…), "details" (optional)}}`."""
    body = reply.json
    return (isinstance(body, dict) and body.get("success") is False and body.get("status") == status
            and isinstance(body.get("error"), dict)
            and all(isinstance(body["error"].get(field), str) for field in ("message", "type", "code"))
            and body["error"]["code"].startswith("mixpeek_proxy."))


class Fake:
    def __init__(self, work):
        self.proc, self.port = proctools.start(BIN, ["fake-upstream", "--port", "0"], os.path.join(work, "fake.log"))
        self.url = f"http://127.0.0.1:{self.port}"

    def history(self, after=0):
        reply = call(self.port, "GET", f"/_fake/history?after={after}", token=None)
        if reply.status != 200 or not isinstance(reply.json, dict):
            raise RuntimeError(f"GET /_fake/history answered {reply}")
        return reply.json

    def last(self):
        return self.history(after=10**12)["last"]

    def lists(self, user):
        return self.history(after=10**12)["lists"].get(user, 0)

    def fault(self, query):
        reply = call(self.port, "POST", f"/_fake/fault?{query}", token=None)
        if reply.status != 200:
            raise RuntimeError(f"POST /_fake/fault?{query} answered {reply}")

    def stop(self):
        proctools.stop(self.proc)


class Proxy:
    """One proxy of the group: its name (--proxy-id), data dir (with its witness) and process."""

    def __init__(self, name, work, upstream, postgres_url, via_env=False, env=None, extra=(), file_size_limit=None):
        self.name, self.work, self.upstream, self.postgres_url, self.via_env = name, work, upstream, postgres_url, via_env
        self.env = env or {}
        # `extra`: more flags for `serve`; `file_size_limit`: bytes beyond which the proxy's
        # writes to any file fail (RLIMIT_FSIZE, with SIGXFSZ ignored: EFBIG, as a full quota).
        self.extra, self.file_size_limit = list(extra), file_size_limit
        self.data = os.path.join(work, f"data-{name}")
        self.proc, self.port, self.starts, self.frozen = None, None, 0, False

    def start(self):
        self.starts += 1
        args = ["serve", "--port", "0", "--upstream", self.upstream, "--data-dir", self.data,
                "--upstream-timeout", str(UPSTREAM_TIMEOUT), "--cache-ttl", "3600", "--log-level", "warning"]
        env = dict(os.environ, **self.env) if self.env else None
        if self.postgres_url:
            args += ["--proxy-id", self.name, "--group-lease", str(LEASE)]
            if self.via_env:
                env = dict(env or os.environ, MIXPEEK_PROXY_POSTGRES_URL=self.postgres_url)
            else:
                args += ["--postgres-url", self.postgres_url]
        args += self.extra
        self.log = os.path.join(self.work, f"proxy-{self.name}-{self.starts}.log")
        if self.file_size_limit is None:
            self.proc, self.port = proctools.start(BIN, args, self.log, env=env)
        else:
            script = f'ulimit -f {self.file_size_limit // 1024} && trap "" XFSZ && exec "$0" "$@"'
            self.proc, self.port = proctools.start("bash", ["-c", script, BIN, *args], self.log, env=env)
        return self

    def log_text(self):
        with open(self.log, errors="replace") as handle:
            return handle.read()

    def freeze(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self):
        self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def kill(self):
        if self.frozen:
            self.thaw()
        self.proc.kill()
        self.proc.wait(10)

    def stop(self):
        if self.proc is None:
            return
        if self.frozen:
            self.thaw()
        proctools.stop(self.proc)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class Group:
    """PostgreSQL, the fake and the proxies; everything stopped by `close`."""

    def __init__(self, work, with_group=True):
        self.work, self.with_group = work, with_group
        self.pg, self.relay, self.fake, self.proxies = None, None, None, {}
        self.admin_url = self.role_url = self.relayed_url = None

    def open(self):
        if self.with_group:
            self.pg = pgtools.Postgres()
            self.pg.start()
            self.admin_url = self.pg.url + "?sslmode=disable"
            self.role_url = self.pg.url_for(ROLE, ROLE_PASSWORD)
            # A, B and C reach PostgreSQL through a relay that can hold back what it sends them.
            self.relay = pgtools.Relay(self.pg.port, marker=b"mixpeek-proxy listen")
            self.relayed_url = self.pg.url_for(ROLE, ROLE_PASSWORD, port=self.relay.port)
            self.pg.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
            setup = self.run("group", "migrate", "--postgres-url", self.admin_url, "--grant", ROLE)
            check("group migrate --grant migrates and grants (exit 0)", setup.returncode == 0, setup.stdout + setup.stderr)
            if setup.returncode != 0:
                raise RuntimeError("group migrate failed")
            again = self.run("group", "setup", "--postgres-url", self.admin_url, "--role", ROLE)
            check("group setup --role (the older name) run again changes nothing (exit 0)", again.returncode == 0,
                  again.stdout + again.stderr)
        self.fake = Fake(self.work)
        for name in ("A", "B", "C"):
            self.add(name)
        if self.with_group:
            healthy, waited = self.wait_healthy(["A", "B", "C"], 15)
            check(f"A, B and C start and report the group ok ({waited:.1f} s)", bool(healthy),
                  f"{[health(p) for p in self.proxies.values()]}")
        return self

    def add(self, name, via_env=False):
        url = (self.relayed_url if name in ("A", "B", "C") else self.role_url) if self.with_group else None
        proxy = Proxy(name, self.work, self.fake.url, url, via_env)
        self.proxies[name] = proxy
        return proxy.start()

    def __getitem__(self, name):
        return self.proxies[name]

    def run(self, *args, timeout=60, env=None):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else {**os.environ, **env})

    def reconcile(self, since, *extra):
        """`audit reconcile --postgres-url` of the central chain against the fake's audit log."""
        return self.run("audit", "reconcile", "--postgres-url", self.role_url, "--since", since, "--upstream", self.fake.url,
                        "--format", "jsonl", *extra, env={"MIXPEEK_PROXY_RECONCILE_TOKEN": RECONCILE_ADMIN})

    def audit_query(self, *filters):
        """`audit query --postgres-url ... --format json`: the rows, or raises."""
        result = self.run("audit", "query", "--postgres-url", self.role_url, *filters, "--format", "json")
        if result.returncode != 0:
            raise RuntimeError(f"audit query exited {result.returncode}: {result.stderr.strip()[:400]}")
        return json.loads(result.stdout or "[]")

    def witnesses(self, names=("A", "B", "C")):
        args = []
        for name in names:
            args += ["--witness", self.proxies[name].data]
        return args

    def wait_healthy(self, names, timeout=15):
        def all_ok():
            for name in names:
                status, body = health(self.proxies[name])
                if status != 200 or body.get("status") != "ok" or body.get("group") != "ok":
                    return False
            return True
        return wait_until(all_ok, timeout, 0.2)

    def close(self):
        for proxy in self.proxies.values():
            try:
                proxy.stop()
            except Exception as error:
                print(f"group: stopping proxy {proxy.name}: {error!r}", file=sys.stderr)
        if self.fake:
            self.fake.stop()
        if self.relay:
            self.relay.close()
        if self.pg:
            self.pg.cleanup()


# ---- 1. read-your-writes across proxies ---------------------------------------------------

def prime(proxy, user):
    """Lists twice through `proxy`: the second should be a hit. Returns the two replies."""
    return list_keys(proxy, user), list_keys(proxy, user)


def cached_list(proxy, user, timeout=3):
    """A list served from `proxy`'s cache: lists until one is a HIT (a proxy may forward a
    user's lists uncached for a moment after a mutation, until it has read the outcome), for
    `timeout` seconds at most. Returns the last reply."""
    last = {}

    def hit():
        last["reply"] = list_keys(proxy, user)
        return last["reply"].cache == "HIT"
    wait_until(hit, timeout, 0.05)
    return last["reply"]


def basic(group):
    A, B, C = group["A"], group["B"], group["C"]
    user = "ryw@example.com"

    first, second = prime(B, user)
    check("basic: list via B, then again: MISS then HIT (the cache is on)",
          first.status == 200 and first.cache == "MISS" and second.status == 200 and second.cache == "HIT",
          f"{first!r} / {second!r}")

    # Each step: B and C hold a cached list that is right before the mutation (else the step
    # proves nothing, and fails), A mutates, B's and C's next lists show it.
    state = {"prefix": None}

    def created(reply):
        state["prefix"] = (reply.json or {}).get("key_prefix")
        return True
    steps = [
        ("create", lambda: create(A, user, "ryw-1", "first"),
         lambda keys: "ryw-1" not in keys,
         lambda keys, reply: created(reply) and keys.get("ryw-1", (None, None)) == ("first", state["prefix"])),
        ("update", lambda: update(A, user, "ryw-1", "second"),
         lambda keys: keys.get("ryw-1", (None, None)) == ("first", state["prefix"]),
         lambda keys, reply: keys.get("ryw-1", (None,))[0] == "second"),
        ("rotate", lambda: rotate(A, user, "ryw-1"),
         lambda keys: keys.get("ryw-1", (None, None)) == ("second", state["prefix"]),
         lambda keys, reply: created(reply) and keys.get("ryw-1", (None, None)) == ("second", state["prefix"])),
        ("delete", lambda: delete(A, user, "ryw-1"),
         lambda keys: keys.get("ryw-1", (None, None)) == ("second", state["prefix"]),
         lambda keys, reply: "ryw-1" not in keys),
    ]
    for op, mutate, right_before, right_after in steps:
        primed = {p.name: cached_list(p, user) for p in (B, C)}
        reply = mutate()
        after = {p.name: list_keys(p, user) for p in (B, C)}
        stale_before = [n for n, r in primed.items() if r.cache != "HIT" or not right_before(r.keys() or {})]
        fresh_after = reply.status == 200 and all(r.status == 200 and r.cache != "STALE" and right_after(r.keys() or {}, reply)
                                                  for r in after.values())
        check(f"basic: {op} via A (answered), then list via B and via C: they show it",
              fresh_after and not stale_before,
              (f"cached lists on {stale_before} were already not right before the {op}: {primed}; " if stale_before else "")
              + f"{op} {reply!r}; after: {after}")

    # A mutation the upstream refuses is a mutation too: answered, and lists go on.
    cached_list(B, user)
    refused = delete(A, user, "no-such-key")
    after_b = list_keys(B, user)
    check("basic: a refused delete via A (404) is answered, and B still answers lists",
          refused.status == 404 and after_b.status == 200, f"delete {refused!r}; B {after_b!r}")

    # And the other way round: mutate via C, read via A.
    second = cached_list(A, user)
    made = create(C, user, "ryw-2")
    after_a = list_keys(A, user)
    check("basic: create via C, then list via A: the new key is there",
          second.cache == "HIT" and "ryw-2" not in (second.keys() or {}) and made.status == 200 and "ryw-2" in (after_a.keys() or {}),
          f"primed {second!r}; create {made!r}; A {after_a!r}")


# ---- 2. the randomized property test -----------------------------------------------------

class Mutation:
    def __init__(self, op, user, name, proxy, reply, description=None):
        self.op, self.user, self.name, self.proxy, self.description = op, user, name, proxy, description
        self.t0, self.t1, self.status = reply.t0, reply.t1, reply.status
        body = reply.json if isinstance(reply.json, dict) else {}
        self.prefix = body.get("key_prefix")

    @property
    def ok(self):
        return self.status is not None and 200 <= self.status < 300

    @property
    def no_op(self):
        """Refused by the upstream (4xx): nothing changed there."""
        return self.status is not None and 400 <= self.status < 500


def expected_by(mutation):
    """What a list shows for the key after `mutation` and nothing else: None for absent, else
    (description or None to skip, key_prefix or None to skip)."""
    if mutation.op == "delete":
        return None
    if mutation.op == "create":
        return (mutation.description, mutation.prefix)
    if mutation.op == "update":
        return (mutation.description, None)
    return (None, mutation.prefix)  # rotate


def property_violations(lists, mutations, names, start):
    """The client-side rule. For each list (200, not STALE) and each key name: take the
    mutations of that key that could have changed the upstream (not refused with a 4xx). If
    one, U, was answered 2xx before the list was sent, is the latest such to start, and no other
    could have been applied after it (none started before the list was answered and ended after
    U started), the list must show exactly U's effect. Keys no mutation touched before the list
    was answered must be absent. Returns (violations, determinate checks)."""
    by_key = {}
    for m in mutations:
        if not m.no_op:
            by_key.setdefault((m.user, m.name), []).append(m)
    violations, determinate = [], 0
    for reply, proxy, user in lists:
        if reply.status != 200 or reply.cache == "STALE":
            continue
        shown = reply.keys() or {}
        for name in names:
            touched = [m for m in by_key.get((user, name), []) if m.t0 < reply.t1]
            if not touched:
                determinate += 1
                if name in shown:
                    violations.append(f"list via {proxy} of {user} at +{reply.t0 - start:.3f}s ({reply.cache}) shows {name}, "
                                      f"which no mutation had touched")
                continue
            answered = [m for m in touched if m.t1 < reply.t0]
            if not answered:
                continue
            last = max(answered, key=lambda m: m.t0)
            if not last.ok or any(m is not last and m.t1 > last.t0 for m in touched):
                continue
            determinate += 1
            want = expected_by(last)
            have = shown.get(name)
            why = None
            if want is None and have is not None:
                why = f"still shows {name}"
            elif want is not None and have is None:
                why = f"lacks {name}"
            elif want is not None and want[0] is not None and have[0] != want[0]:
                why = f"shows {name} with description {have[0]!r}, not {want[0]!r}"
            elif want is not None and want[1] is not None and have[1] != want[1]:
                why = f"shows {name} with key_prefix {have[1]!r}, not {want[1]!r}"
            if why:
                violations.append(
                    f"list via {proxy} of {user} sent at +{reply.t0 - start:.3f}s ({reply.cache}) {why}, but {last.op} of it "
                    f"via {last.proxy} was answered {last.status} at +{last.t1 - start:.3f}s")
    return violations, determinate


def history_violations(lists, mutations, history, users):
    """The same lists against the fake's history: the names a list shows must be the user's
    names at some point at or after the latest mutation of that user that had been answered
    before the list was sent. If n mutations of one (op, user, key) were answered 2xx before
    the list was sent, at least n such had been applied, so the n-th such entry of the history
    (the order the fake applied them in) was too."""
    entries = [e for e in history["mutations"] if 200 <= e["status"] < 300 and e["user"] in users]
    occurrences, states = {}, {u: [(0, frozenset(["admin-key"]))] for u in users}
    for e in entries:
        occurrences.setdefault((e["op"], e["user"], e["key"]), []).append(e["index"])
        names = set(states[e["user"]][-1][1])
        if e["op"] == "create":
            names.add(e["key"])
        elif e["op"] == "delete":
            names.discard(e["key"])
        states[e["user"]].append((e["index"], frozenset(names)))
    ok_mutations = sorted((m for m in mutations if m.ok), key=lambda m: m.t1)
    violations = []
    for reply, proxy, user in lists:
        if reply.status != 200 or reply.cache == "STALE":
            continue
        counts = {}
        for m in ok_mutations:
            if m.t1 >= reply.t0:
                break
            if m.user == user:
                counts[(m.op, m.user, m.name)] = counts.get((m.op, m.user, m.name), 0) + 1
        floor = 0
        for group_key, n in counts.items():
            seen = occurrences.get(group_key, [])
            if len(seen) < n:
                violations.append(f"the fake applied {len(seen)} {group_key}, the clients were answered 2xx for {n}")
                continue
            floor = max(floor, seen[n - 1])
        shown = frozenset((reply.keys() or {}).keys())
        user_states = states[user]
        # The state in effect at `floor`, and every later one.
        first = max(i for i, (index, _) in enumerate(user_states) if index <= floor)
        if shown not in {names for _, names in user_states[first:]}:
            violations.append(f"list via {proxy} of {user} ({reply.cache}) shows {sorted(shown)}: no state of the fake at or "
                              f"after its mutation #{floor} (then: {sorted(user_states[first][1])})")
    return violations


def property_test(group, seed):
    proxies = [group[n] for n in options.through.split(",")]
    users = [f"prop{i}-{seed}@example.com" for i in range(4)]
    names = [f"k{i}" for i in range(5)]
    mutations, lists, lock = [], [], threading.Lock()
    start = time.monotonic()
    deadline = start + options.seconds
    print(f"group: property test seed {seed} (replay the clients' choices with --seed {seed})", flush=True)

    def client(number):
        rng = random.Random(f"{seed}/{number}")
        for n in range(options.ops):
            if time.monotonic() >= deadline:
                return
            user, proxy, name, draw = rng.choice(users), rng.choice(proxies), rng.choice(names), rng.random()
            if draw < 0.85:
                reply = list_keys(proxy, user)
                with lock:
                    lists.append((reply, proxy.name, user))
                continue
            if draw < 0.905:
                description = f"c{number}-{n}"
                reply = create(proxy, user, name, description)
                mutation = Mutation("create", user, name, proxy.name, reply, description)
            elif draw < 0.94:
                mutation = Mutation("delete", user, name, proxy.name, delete(proxy, user, name))
            elif draw < 0.97:
                description = f"u{number}-{n}"
                mutation = Mutation("update", user, name, proxy.name, update(proxy, user, name, description), description)
            else:
                mutation = Mutation("rotate", user, name, proxy.name, rotate(proxy, user, name))
            with lock:
                mutations.append(mutation)

    # Spells of slow announcements (the relay holds back what PostgreSQL sends the proxies' LISTEN
    # connections) and short pauses of a proxy (SIGSTOP for less than a lease) widen the race a
    # proxy must win: a peer that has not yet heard of a mutation must not be serving that user's
    # cached lists once the mutation is answered. Off between spells, so the cache gets used.
    finished = threading.Event()
    disturbed = {"pauses": 0, "slow spells": 0}

    def disturber():
        rng = random.Random(f"{seed}/disturb")
        while not finished.wait(rng.uniform(0.3, 0.8)):
            if group.relay and options.pg_latency > 0 and (rng.random() < 0.5 or not options.pauses):
                group.relay.marked_delay = (0.0, options.pg_latency / 1000)
                try:
                    finished.wait(rng.uniform(0.5, 1.5))
                finally:
                    group.relay.marked_delay = (0.0, 0.0)
                disturbed["slow spells"] += 1
            elif options.pauses:
                proxy = rng.choice(proxies)
                proxy.freeze()
                try:
                    finished.wait(rng.uniform(0.1, 0.4))
                finally:
                    proxy.thaw()
                disturbed["pauses"] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(options.clients)]
    disturbing = threading.Thread(target=disturber, daemon=True)
    disturbing.start()
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(options.seconds + 60)
    finally:
        finished.set()
        disturbing.join(5)
    elapsed = time.monotonic() - start
    stuck = sum(thread.is_alive() for thread in threads)

    answered = [reply for reply, _, _ in lists]
    by_cache = {}
    for reply in answered:
        by_cache[reply.cache] = by_cache.get(reply.cache, 0) + 1
    hits = by_cache.get("HIT", 0)
    ok_mutations = [m for m in mutations if m.ok]
    failed = [r for r in answered if r.status != 200] + [m for m in mutations if m.status is None or m.status >= 500]
    print(f"group: property test: {elapsed:.1f} s, {disturbed['pauses']} pauses, {disturbed['slow spells']} slow spells, {len(lists)} lists {by_cache}, {len(mutations)} mutations "
          f"({len(ok_mutations)} 2xx: " + ", ".join(f"{op} {sum(m.op == op for m in ok_mutations)}"
                                                    for op in ("create", "update", "rotate", "delete")) + ")", flush=True)

    check("property: the clients finished", stuck == 0, f"{stuck} client threads still running")
    check("property: every request was answered, none with a 5xx", not failed,
          f"{len(failed)}: " + "; ".join(repr(getattr(f, 'text', f)) if isinstance(f, Reply) else f"{f.op} {f.status}" for f in failed[:5]))
    check("property: it exercised the cache (more than 20% of lists were hits)",
          len(answered) >= 100 and hits > 0.2 * len(answered), f"{hits} hits of {len(answered)} lists")
    check("property: it mutated (at least 40 mutations answered 2xx)", len(ok_mutations) >= 40, f"{len(ok_mutations)}")

    violations, determinate = property_violations(lists, mutations, names, start)
    check(f"property: no list predates a mutation answered before it was sent ({determinate} determinate key checks)",
          not violations and determinate >= 200,
          f"{len(violations)} violations (seed {seed}): " + " | ".join(violations[:6]) if violations
          else f"only {determinate} determinate key checks")

    try:
        history = group.fake.history()
    except Exception as error:
        check("property: the fake's history is readable", False, repr(error))
        return
    applied = {}
    for e in history["mutations"]:
        key = (e["op"], e["user"], e["key"], e["status"])
        applied[key] = applied.get(key, 0) + 1
    sent = {}
    for m in mutations:
        if m.status is not None and m.status < 500:
            key = (m.op, m.user, m.name, m.status)
            sent[key] = sent.get(key, 0) + 1
    missing = [f"{k} x{n} (history: {applied.get(k, 0)})" for k, n in sent.items() if applied.get(k, 0) < n]
    check("property: every mutation a client was answered for (2xx or 4xx) is in the fake's history with that status",
          not missing, "; ".join(missing[:6]))
    extra = [e for e in history["mutations"] if e["user"] in users and e["status"] >= 500]
    check("property: the fake answered no mutation with a 5xx", not extra, f"{extra[:3]}")
    hviolations = history_violations(lists, mutations, history, set(users))
    check("property: every list is a state of the fake's history no older than the mutations answered before it",
          not hviolations, f"{len(hviolations)} (seed {seed}): " + " | ".join(hviolations[:5]))
    if group.with_group:
        try:
            rows = group.audit_query()
        except Exception as error:
            check("property: the central audit records the mutations", False, repr(error))
            return
        ok_rows = {}
        for row in rows:
            if row.get("user_email") in users and row.get("outcome") == "ok":
                key = (row.get("action"), row.get("user_email"), row.get("key_name"))
                ok_rows[key] = ok_rows.get(key, 0) + 1
        want = {}
        for m in ok_mutations:
            want[(m.op, m.user, m.name)] = want.get((m.op, m.user, m.name), 0) + 1
        short = [f"{k}: {ok_rows.get(k, 0)} ok rows for {n} answered 2xx" for k, n in want.items() if ok_rows.get(k, 0) < n]
        check("property: the central audit has an `ok` record for every mutation answered 2xx", not short, "; ".join(short[:5]))


# ---- 3. faults ---------------------------------------------------------------------------

def listen_connection_killed(group):
    A, B = group["A"], group["B"]
    pg = group.pg

    def listeners():
        return set(pg.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'mixpeek-proxy listen B'").split())
    for round_number, pause in enumerate((0.0, 0.3, 0.0)):
        user = f"listen{round_number}@example.com"
        second = cached_list(B, user)
        old = listeners()
        terminated = pg.psql("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity "
                             "WHERE application_name = 'mixpeek-proxy listen B') t WHERE done")
        if round_number == 0:
            check("LISTEN killed: B's LISTEN connection is there to kill (application_name 'mixpeek-proxy listen B')",
                  terminated == "1", f"{terminated} terminated")
        time.sleep(pause)
        made = create(A, user, "after-kill")
        seen = list_keys(B, user)
        check(f"LISTEN killed (round {round_number + 1}, {pause:.1f} s): create via A ({made.status}, "
              f"{made.t1 - made.t0:.2f} s), then list via B right away: fresh",
              second.cache == "HIT" and made.status == 200 and seen.status == 200 and seen.cache != "STALE"
              and "after-kill" in (seen.keys() or {}),
              f"primed {second!r}; create {made!r}; list {seen!r}")
        back, waited = wait_until(lambda: listeners() - old, 15, 0.2)
        check(f"LISTEN killed (round {round_number + 1}): B listens again ({waited:.1f} s)", bool(back), "no LISTEN connection after 15 s")
        # And caches again.
        cached, _ = wait_until(lambda: prime(B, user)[1].cache == "HIT", 10, 0.3)
        check(f"LISTEN killed (round {round_number + 1}): B serves hits again", bool(cached), "no HIT within 10 s")
    # Every proxy's LISTEN connection at once.
    user = "listen-all@example.com"
    for name in ("A", "B", "C"):
        cached_list(group[name], user)
    everyone = "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'mixpeek-proxy listen %'"
    old = set(pg.psql(everyone).split())
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'mixpeek-proxy listen %'")
    made = create(group["C"], user, "after-kill-all")
    seen = {name: list_keys(group[name], user) for name in ("A", "B")}
    check("LISTEN killed on every proxy: create via C, lists via A and B are fresh",
          made.status == 200 and all("after-kill-all" in (r.keys() or {}) and r.cache != "STALE" for r in seen.values()),
          f"create {made!r}; {seen}")
    back, waited = wait_until(lambda: len(set(pg.psql(everyone).split()) - old) >= 3, 15, 0.2)
    check(f"LISTEN killed on every proxy: all three listen again ({waited:.1f} s)", bool(back), pg.psql(everyone))


def frozen_proxy(group):
    A, C = group["A"], group["C"]
    user = "frozen@example.com"
    second = cached_list(C, user)
    C.freeze()
    try:
        made = create(A, user, "while-frozen")
        waited = made.t1 - made.t0
        check(f"SIGSTOP: a mutation via A waits at most about a lease ({waited:.2f} s < {LEASE + 1.5:.1f} s), then proceeds",
              made.status == 200 and waited < LEASE + 1.5, f"{made!r} after {waited:.2f} s")
        again = create(A, user, "while-frozen-2")
        check(f"SIGSTOP: the next mutation via A proceeds too ({again.t1 - again.t0:.2f} s)",
              again.status == 200 and again.t1 - again.t0 < LEASE + 1.5, f"{again!r}")
        # A list sent to C while it is frozen waits in its socket: the first thing it reads.
        queued = {}
        thread = threading.Thread(target=lambda: queued.setdefault("reply", list_keys(C, user)), daemon=True)
        thread.start()
        time.sleep(0.3)
    finally:
        C.thaw()
    after = [list_keys(C, user) for _ in range(3)]
    thread.join(20)
    replies = [queued.get("reply")] + after
    fresh = all(r is not None and r.status == 200 and (r.cache == "STALE" or {"while-frozen", "while-frozen-2"} <= set(r.keys() or {}))
                for r in replies)
    check("SIGSTOP then SIGCONT: C serves no list that predates the mutations (the one queued while frozen, then three)",
          second.cache == "HIT" and fresh, f"primed {second!r}; {replies}")
    cached, _ = wait_until(lambda: prime(C, user)[1].cache == "HIT", 10, 0.3)
    check("SIGSTOP then SIGCONT: C serves hits again", bool(cached), "no HIT within 10 s")


def killed_mid_mutation(group):
    A, B, C = group["A"], group["B"], group["C"]
    fake = group.fake
    user = "killed@example.com"
    cached_list(A, user), cached_list(B, user)
    before = fake.last()
    fake.fault("op=create&kind=delay&value=3000")
    answers = {}
    thread = threading.Thread(target=lambda: answers.setdefault("reply", create(C, user, "orphan", timeout=20)), daemon=True)
    sent, sent_wall = time.monotonic(), time.time()
    try:
        thread.start()
        # The fake applies a create when it arrives (and answers 3 s later): by then C has
        # committed its intent and forwarded.
        arrived, _ = wait_until(lambda: any(e["op"] == "create" and e["user"] == user for e in fake.history(before)["mutations"]), 10, 0.02)
        check("SIGKILL mid-mutation: the create reached the upstream", bool(arrived), "not in the fake's history after 10 s")
        C.kill()
    finally:
        fake.fault("op=create&kind=off")
    thread.join(10)
    killed_at = time.monotonic()
    # `audit query` shows an intent without an outcome as `unknown` too; the reaper's outcome
    # gives it a `finished_at`.
    rows = [row for row in group.audit_query("--user", user, "--action", "create") if row.get("key_name") == "orphan"]
    check(f"SIGKILL mid-mutation: its intent is in the central chain, open ({killed_at - sent:.1f} s after it was sent: "
          f"`unknown` without finished_at)",
          len(rows) == 1 and rows[0].get("outcome") == "unknown" and not rows[0].get("finished_at"), f"{rows}")
    # While the intent is open (it cannot be closed before upstream_timeout + margin after it
    # was written), lists of that user on the others are forwarded and not cached.
    open_until = sent + UPSTREAM_TIMEOUT + REAPER_MARGIN - 0.5
    replies = []
    while time.monotonic() < open_until and len(replies) < 8:
        for proxy in (A, B):
            replies.append((proxy.name, list_keys(proxy, user)))
        time.sleep(0.2)
    in_window = [(n, r) for n, r in replies if r.t1 < open_until]
    check(f"SIGKILL mid-mutation: while the intent is open, lists of that user on A and B are MISS, never HIT "
          f"({len(in_window)} lists in {open_until - killed_at:.1f} s)",
          len(in_window) >= 2 and all(r.status == 200 and r.cache == "MISS" and "orphan" in (r.keys() or {}) for _, r in in_window),
          f"{in_window}")
    other = list_keys(A, "killed-other@example.com"), list_keys(A, "killed-other@example.com")
    check("SIGKILL mid-mutation: lists of other users are still cached", other[1].cache == "HIT", f"{other}")

    def closed():
        rows = group.audit_query("--user", user, "--action", "create")
        return [row for row in rows if row.get("key_name") == "orphan" and row.get("outcome") == "unknown" and row.get("finished_at")]
    rows, _ = wait_until(closed, 15, 0.25)
    seen_after = time.monotonic() - sent
    # Closed after upstream_timeout + margin (the proxy's reckoning may add a lease), checked
    # every second; this script's audit query takes a moment too.
    bound = UPSTREAM_TIMEOUT + LEASE + REAPER_MARGIN + 2.5
    check(f"SIGKILL mid-mutation: a reaper closes the intent as `unknown` ({seen_after:.1f} s after it was sent; "
          f"at most {bound:.1f} s)", bool(rows) and seen_after < bound, f"rows {rows} after {seen_after:.1f} s")
    if rows:
        # Every live proxy's reaper saw the intent open; the chain's lock lets only one close it.
        time.sleep(2.5)
        outcomes = group.pg.psql("SELECT count(*) FROM mixpeek_audit o JOIN mixpeek_audit i ON o.intent_seq = i.seq "
                                 "WHERE i.key_name = 'orphan'")
        check("SIGKILL mid-mutation: the intent has exactly one outcome in the chain, though A's and B's reapers both saw it open",
              outcomes == "1", f"{outcomes} outcomes")
        cached, _ = wait_until(lambda: prime(B, user)[1].cache == "HIT", 5, 0.3)
        check("SIGKILL mid-mutation: once closed, that user's lists are cached again (HIT on the second list)",
              bool(cached), "no HIT within 5 s")
    # The upstream's audit log settles it: the fake applied the create.
    settled = group.reconcile(utc(sent_wall - 1))
    found = [json.loads(line) for line in settled.stdout.splitlines() if line.strip()]
    after = [row for row in group.audit_query("--user", user, "--action", "create") if row.get("key_name") == "orphan"]
    check("SIGKILL mid-mutation: audit reconcile --postgres-url settles the unknown as applied (exit 0), and audit query "
          "then shows it applied with the upstream's audit id",
          settled.returncode == 0 and [(f["finding"], f.get("key_name")) for f in found] == [("resolved_unknown", "orphan")]
          and len(after) == 1 and after[0].get("outcome") == "applied" and after[0].get("upstream_audit_id"),
          f"exit {settled.returncode}: {settled.stdout[-400:]} {settled.stderr[-400:]}; rows {after}")
    # C comes back under its name, with its data dir (and witness).
    C.start()
    healthy, _ = group.wait_healthy(["C"], 15)
    check("SIGKILL mid-mutation: C restarts into the group", bool(healthy), f"{health(C)}")


def role_privileges(group):
    pg = group.pg
    owner = pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'mixpeek_audit'")
    check("role: mixpeek_audit exists and the proxies' role does not own it", owner not in ("", ROLE), f"owner {owner!r}")
    privileges = {}
    for table, privilege in (("mixpeek_audit", "SELECT"), ("mixpeek_audit", "INSERT"), ("mixpeek_audit", "UPDATE"),
                             ("mixpeek_audit", "DELETE"), ("mixpeek_audit", "TRUNCATE"), ("mixpeek_proxies", "SELECT"),
                             ("mixpeek_proxies", "INSERT"), ("mixpeek_proxies", "UPDATE"), ("mixpeek_schema_migrations", "SELECT")):
        try:
            privileges[(table, privilege)] = pg.psql(f"SELECT has_table_privilege('{ROLE}', '{table}', '{privilege}')")
        except pgtools.PostgresError as error:
            privileges[(table, privilege)] = str(error)
    want = {("mixpeek_audit", "SELECT"): "t", ("mixpeek_audit", "INSERT"): "t", ("mixpeek_audit", "UPDATE"): "f",
            ("mixpeek_audit", "DELETE"): "f", ("mixpeek_audit", "TRUNCATE"): "f", ("mixpeek_proxies", "SELECT"): "t",
            ("mixpeek_proxies", "INSERT"): "t", ("mixpeek_proxies", "UPDATE"): "t", ("mixpeek_schema_migrations", "SELECT"): "t"}
    wrong = {k: v for k, v in privileges.items() if v != want[k]}
    check("role: SELECT and INSERT on mixpeek_audit, no UPDATE, DELETE or TRUNCATE; what a proxy needs on the rest",
          not wrong, f"{wrong}")
    column = pg.psql("SELECT column_name FROM information_schema.columns WHERE table_name = 'mixpeek_audit' "
                     "ORDER BY (column_name = 'user_email') DESC, ordinal_position LIMIT 1")
    for statement in (f"UPDATE mixpeek_audit SET {column} = {column}", "DELETE FROM mixpeek_audit", "TRUNCATE mixpeek_audit"):
        result = pg.run_psql(statement, user=ROLE, password=ROLE_PASSWORD)
        check(f"role: `{statement}` as {ROLE} is refused: permission denied",
              result.returncode != 0 and "permission denied" in result.stderr, f"exit {result.returncode}: {result.stderr.strip()}")
    count = pg.psql("SELECT count(*) FROM mixpeek_audit", user=ROLE, password=ROLE_PASSWORD)
    check("role: and it reads the chain", count.isdigit() and int(count) > 0, count)
    # A proxy of the first schema (announcements without the hash) renews its lease like this.
    old = pg.run_psql("INSERT INTO mixpeek_proxies (proxy_id, lease_until, read_seq) VALUES ('v1-proxy', now() + interval '2 s', 0) "
                      "ON CONFLICT (proxy_id) DO UPDATE SET lease_until = EXCLUDED.lease_until", user=ROLE, password=ROLE_PASSWORD)
    check("role: an older proxy's lease renewal is refused, saying to upgrade (its lease lapses; no stale hits)",
          old.returncode != 0 and "upgrade" in old.stderr, f"exit {old.returncode}: {old.stderr.strip()}")


def postgres_down_mid_run(group):
    A, B, C = group["A"], group["B"], group["C"]
    pg, fake = group.pg, group.fake
    user = "outage@example.com"
    cached_list(A, user), cached_list(B, user)
    pg.stop()
    try:
        degraded, waited = wait_until(lambda: all(health(p)[0] == 503 for p in (A, B, C)), 10, 0.2)
        states = {p.name: health(p) for p in (A, B, C)}
        check(f"PostgreSQL down mid-run: /_proxy/health says 503 degraded, group unreachable ({waited:.1f} s)",
              bool(degraded) and all(s == 503 and b.get("status") == "degraded" and b.get("group") == "unreachable"
                                     for s, b in states.values()), f"{states}")
        before = fake.last()
        refused = [create(A, user, "during-outage"), delete(B, user, "admin-key"), rotate(C, user, "nope")]
        check("PostgreSQL down mid-run: mutations get 503 in the error shape",
              all(r.status == 503 and is_error_shape(r, 503) for r in refused), f"{refused}")
        check("PostgreSQL down mid-run: and are not forwarded (the fake's history has none)",
              fake.last() == before, f"{fake.history(before)['mutations']}")
        counted = fake.lists(user)
        replies = [list_keys(B, user) for _ in range(3)] + [list_keys(A, user)]
        check("PostgreSQL down mid-run: lists are forwarded and not cached (MISS every time, each reaches the fake)",
              all(r.status == 200 and r.cache == "MISS" for r in replies) and fake.lists(user) == counted + 4,
              f"{replies}; fake lists {counted} -> {fake.lists(user)}")
    finally:
        pg.start()
    healthy, waited = group.wait_healthy(["A", "B", "C"], 15)
    check(f"PostgreSQL back: every proxy reports the group ok within 15 s ({waited:.1f} s)",
          bool(healthy), f"{[health(p) for p in (A, B, C)]}")
    cached_list(B, user)
    made = create(A, user, "after-outage")
    seen = list_keys(B, user)
    cached, _ = wait_until(lambda: prime(B, user)[1].cache == "HIT", 5, 0.3)
    check("PostgreSQL back: create via A, list via B fresh, then cached again",
          made.status == 200 and "after-outage" in (seen.keys() or {}) and bool(cached), f"create {made!r}; list {seen!r}")


def revoked_everywhere(group):
    """A revoked key is shut out on every proxy: K (made through A) reads two users' lists
    through B until they are hits; K is deleted, rotated away or PATCHed revoked through A; the
    very next list with K's old secret through B, for each user, is not a HIT (the upstream
    answers it 401)."""
    A, B = group["A"], group["B"]
    owner, other = "revoke-owner@example.com", "revoke-other@example.com"
    for way in ("delete", "rotate", "update"):
        name = f"k-{way}"
        made = create(A, owner, name)
        secret = (made.json or {}).get("key") if isinstance(made.json, dict) else None
        if made.status != 200 or not secret:
            check(f"revocation ({way}): K is created through A", False, f"{made!r}")
            continue
        warm = {}
        for user in (owner, other):
            call(B.port, "GET", keys_path(user), token=secret)
            warm[user] = call(B.port, "GET", keys_path(user), token=secret).cache
        if way == "delete":
            done = delete(A, owner, name)
        elif way == "rotate":
            done = rotate(A, owner, name)
        else:
            done = call(A.port, "PATCH", keys_path(owner, name), {"status": "revoked"})
        # The other user first: a 401 to K drops all K's lists, so the owner's first would hide
        # whether the revocation alone shut K out.
        after = {user: call(B.port, "GET", keys_path(user), token=secret) for user in (other, owner)}
        check(f"revocation ({way} through A): K's lists were hits on B, and the very next list with K's old secret "
              f"through B is not a HIT for either user (the upstream says 401)",
              done.status == 200 and all(c == "HIT" for c in warm.values())
              and all(r.cache != "HIT" and r.status == 401 for r in after.values()),
              f"{way} {done!r}; warm {warm}; after {after}")

    # B never saw K's own key (K read only the other user's lists through it), so B cannot
    # know which credential the delete revokes: hearing a mutation of the owner's keys, B has
    # every credential it cannot name confirmed by the upstream before its next hit.
    made = create(A, owner, "k-unseen")
    secret = (made.json or {}).get("key") if isinstance(made.json, dict) else None
    if made.status != 200 or not secret:
        return check("revocation (unseen by B): K is created through A", False, f"{made!r}")
    call(B.port, "GET", keys_path(other), token=secret)
    warm = call(B.port, "GET", keys_path(other), token=secret)
    done = delete(A, owner, "k-unseen")
    after = call(B.port, "GET", keys_path(other), token=secret)
    check("revocation (delete through A of a key B never saw): K's list of another user was a hit on B; "
          "the very next one is not a HIT (the upstream says 401)",
          warm.cache == "HIT" and done.status == 200 and after.cache != "HIT" and after.status == 401,
          f"warm {warm!r}; delete {done!r}; after {after!r}")


def sdk_revoked(group):
    """The same with the official SDK as the client: K (made through A with the SDK) reads two
    users' lists through B with the SDK until they are hits; K is deleted through A; the very
    next list with K's secret through B, for each user, raises the SDK's UnauthorizedException
    (the upstream's 401), not a HIT."""
    import mixpeek
    from mixpeek.exceptions import UnauthorizedException
    from mixpeek.models.api_key_create_request import APIKeyCreateRequest
    A, B = group["A"], group["B"]

    def client(proxy, token):
        return mixpeek.OrganizationAPIKeysApi(mixpeek.ApiClient(mixpeek.Configuration(
            host=f"http://127.0.0.1:{proxy.port}", access_token=token)))

    def cache_header(answer):
        return {k.lower(): v for k, v in dict(getattr(answer, "headers", None) or {}).items()}.get("x-cache")

    timeout = {"_request_timeout": 15}
    owner, other = "sdk-owner@example.com", "sdk-other@example.com"
    admin = client(A, TOKEN)
    secret = admin.create_key_organizations_users_email(owner, APIKeyCreateRequest(name="k-sdk"), **timeout).key
    k = client(B, secret)
    warm = {}
    for user in (owner, other):
        k.list_keys_organizations_users_email_with_http_info(user, **timeout)
        warm[user] = cache_header(k.list_keys_organizations_users_email_with_http_info(user, **timeout))
    admin.delete_key_organizations_users_email_name(owner, "k-sdk", **timeout)
    after = {}
    for user in (other, owner):
        try:
            answer = k.list_keys_organizations_users_email_with_http_info(user, **timeout)
            after[user] = f"answered {answer.status_code} {cache_header(answer)}"
        except UnauthorizedException as refused:
            after[user] = "401" if cache_header(refused) != "HIT" else "401 HIT"
    check("revocation with the SDK: K's lists were hits on B; after K's delete through A the very next list with K's "
          "secret through B raises UnauthorizedException for either user, never a HIT",
          all(c == "HIT" for c in warm.values()) and all(v == "401" for v in after.values()),
          f"warm {warm}; after {after}")


def reconcile_around(group):
    """`audit reconcile --postgres-url` holds the central chain against the upstream's audit
    log: of a create through A and a create and a delete made straight at the fake, exactly
    the two made at the fake are around_proxy, and it exits 1; the token is never printed."""
    A = group["A"]
    user = "around@example.com"
    since = utc(time.time() - 1)
    through = create(A, user, "g-through")
    around = [call(group.fake.port, "POST", keys_path(user), {"name": "g-around"}),
              call(group.fake.port, "DELETE", keys_path(user, "g-through"))]
    result = group.reconcile(since)
    found = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    check("reconcile --postgres-url: a create and a delete made at the fake, not through the group, are exactly the "
          "around_proxy findings, exit 1",
          through.status == 200 and all(r.status == 200 for r in around) and result.returncode == 1
          and sorted((f["finding"], f.get("action"), f.get("key_name")) for f in found)
          == [("around_proxy", "create", "g-around"), ("around_proxy", "delete", "g-through")],
          f"exit {result.returncode}: {result.stdout[-600:]} {result.stderr[-300:]}")
    check("reconcile --postgres-url: the token never appears in what it printed",
          RECONCILE_ADMIN not in result.stdout + result.stderr)


def status_audit_panel(group):
    """In a group the status page shows the audit panel from the central chain: the record
    count and head as PostgreSQL has them, the newest mutation (whichever proxy made it), and
    "verify now" walks the chain and this proxy's witness: intact."""
    A, B = group["A"], group["B"]
    made = create(B, "status@example.com", "status-key")
    status = call(A.port, "GET", "/_proxy/status.json", token=None)
    audit = status.json.get("audit", {}) if isinstance(status.json, dict) else {}
    head = group.pg.psql("SELECT seq || ':' || hash FROM mixpeek_audit ORDER BY seq DESC LIMIT 1")
    newest = (audit.get("recent") or [{}])[0]
    check("status page in a group: A's audit panel shows the central chain (records, head) and B's create as the newest mutation",
          made.status == 200 and audit.get("available") is True and audit.get("head") == head
          and audit.get("records") == int(head.split(":")[0]) and newest.get("key_name") == "status-key"
          and newest.get("outcome") == "ok",
          f"create {made!r}; head {head}; audit {json.dumps(audit)[:500]}")
    verified = call(A.port, "POST", "/_proxy/audit/verify", token=None, headers={"Accept": "application/json"}, timeout=60)
    check("status page in a group: 'verify now' walks the chain and A's witness: intact",
          verified.status == 200 and isinstance(verified.json, dict) and verified.json.get("intact") is True,
          f"{verified!r}")


def acting_key_in_chain(group):
    """The group's chain names the key that acted and keeps the trace id, as audit.sqlite does:
    K reads its owner's list through B (B learns K), creates through B with a traceparent;
    `audit query --postgres-url --actor-key K` finds exactly that record, with K's prefix,
    name and owner and the trace id; `--actor-user` finds it by the owner."""
    A, B = group["A"], group["B"]
    owner = "actor-owner@example.com"
    made = create(A, owner, "k-actor")
    key = made.json if isinstance(made.json, dict) else {}
    secret, key_id = key.get("key"), key.get("key_id")
    if made.status != 200 or not secret or not key_id:
        return check("acting key: K is created through A", False, f"{made!r}")
    call(B.port, "GET", keys_path(owner), token=secret)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    acted = call(B.port, "POST", keys_path(owner), {"name": "made-by-k"}, token=secret,
                 headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    rows = group.audit_query("--actor-key", key_id)
    by_user = group.audit_query("--actor-user", owner.upper())
    row = rows[0] if len(rows) == 1 else {}
    check("acting key: a create through B with K's secret is the one record --actor-key K finds in the group's chain, "
          "naming K's prefix, name and owner, with the request's trace id; --actor-user finds it by the owner",
          acted.status == 200 and len(rows) == 1 and row.get("key_name") == "made-by-k"
          and row.get("actor_key_prefix") == key.get("key_prefix") and row.get("actor_key_name") == "k-actor"
          and row.get("actor_user") == owner and row.get("trace_id") == trace
          and [r.get("seq") for r in by_user] == [row.get("seq")],
          f"create {acted!r}; rows {rows}; by user {by_user}")


def postgres_restart_under_load(group):
    """Nothing answered is left unrecorded: 16 clients create through A and B while PostgreSQL
    restarts. Every 2xx answer has its chain record with outcome ok; every 503 audit_incomplete
    (the outcome could not be written within audit_outcome_wait) has its outcome appended once
    PostgreSQL is back; no answered create is left `unknown`."""
    A, B, pg = group["A"], group["B"], group.pg
    user = "restart@example.com"
    answers, lock, stop_at = [], threading.Lock(), time.monotonic() + 9

    def client(number):
        proxy, count = (A, B)[number % 2], 0
        while time.monotonic() < stop_at:
            name = f"r{number}-{count}"
            count += 1
            reply = create(proxy, user, name, timeout=30)
            with lock:
                answers.append((name, reply))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(2.5)
    pg.stop()
    time.sleep(2)
    pg.start()
    for thread in threads:
        thread.join(60)
    group.wait_healthy(["A", "B"], 15)

    def code(reply):
        error = reply.json.get("error") if isinstance(reply.json, dict) else None
        return error.get("code") if isinstance(error, dict) else None

    answered = [(n, r) for n, r in answers if r.status is not None and 200 <= r.status < 300]
    incomplete = [(n, r) for n, r in answers if r.status == 503 and code(r) == "mixpeek_proxy.audit_incomplete"]
    refused = [(n, r) for n, r in answers if r.status == 503 and code(r) == "mixpeek_proxy.audit_unavailable"]
    other = [(n, r) for n, r in answers if (n, r) not in answered + incomplete + refused]

    def records():
        return {row.get("key_name"): row for row in group.audit_query("--user", user)}

    # Outcomes that missed their answer are written in the background as soon as they can be.
    settled, _ = wait_until(lambda: all(records().get(n, {}).get("outcome") == "ok" for n, _ in incomplete), 20, 0.5)
    rows = records()
    retried = sum(open(os.path.join(p.work, f"proxy-{p.name}-{p.starts}.log")).read().count("retrying before answering") for p in (A, B))
    check(f"PostgreSQL restart under 16 clients: {len(answered)} answered 2xx ({retried} after their outcome write was retried), "
          f"{len(incomplete)} audit_incomplete, "
          f"{len(refused)} refused before forwarding; nothing else", answered and not other,
          f"other answers: {[(n, r.status, r.text[:120]) for n, r in other[:5]]}")
    missing = [n for n, _ in answered if rows.get(n, {}).get("outcome") != "ok"]
    check("PostgreSQL restart: every 2xx answer has its chain record with outcome ok (none left unknown)",
          not missing, f"{len(missing)} without: {[(n, rows.get(n)) for n in missing[:5]]}")
    late = [n for n, _ in incomplete if rows.get(n, {}).get("outcome") != "ok"]
    check("PostgreSQL restart: every 503 audit_incomplete names the upstream status and has its outcome appended once PostgreSQL is back",
          bool(settled) and not late and all((r.json["error"].get("details") or {}).get("upstream_status") == "200" for _, r in incomplete),
          f"{len(late)} without: {[(n, rows.get(n)) for n in late[:5]]}")
    applied = {m.get("key") for m in group.fake.history()["mutations"] if m.get("user") == user}
    check("PostgreSQL restart: a create refused with audit_unavailable was never forwarded",
          not [n for n, _ in refused if n in applied], f"{[n for n, _ in refused if n in applied][:5]}")


def postgres_down_at_start(group):
    pg, fake = group.pg, group.fake
    user = "late@example.com"
    pg.stop()
    D = None
    try:
        # D takes its URL from the environment.
        D = group.add("D", via_env=True)
        status, body = health(D)
        check("PostgreSQL down at start: the proxy starts; /_proxy/health 503 degraded, group unreachable",
              status == 503 and body.get("status") == "degraded" and body.get("group") == "unreachable", f"{status} {body}")
        before = fake.last()
        refused = create(D, user, "too-early")
        check("PostgreSQL down at start: a mutation gets 503 in the error shape and is not forwarded",
              refused.status == 503 and is_error_shape(refused, 503) and fake.last() == before,
              f"{refused!r}; fake history {fake.history(before)['mutations']}")
        counted = fake.lists(user)
        replies = [list_keys(D, user) for _ in range(3)]
        check("PostgreSQL down at start: lists are forwarded and not cached",
              all(r.status == 200 and r.cache == "MISS" for r in replies) and fake.lists(user) == counted + 3,
              f"{replies}; fake lists {counted} -> {fake.lists(user)}")
    finally:
        pg.start()
    if D is None:
        return
    healthy, waited = group.wait_healthy(["D"], 15)
    check(f"PostgreSQL up later: the proxy joins by itself within 15 s ({waited:.1f} s)", bool(healthy), f"{health(D)}")
    cached_list(group["A"], user)
    made = create(D, user, "joined")
    seen = list_keys(group["A"], user)
    check("PostgreSQL up later: create via D, then list via A: the new key is there",
          made.status == 200 and "joined" in (seen.keys() or {}), f"create {made!r}; A {seen!r}")
    cached, waited = wait_until(lambda: prime(D, user)[1].cache == "HIT", 5, 0.3)
    check(f"PostgreSQL up later: D caches lists ({waited:.1f} s)", bool(cached), "no HIT within 5 s")
    D.stop()
    del group.proxies["D"]


def audit_verify(group):
    """Last: the proxies stop, then the central chain is verified, rewritten and cut short."""
    pg = group.pg
    started = time.monotonic()
    for name in ("A", "B", "C"):
        group[name].stop()
    codes = {name: group[name].proc.returncode for name in ("A", "B", "C")}
    check(f"SIGTERM: A, B and C leave the group and exit 0 ({time.monotonic() - started:.1f} s)",
          all(code == 0 for code in codes.values()), f"exit codes {codes}")
    witnesses = group.witnesses()
    verify = group.run("audit", "verify", "--postgres-url", group.role_url, *witnesses)
    check("audit verify --postgres-url --witness A B C: passes on the untouched chain",
          verify.returncode == 0, f"exit {verify.returncode}: {(verify.stdout + verify.stderr)[-600:]}")
    query = {fmt: group.run("audit", "query", "--postgres-url", group.role_url, "--format", fmt) for fmt in ("json", "jsonl", "csv", "table")}
    rows = json.loads(query["json"].stdout or "[]") if query["json"].returncode == 0 else []
    jsonl = [line for line in query["jsonl"].stdout.splitlines() if line.strip()]
    csv_rows = [line for line in query["csv"].stdout.splitlines() if line.strip()]
    check("audit query --postgres-url: json, jsonl, csv and table agree on the number of mutations",
          all(q.returncode == 0 for q in query.values()) and rows and len(jsonl) == len(rows) and len(csv_rows) == len(rows) + 1,
          f"exits {[q.returncode for q in query.values()]}; json {len(rows)}, jsonl {len(jsonl)}, csv {len(csv_rows)} lines")
    if rows:
        sample = rows[len(rows) // 2]
        want = [r for r in rows if (r.get("user_email"), r.get("action"), r.get("outcome")) ==
                (sample.get("user_email"), sample.get("action"), sample.get("outcome"))]
        filtered = group.run("audit", "query", "--postgres-url", group.role_url, "--user", sample["user_email"],
                             "--action", sample["action"], "--outcome", sample["outcome"], "--format", "jsonl")
        picked = [json.loads(line) for line in filtered.stdout.splitlines() if line.strip()]
        check("audit query --postgres-url: --user, --action and --outcome filter",
              filtered.returncode == 0 and picked == want, f"{len(picked)} rows, want {len(want)}; {filtered.stderr[-300:]}")

    total = int(pg.psql("SELECT count(*) FROM mixpeek_audit"))
    if total < 4:
        raise RuntimeError(f"the central chain has {total} rows: too few to tamper with")
    seq = int(pg.psql(f"SELECT seq FROM mixpeek_audit ORDER BY seq OFFSET {total // 2} LIMIT 1"))
    column = pg.psql("SELECT column_name FROM information_schema.columns WHERE table_name = 'mixpeek_audit' "
                     "AND data_type IN ('text', 'character varying') AND column_name NOT LIKE '%hash%' "
                     "ORDER BY (column_name = 'user_email') DESC, ordinal_position LIMIT 1")
    original = pg.psql(f"SELECT {column} FROM mixpeek_audit WHERE seq = {seq}")
    tamper = "ALTER TABLE mixpeek_audit DISABLE TRIGGER USER; {}; ALTER TABLE mixpeek_audit ENABLE TRIGGER USER"
    pg.psql(tamper.format(f"UPDATE mixpeek_audit SET {column} = 'mallory@example.com' WHERE seq = {seq}"))
    verify = group.run("audit", "verify", "--postgres-url", group.role_url, *witnesses)
    output = verify.stdout + verify.stderr
    check(f"audit verify: a row rewritten by the superuser (seq {seq}, {column}) fails, naming it",
          verify.returncode != 0 and re.search(rf"\b{seq}\b", output) is not None, f"exit {verify.returncode}: {output[-600:]}")
    pg.psql(tamper.format(f"UPDATE mixpeek_audit SET {column} = '{original}' WHERE seq = {seq}"))
    verify = group.run("audit", "verify", "--postgres-url", group.role_url, *witnesses)
    check("audit verify: passes again once the row is put back", verify.returncode == 0,
          f"exit {verify.returncode}: {(verify.stdout + verify.stderr)[-400:]}")

    cut = min(10, total // 2)
    head = int(pg.psql("SELECT max(seq) FROM mixpeek_audit"))
    pg.psql(tamper.format(f"DELETE FROM mixpeek_audit WHERE seq > {head - cut}"))
    verify = group.run("audit", "verify", "--postgres-url", group.role_url, *witnesses)
    check(f"audit verify --witness: a chain cut short by the superuser (last {cut} rows deleted) fails",
          verify.returncode != 0, f"exit {verify.returncode}: {(verify.stdout + verify.stderr)[-600:]}")


def database_of_its_own(group, name, label, command, role_flag):
    """Creates database `name`, sets the group's tables up in it as the owner (`group COMMAND
    --postgres-url … ROLE_FLAG ROLE`, checked as `label`); returns its owner's and the role's URLs."""
    group.pg.psql(f"CREATE DATABASE {name}")
    admin = group.admin_url.replace("/postgres?", f"/{name}?")
    setup = group.run("group", command, "--postgres-url", admin, role_flag, ROLE)
    check(label, setup.returncode == 0, setup.stdout + setup.stderr)
    return admin, group.pg.url_for(ROLE, ROLE_PASSWORD, database=name)


def hmac_chain(group):
    """A group whose chain is HMAC-keyed (`MIXPEEK_PROXY_AUDIT_HMAC_KEY`), in a database of its own:
    PostgreSQL never sees the key, so each proxy chains its records itself and sends them again
    when another proxy appended first. Concurrent creates through two proxies must all land, in
    one chain that verifies with the key only."""
    key = "group-hmac-key-1"
    _, url = database_of_its_own(group, "keyed", "HMAC chain: group setup of a second database (exit 0)", "setup", "--role")
    keyed = []
    try:
        for name in ("K1", "K2"):
            keyed.append(Proxy(name, group.work, group.fake.url, url, env={"MIXPEEK_PROXY_AUDIT_HMAC_KEY": key}).start())
        group.proxies.update({proxy.name: proxy for proxy in keyed})
        healthy, waited = group.wait_healthy(["K1", "K2"], 15)
        check(f"HMAC chain: K1 and K2 join ({waited:.1f} s)", bool(healthy), f"{[health(p) for p in keyed]}")
        statuses = []

        def client(index):
            for n in range(15):
                statuses.append(create(keyed[index % 2], f"hmac{index}@example.com", f"h{index}-{n}").status)

        threads = [threading.Thread(target=client, args=(index,)) for index in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        check("HMAC chain: 90 concurrent creates through K1 and K2 are all answered 200",
              statuses.count(200) == 90, f"{len(statuses)} answered: {sorted(set(statuses))}")
        for proxy in keyed:
            proxy.stop()
        count = group.pg.psql("SELECT count(*) FROM mixpeek_audit", database="keyed")
        check("HMAC chain: an intent and an outcome per create in the chain", count == "180", count)
        witnesses = ["--witness", keyed[0].data, "--witness", keyed[1].data]
        env = dict(os.environ, MIXPEEK_PROXY_AUDIT_HMAC_KEY=key)
        same = subprocess.run([BIN, "audit", "verify", "--postgres-url", url, *witnesses], capture_output=True, text=True,
                              timeout=60, env=env)
        check("HMAC chain: audit verify with the key and both witnesses passes", same.returncode == 0,
              f"exit {same.returncode}: {(same.stdout + same.stderr)[-400:]}")
        env["MIXPEEK_PROXY_AUDIT_HMAC_KEY"] = "another-key"
        other = subprocess.run([BIN, "audit", "verify", "--postgres-url", url], capture_output=True, text=True,
                               timeout=60, env=env)
        check("HMAC chain: audit verify with another key fails", other.returncode != 0,
              f"exit {other.returncode}: {(other.stdout + other.stderr)[-400:]}")
    finally:
        for proxy in keyed:
            proxy.stop()
            group.proxies.pop(proxy.name, None)


# ---- the group's verifiable log (issue 24, item 6) ---------------------------------------------

def tlog_client():
    """Go's sumdb/tlog and sumdb/note as the outside verifier (scripts/tlog_client), built offline."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.path.join(root, ".build", "tlog-client")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
               GOCACHE=os.environ.get("GOCACHE", os.path.join(root, ".build", "go-cache")))
    subprocess.run(["go", "build", "-o", out, "./scripts/tlog_client"], cwd=root, env=env, check=True)
    return out


def verifier_key(proxy):
    reply = call(proxy.port, "GET", "/_proxy/status.json", token=None)
    return ((reply.json or {}).get("audit") or {}).get("log_verifier_key")


def tree_hashes(leaves):
    """Every perfect subtree hash over `leaves` (RFC 6962), as {(level, index): hash}: what
    mixpeek_log_subtrees holds."""
    import hashlib
    out = {(0, i): leaf for i, leaf in enumerate(leaves)}
    level, row = 0, leaves
    while len(row) > 1:
        row = [hashlib.sha256(b"\x01" + row[i] + row[i + 1]).digest() for i in range(0, len(row) - 1, 2)]
        level += 1
        out.update({(level, i): h for i, h in enumerate(row)})
    return out


def verifiable_log(group):
    """Two members in a database of their own: every answered mutation carries its entry's
    index, covered by the checkpoint fetched right after; within 2 s of the last mutation the
    checkpoint either serves carries both members' signatures, which Go's sumdb/note and
    sumdb/tlog verify with every tile and entry; then the superuser rewrites a record and
    recomputes the tree (a forked history): both members refuse mutations within 2 s (503 in
    the error shape, the metric, the status page), also after a restart, and the outside
    verifier holding the saved checkpoint catches it."""
    import hashlib
    client = tlog_client()
    admin, url = database_of_its_own(group, "logged", "log: group migrate of a third database (exit 0)", "migrate", "--grant")
    members = []
    try:
        for name in ("L1", "L2"):
            members.append(Proxy(name, group.work, group.fake.url, url).start())
        group.proxies.update({proxy.name: proxy for proxy in members})
        healthy, waited = group.wait_healthy(["L1", "L2"], 15)
        check(f"log: L1 and L2 join ({waited:.1f} s)", bool(healthy), f"{[health(p) for p in members]}")
        L1, L2 = members
        keys = [verifier_key(L1), verifier_key(L2)]
        check("log: each member shows its own verifier key on the status page, named as the group's log",
              all(keys) and keys[0] != keys[1] and keys[0].split("+")[0] == keys[1].split("+")[0], f"{keys}")
        uncovered = []
        for n in range(12):
            proxy = members[n % 2]
            made = create(proxy, f"log{n % 3}@example.com", f"log-{n}")
            index = made.headers.get("mixpeek-proxy-audit-index")
            checkpoint = call(proxy.port, "GET", "/_proxy/log/checkpoint", token=None)
            lines = checkpoint.text.split("\n")
            size = int(lines[1]) if checkpoint.status == 200 and len(lines) > 2 and lines[1].isdigit() else -1
            if made.status != 200 or index is None or not index.isdigit() or size <= int(index):
                uncovered.append((proxy.name, made.status, index, size))
        last = time.monotonic()
        check("log: each answered create carries Mixpeek-Proxy-Audit-Index, in the tree of the checkpoint its proxy serves right after",
              not uncovered, f"{uncovered}")
        results = {}

        def cosigned(proxy):
            run = subprocess.run([client, f"http://127.0.0.1:{proxy.port}", *keys], capture_output=True, text=True, timeout=30)
            results[proxy.name] = run
            return run.returncode == 0

        both, waited = wait_until(lambda: cosigned(L1) and cosigned(L2), 10, 0.1)
        waited = time.monotonic() - last
        check(f"log: within 2 s of the last mutation the checkpoint of L1 and of L2 carries both members' signatures, "
              f"verified with every tile and entry by Go's sumdb/note and sumdb/tlog ({waited:.1f} s)",
              bool(both) and waited <= 2.0, "; ".join(f"{k}: {(r.stdout + r.stderr).strip()[-300:]}" for k, r in results.items()))
        saved = os.path.join(group.work, "log-saved.checkpoint")
        run = subprocess.run([client, "-save", saved, f"http://127.0.0.1:{L1.port}", *keys], capture_output=True, text=True, timeout=30)
        check("log: a checkpoint saved from L1", run.returncode == 0, (run.stdout + run.stderr)[-300:])
        for n in range(2):
            create(members[n % 2], "log-later@example.com", f"later-{n}")
        run = subprocess.run([client, "-saved", saved, f"http://127.0.0.1:{L2.port}", keys[1]], capture_output=True, text=True, timeout=30)
        check("log: after more mutations, L2's tree is consistent with the checkpoint saved from L1 (Go's tlog.CheckTree)",
              run.returncode == 0, (run.stdout + run.stderr)[-300:])

        latest, signatures = None, []

        def both_signed():
            nonlocal latest, signatures
            latest = group.run("audit", "checkpoint", "--postgres-url", url)
            signatures = [line for line in latest.stdout.split("\n") if line.startswith("\u2014 ")]
            return len(signatures) == 2

        wait_until(both_signed, 3, 0.2)
        check("log: audit checkpoint --postgres-url prints the latest checkpoint with both members' signatures",
              latest.returncode == 0 and len(signatures) == 2, f"exit {latest.returncode}: {latest.stdout[-400:]}{latest.stderr[-300:]}")
        proved = group.run("audit", "prove", "--postgres-url", url, "--index", "5", "--log-key", keys[1])
        check("log: audit prove --postgres-url --index 5 prints a proof that verifies (exit 0)",
              proved.returncode == 0 and "inclusion proof verifies" in proved.stdout, f"exit {proved.returncode}: {(proved.stdout + proved.stderr)[-400:]}")
        intact = group.run("audit", "verify", "--postgres-url", url, "--checkpoint", saved, "--log-key", keys[0],
                           "--witness", L1.data, "--witness", L2.data)
        check("log: audit verify --postgres-url --checkpoint (and each witness's signed checkpoint) passes on the untouched log",
              intact.returncode == 0 and intact.stdout.count("audit log consistent") == 3, f"exit {intact.returncode}: {(intact.stdout + intact.stderr)[-600:]}")

        # The superuser forges a record and recomputes the tree, so that it is self-consistent.
        db = dict(database="logged")
        seq = int(group.pg.psql("SELECT seq FROM mixpeek_audit WHERE kind = 'intent' ORDER BY seq OFFSET 3 LIMIT 1", **db))
        with urllib.request.urlopen(f"http://127.0.0.1:{L1.port}/_proxy/log/tile/entries/000.p/{seq}", timeout=15) as response:
            raw = response.read()
        entries = []
        while raw:
            length = int.from_bytes(raw[:2], "big")
            entries.append(raw[2:2 + length])
            raw = raw[2 + length:]
        original = group.pg.psql(f"SELECT user_email FROM mixpeek_audit WHERE seq = {seq}", **db)
        forged = entries[seq - 1].replace(original.encode(), b"mallory@example.com")
        leaves = [bytes.fromhex(line) for line in group.pg.psql(
            "SELECT encode(hash, 'hex') FROM mixpeek_log_subtrees WHERE level = 0 ORDER BY idx", **db).split()]
        leaves[seq - 1] = hashlib.sha256(b"\x00" + forged).digest()
        rows = ", ".join(f"({level}, {index}, '\\x{h.hex()}')" for (level, index), h in tree_hashes(leaves).items())
        group.pg.psql(
            "ALTER TABLE mixpeek_audit DISABLE TRIGGER USER; ALTER TABLE mixpeek_log_subtrees DISABLE TRIGGER USER; "
            f"UPDATE mixpeek_audit SET user_email = 'mallory@example.com' WHERE seq = {seq}; "
            f"DELETE FROM mixpeek_log_subtrees; INSERT INTO mixpeek_log_subtrees (level, idx, hash) VALUES {rows}; "
            "ALTER TABLE mixpeek_log_subtrees ENABLE TRIGGER USER; ALTER TABLE mixpeek_audit ENABLE TRIGGER USER", **db)
        forked = time.monotonic()

        def refusing(proxy):
            reply = create(proxy, "log-after@example.com", f"after-{proxy.name}-{time.monotonic()}")
            return reply.status == 503 and is_error_shape(reply, 503)

        refused = {}
        for proxy in members:
            ok, _ = wait_until(lambda: refusing(proxy), 5, 0.1)
            refused[proxy.name] = (bool(ok), time.monotonic() - forked)
        check("log: the tree forked by the superuser: L1 and L2 refuse mutations (503, error shape) within 2 s",
              all(ok and seconds <= 2.0 for ok, seconds in refused.values()), f"{refused}")
        check("log: and say so in /metrics (mixpeek_proxy_log_consistent 0) and on the status page",
              all(metrics(proxy).get("mixpeek_proxy_log_consistent") == "0"
                  and ((call(proxy.port, "GET", "/_proxy/status.json", token=None).json or {}).get("audit") or {}).get("log_problem")
                  and 'id="log-problem"' in call(proxy.port, "GET", "/_proxy/", token=None).text
                  for proxy in members),
              f"{[metrics(p).get('mixpeek_proxy_log_consistent') for p in members]}")
        run = subprocess.run([client, "-saved", saved, f"http://127.0.0.1:{L1.port}", keys[0]], capture_output=True, text=True, timeout=30)
        check("log: Go's verifier holding the saved checkpoint catches the forged history",
              run.returncode != 0 and "FAILED" in run.stdout, (run.stdout + run.stderr)[-300:])
        forged_verify = group.run("audit", "verify", "--postgres-url", url, "--checkpoint", saved, "--log-key", keys[0])
        # Named from the checkpoints the log keeps: the entry, or the entries between two of
        # them (a member signs once a round, which may cover several batches).
        named = re.search(r"audit log BROKEN[^\n]*(?:entry (\d+):|entries (\d+) to (\d+))", forged_verify.stdout)
        first, end = (int(named.group(1) or named.group(2)), int(named.group(1) or named.group(3))) if named else (-1, -1)
        check(f"log: audit verify --postgres-url --checkpoint catches the forged history, naming entry {seq - 1} (record {seq}) "
              f"or the entries from it to the next signed checkpoint",
              forged_verify.returncode == 1 and first <= seq - 1 <= end,
              f"exit {forged_verify.returncode}: {(forged_verify.stdout + forged_verify.stderr)[-600:]}")
        L1.stop()
        L1.start()
        time.sleep(1.5)
        check("log: restarted, L1 still refuses mutations (the checkpoint it signed stays in its data dir)",
              refusing(L1), L1.log_text()[-400:])

        # The record put back and the tree dropped: the migration builds it again from the
        # records (as for a database of before v5), the same tree L1 signed, and L1 goes on.
        L1.stop()
        L2.stop()
        group.pg.psql(
            "ALTER TABLE mixpeek_audit DISABLE TRIGGER USER; "
            f"UPDATE mixpeek_audit SET user_email = '{original}' WHERE seq = {seq}; "
            "ALTER TABLE mixpeek_audit ENABLE TRIGGER USER; "
            "DROP TABLE mixpeek_log_subtrees, mixpeek_log_checkpoints; "
            "DROP FUNCTION mixpeek_log_append(bigint, bytea[]); DROP FUNCTION mixpeek_log_append_only(); "
            "DELETE FROM mixpeek_schema_migrations WHERE version = 'v5-log-tree'", **db)
        built = group.run("group", "migrate", "--postgres-url", admin, "--grant", ROLE)
        entries = int(group.pg.psql("SELECT count(*) FROM mixpeek_log_subtrees WHERE level = 0", **db))
        records = int(group.pg.psql("SELECT count(*) FROM mixpeek_audit", **db))
        check("log: group migrate builds the tree of the records already in the chain (one leaf a record)",
              built.returncode == 0 and entries == records > 0, f"exit {built.returncode}: {built.stderr[-300:]}; {entries} leaves, {records} records")
        L1.start()
        back, _ = wait_until(lambda: create(L1, "log-back@example.com", f"back-{time.monotonic()}").status == 200, 10, 0.2)
        run = subprocess.run([client, "-saved", saved, f"http://127.0.0.1:{L1.port}", keys[0]], capture_output=True, text=True, timeout=30)
        check("log: L1 restarted on the rebuilt tree accepts mutations again, and Go's verifier finds it extends the saved checkpoint",
              bool(back) and run.returncode == 0, f"{L1.log_text()[-300:]}; {(run.stdout + run.stderr)[-300:]}")
    finally:
        for proxy in members:
            proxy.stop()
            group.proxies.pop(proxy.name, None)


# ---- 4. the database role, credentials, witnesses --------------------------------------------

def metrics(proxy):
    """`/_proxy/metrics` as {name: value} for unlabelled samples."""
    reply = call(proxy.port, "GET", "/_proxy/metrics", token=None)
    values = {}
    for line in reply.text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            values[parts[0]] = parts[1]
    return values


def status_group(proxy):
    reply = call(proxy.port, "GET", "/_proxy/status.json", token=None)
    return (reply.json or {}).get("group")


def free_port():
    """A loopback port nothing listens on (bound, then released)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_refused(group, url, name, timeout=40):
    """Runs `serve --append-only-role` against `url` to its end: (exit code, output), or
    (None, output) when it started after all (it is then stopped)."""
    data = os.path.join(group.work, f"data-{name}")
    args = [BIN, "serve", "--port", "0", "--upstream", group.fake.url, "--data-dir", data, "--proxy-id", name,
            "--log-level", "warning", "--append-only-role"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, MIXPEEK_PROXY_POSTGRES_URL=url))
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        proctools.stop(proc)
        return None, "it kept running"


def append_only_role(group):
    """Issue 23, item 4: set up the strict way (`group migrate --grant`, as `Group.open` does),
    the serving role can neither disable the chain's triggers nor rewrite it, and the proxies
    work; a role that migrated by itself (it owns the tables) is reported, and refused with
    `--append-only-role`."""
    pg, A, B = group.pg, group["A"], group["B"]
    column = "user_email"
    for statement, why in ((f"ALTER TABLE mixpeek_audit DISABLE TRIGGER USER", "must be owner"),
                           (f"ALTER TABLE mixpeek_audit DISABLE TRIGGER mixpeek_audit_no_change", "must be owner"),
                           (f"UPDATE mixpeek_audit SET {column} = 'mallory@example.com'", "permission denied"),
                           ("CREATE OR REPLACE FUNCTION mixpeek_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                            "$$ BEGIN RETURN NEW; END $$", "must be owner or no CREATE on the schema"),
                           ("DROP TABLE mixpeek_audit", "must be owner")):
        result = pg.run_psql(statement, user=ROLE, password=ROLE_PASSWORD)
        check(f"append-only: `{statement[:60]}` as the serving role fails ({why})",
              result.returncode != 0 and (why in result.stderr or "permission denied" in result.stderr),
              f"exit {result.returncode}: {result.stderr.strip()}")
    user = "strict@example.com"
    cached_list(B, user)
    made = create(A, user, "strict-key")
    seen = list_keys(B, user)
    check("append-only: and the proxies work: create via A, list via B shows it",
          made.status == 200 and "strict-key" in (seen.keys() or {}), f"create {made!r}; list {seen!r}")
    figures, panel = metrics(A), status_group(A)
    check("append-only: A reports its role cannot rewrite: mixpeek_proxy_audit_role_can_rewrite 0, status page false",
          figures.get("mixpeek_proxy_audit_role_can_rewrite") == "0" and isinstance(panel, dict)
          and panel.get("audit_role_can_rewrite") is False and panel.get("proxy_id") == "A",
          f"metric {figures.get('mixpeek_proxy_audit_role_can_rewrite')!r}; group {panel!r}")
    code, output = serve_refused(group, group.role_url, "R1", timeout=8)
    check("append-only: --append-only-role with the granted role starts (it is still running after 8 s)",
          code is None, f"exit {code}: {output[-600:]}")

    # The default: a role that owns its database migrates by itself and so owns the chain.
    pg.psql("CREATE ROLE selfmig LOGIN PASSWORD 'selfpw'")
    pg.psql("CREATE DATABASE selfmig OWNER selfmig")
    own_url = pg.url_for("selfmig", "selfpw", database="selfmig")
    S = Proxy("S", group.work, group.fake.url, own_url, via_env=True)
    group.proxies["S"] = S
    try:
        S.start()
        healthy, waited = group.wait_healthy(["S"], 15)
        check(f"append-only: a self-migrating role starts and joins, as before ({waited:.1f} s)", bool(healthy), f"{health(S)}")
        made = create(S, user, "self-key")
        check("append-only: and serves mutations", made.status == 200, f"{made!r}")
        figures, panel = metrics(S), status_group(S)
        check("append-only: it is reported: mixpeek_proxy_audit_role_can_rewrite 1, the status page says why",
              figures.get("mixpeek_proxy_audit_role_can_rewrite") == "1" and isinstance(panel, dict)
              and panel.get("audit_role_can_rewrite") is True and "it owns mixpeek_audit" in panel.get("audit_role_rights", []),
              f"metric {figures.get('mixpeek_proxy_audit_role_can_rewrite')!r}; group {panel!r}")
        page = call(S.port, "GET", "/_proxy/", token=None)
        check("append-only: the status page's HTML says the role can rewrite the chain",
              page.status == 200 and "can rewrite the chain" in page.text, f"{page.status}")
        log = S.log_text()
        check("append-only: and its start-up log says so once, naming why",
              log.count("can rewrite the audit chain") == 1 and "it owns mixpeek_audit" in log, log[-800:])
        # What the report means: this role may disable the triggers and rewrite a record.
        rewrite = pg.run_psql("BEGIN; ALTER TABLE mixpeek_audit DISABLE TRIGGER USER; "
                              "UPDATE mixpeek_audit SET user_email = user_email; ROLLBACK",
                              user="selfmig", password="selfpw", database="selfmig")
        check("append-only: (that role can indeed disable the triggers and update the chain)", rewrite.returncode == 0,
              rewrite.stderr.strip())
    finally:
        S.stop()
        group.proxies.pop("S", None)
    code, output = serve_refused(group, own_url, "R2")
    check("append-only: --append-only-role refuses to start as the table-owning role, saying why",
          code == 1 and "can rewrite the audit chain" in output and "it owns mixpeek_audit" in output
          and "group migrate" in output, f"exit {code}: {output[-600:]}")
    code, output = serve_refused(group, group.admin_url, "R3")
    check("append-only: --append-only-role refuses a superuser too",
          code == 1 and "it is a superuser" in output, f"exit {code}: {output[-600:]}")
    closed = pg.url_for(ROLE, ROLE_PASSWORD, port=free_port())
    code, output = serve_refused(group, closed, "R4")
    check("append-only: --append-only-role does not start when PostgreSQL cannot say what the role may do",
          code == 1 and "cannot check" in output, f"exit {code}: {output[-600:]}")
    grant = group.run("group", "migrate", "--postgres-url", group.admin_url.replace("/postgres?", "/selfmig?"), "--grant", "selfmig")
    check("append-only: group migrate --grant a role that owns the tables fails, naming why",
          grant.returncode != 0 and "it owns mixpeek_audit" in grant.stdout + grant.stderr,
          f"exit {grant.returncode}: {(grant.stdout + grant.stderr)[-400:]}")


def expect_head(group):
    """Issue 23, item 9: `audit verify --expect-head` works with `--postgres-url`."""
    made = create(group["A"], "head@example.com", "head-key")
    verify = group.run("audit", "verify", "--postgres-url", group.role_url)
    match = re.search(r"head (\d+):([0-9a-f]+)", verify.stdout)
    check("expect-head: audit verify --postgres-url prints the head", made.status == 200 and verify.returncode == 0 and match,
          f"create {made!r}; exit {verify.returncode}: {verify.stdout[-300:]}")
    if not match:
        return
    seq, digest = int(match.group(1)), match.group(2)
    same = group.run("audit", "verify", "--postgres-url", group.role_url, "--expect-head", f"{seq}:{digest}")
    check("expect-head: the printed head is expected: exit 0", same.returncode == 0, f"exit {same.returncode}: {same.stdout[-300:]}")
    older = group.run("audit", "verify", "--postgres-url", group.role_url, "--expect-head", f"{seq - 1}:{digest}")
    check("expect-head: a head with another record's hash: exit 1", older.returncode == 1,
          f"exit {older.returncode}: {older.stdout[-300:]}")
    gone = group.run("audit", "verify", "--postgres-url", group.role_url, "--expect-head", f"{seq + 1000}:{digest}")
    check("expect-head: a head past the chain's end (records removed from the end): exit 1, saying so",
          gone.returncode == 1 and "expected head" in gone.stdout, f"exit {gone.returncode}: {gone.stdout[-300:]}")
    bad = group.run("audit", "verify", "--postgres-url", group.role_url, "--expect-head", "nonsense")
    check("expect-head: a malformed head is refused, not ignored", bad.returncode not in (0, 1),
          f"exit {bad.returncode}: {(bad.stdout + bad.stderr)[-300:]}")


def witness_synced(group):
    """The witness lines reach the disk: `fsync` on group-witness.log, at most once per batch
    (strace attached to A while it answers sequential creates)."""
    import shutil
    if shutil.which("strace") is None:
        print("SKIP witness: strace is not installed; the fsync of the witness file is not checked", flush=True)
        return
    A = group["A"]
    path = os.path.join(A.data, "group-witness.log")
    lines_before = sum(1 for _ in open(path))
    trace = os.path.join(group.work, "witness-strace.txt")
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", trace, "-p", str(A.proc.pid)])
    try:
        time.sleep(1.5)  # attached to every thread
        made = [create(A, "synced@example.com", f"synced-{n}").status for n in range(5)]
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    written = sum(1 for _ in open(path)) - lines_before
    with open(trace) as handle:
        syncs = sum("group-witness.log>" in line and "= 0" in line for line in handle)
    check(f"witness: each committed batch's lines are fsynced, once a batch ({syncs} fsyncs for {written} lines of 5 creates)",
          made == [200] * 5 and written == 10 and 1 <= syncs <= written, f"creates {made}; {written} lines, {syncs} fsyncs")


def witness_failure(group):
    """Issue 23, item 9: a witness file that cannot be written (here: past the process's file-size
    limit, as a full quota) is logged and counted, and the mutation is refused, not forwarded."""
    data = os.path.join(group.work, "data-W")
    os.makedirs(data, mode=0o700, exist_ok=True)
    limit = 1 << 20
    with open(os.path.join(data, "group-witness.log"), "w") as handle:
        line = "#" * 63 + "\n"
        handle.write(line * (limit // len(line)))
    os.chmod(os.path.join(data, "group-witness.log"), 0o600)
    witness_synced(group)
    W = Proxy("W", group.work, group.fake.url, group.role_url, file_size_limit=limit, extra=["--access-log", "off"])
    group.proxies["W"] = W
    try:
        W.start()
        healthy, waited = group.wait_healthy(["W"], 15)
        check(f"witness: W joins ({waited:.1f} s)", bool(healthy), f"{health(W)}")
        before = group.fake.last()
        refused = create(W, "witness@example.com", "unwitnessed")
        check("witness: a mutation whose intent cannot be witnessed gets 503 in the error shape",
              refused.status == 503 and is_error_shape(refused, 503), f"{refused!r}")
        check("witness: and is not forwarded", group.fake.last() == before, f"{group.fake.history(before)['mutations']}")
        check("witness: W's log says the witness file could not be written",
              "witness file could not be written" in W.log_text(), W.log_text()[-600:])
        failures = metrics(W).get("mixpeek_proxy_witness_failures_total")
        check("witness: mixpeek_proxy_witness_failures_total counts it", failures is not None and int(failures) >= 1, f"{failures!r}")
        rows = [r for r in group.audit_query("--user", "witness@example.com") if r.get("key_name") == "unwitnessed"]
        check("witness: the chain has its intent closed as error", len(rows) == 1 and rows[0].get("outcome") == "error", f"{rows}")
        listed = list_keys(W, "witness@example.com")
        check("witness: lists are still answered", listed.status == 200, f"{listed!r}")
    finally:
        W.stop()
        group.proxies.pop("W", None)


def credentials(group):
    """Issue 23, item 9: the password from PGPASSWORD or a passfile, none on the command line;
    a warning for one in a --postgres-url flag."""
    pg = group.pg
    bare = pg.url_for(ROLE, "", port=pg.port).replace(f"{ROLE}:@", f"{ROLE}@")
    passfile = os.path.join(group.work, "pgpass")
    with open(passfile, "w") as handle:
        handle.write(f"# the proxies' role\n127.0.0.1:{pg.port}:postgres:{ROLE}:{ROLE_PASSWORD}\n")
    os.chmod(passfile, 0o600)
    started = []
    try:
        P1 = Proxy("P1", group.work, group.fake.url, bare, env={"PGPASSWORD": ROLE_PASSWORD})
        P2 = Proxy("P2", group.work, group.fake.url, bare, env={"PGPASSFILE": passfile})
        for proxy in (P1, P2):
            group.proxies[proxy.name] = proxy
            started.append(proxy.start())
        healthy, waited = group.wait_healthy(["P1", "P2"], 15)
        check(f"credentials: a proxy joins with the password in PGPASSWORD, and one with it in PGPASSFILE ({waited:.1f} s)",
              bool(healthy), f"{[health(p) for p in started]}")
        made = create(P1, "creds@example.com", "by-env")
        check("credentials: and mutates", made.status == 200, f"{made!r}")
        query = group.run("audit", "query", "--postgres-url", f"{bare}&passfile={passfile}", "--user", "creds@example.com",
                          "--format", "jsonl")
        check("credentials: audit query reads the password from passfile= in the URL, and warns of nothing",
              query.returncode == 0 and "by-env" in query.stdout and "warning" not in query.stderr,
              f"exit {query.returncode}: {query.stderr[-300:]}")
        loose = passfile + "-loose"
        with open(loose, "w") as handle:
            handle.write(f"127.0.0.1:{pg.port}:postgres:{ROLE}:{ROLE_PASSWORD}\n")
        os.chmod(loose, 0o644)
        refused = group.run("audit", "query", "--postgres-url", f"{bare}&passfile={loose}", "--limit", "1")
        check("credentials: a passfile others may read is refused, as libpq does, saying to chmod 600 it",
              refused.returncode != 0 and "chmod 600" in refused.stdout + refused.stderr
              and ROLE_PASSWORD + "\n" not in refused.stdout + refused.stderr,
              f"exit {refused.returncode}: {(refused.stdout + refused.stderr)[-300:]}")
        check("credentials: no warning from a proxy given no password on its command line",
              all("holds a password" not in p.log_text() for p in started), started[0].log_text()[-400:])
    finally:
        for proxy in started:
            proxy.stop()
            group.proxies.pop(proxy.name, None)
    check("credentials: a proxy given a password in --postgres-url warns that it shows in the process list",
          "holds a password" in group["A"].log_text(), group["A"].log_text()[-400:])
    flagged = group.run("audit", "query", "--postgres-url", group.role_url, "--limit", "1", "--format", "jsonl")
    check("credentials: so does audit query --postgres-url with one (and still runs)",
          flagged.returncode == 0 and "holds a password" in flagged.stderr, f"exit {flagged.returncode}: {flagged.stderr[-300:]}")


def health_detail(group):
    """Issue 23, item 9: `/_proxy/health` says `unreachable` and no more; PostgreSQL's words
    (which name the role) are in the log."""
    H = Proxy("H", group.work, group.fake.url, group.pg.url_for(ROLE, "wrong-password"), via_env=True)
    group.proxies["H"] = H
    try:
        H.start()
        time.sleep(2.5)
        reply = call(H.port, "GET", "/_proxy/health", token=None)
        body = reply.json or {}
        check("health-detail: a proxy refused by PostgreSQL answers health 503, group unreachable",
              reply.status == 503 and body.get("group") == "unreachable", f"{reply!r}")
        check("health-detail: and shows none of PostgreSQL's words (no role, no reason)",
              "password" not in reply.text and ROLE not in reply.text and set(body) <= {"status", "audit", "group"}, reply.text)
        check("health-detail: the reason is in the proxy's log", "password authentication failed" in H.log_text(),
              H.log_text()[-600:])
        check("health-detail: the password itself is in neither", "wrong-password" not in reply.text + H.log_text(), "")
    finally:
        H.stop()
        group.proxies.pop("H", None)


def reap_members(group):
    """Issue 25, item 5: a member gone for `group_peer_ttl` loses its row in `mixpeek_proxies`
    (deleted by `mixpeek_proxies_reap`, the proxies' role having no DELETE), while live members
    and one gone for less keep theirs; a member reaped that comes back joins again."""
    db = dict(database="postgres")
    group.pg.psql(
        "INSERT INTO mixpeek_proxies (proxy_id, lease_until, read_seq, protocol) VALUES "
        "('gone-long-ago', now() - interval '1 hour', 3, 3), ('gone-lately', now() - interval '2 seconds', 3, 3) "
        "ON CONFLICT (proxy_id) DO UPDATE SET lease_until = EXCLUDED.lease_until", **db)
    R = Proxy("R", group.work, group.fake.url, group.role_url, extra=["--group-peer-ttl", "60"])
    group.proxies["R"] = R
    try:
        R.start()
        healthy, _ = group.wait_healthy(["R"], 15)
        rows = lambda: set(group.pg.psql("SELECT proxy_id FROM mixpeek_proxies", **db).split())
        gone, waited = wait_until(lambda: "gone-long-ago" not in rows(), 10, 0.2)
        left = rows()
        check(f"reap: a member gone longer than group_peer_ttl loses its row, deleted by a member at a renewal ({waited:.1f} s)",
              bool(healthy) and bool(gone), f"rows {sorted(left)}; {R.log_text()[-300:]}")
        check("reap: live members and one gone for less than the ttl keep theirs",
              {"A", "B", "C", "R", "gone-lately"} <= left, f"rows {sorted(left)}")
        made = create(group["A"], "reap@example.com", "after-reap")
        check("reap: mutations go on (no barrier waits for a reaped member)", made.status == 200, f"{made!r}")
        # R stops, and its lease is made an hour old: the next member to join (R2, which reaps
        # at its first renewal) deletes its row; started again, R joins again.
        R.stop()
        group.pg.psql("UPDATE mixpeek_proxies SET lease_until = now() - interval '1 hour' WHERE proxy_id = 'R'", **db)
        R2 = Proxy("R2", group.work, group.fake.url, group.role_url)
        group.proxies["R2"] = R2
        R2.start()
        reaped, _ = wait_until(lambda: "R" not in rows(), 10, 0.2)
        R2.stop()
        group.proxies.pop("R2", None)
        R.start()
        back, _ = group.wait_healthy(["R"], 15)
        check("reap: a reaped member started again joins again (its row is back, live)",
              bool(reaped) and bool(back) and "R" in rows(), f"reaped {reaped}, healthy {back}, rows {sorted(rows())}")
    finally:
        R.stop()
        group.proxies.pop("R", None)
        group.pg.psql("DELETE FROM mixpeek_proxies WHERE proxy_id = 'gone-lately'", **db)


# ---- the run -----------------------------------------------------------------------------

CHECKS = [("basic", basic), ("property", property_test), ("listen", listen_connection_killed), ("sigstop", frozen_proxy),
          ("sigkill", killed_mid_mutation), ("role", role_privileges), ("outage", postgres_down_mid_run),
          ("restart", postgres_restart_under_load), ("revoked", revoked_everywhere), ("sdk-revoked", sdk_revoked), ("actor", acting_key_in_chain), ("status", status_audit_panel), ("reconcile", reconcile_around), ("down-at-start", postgres_down_at_start), ("hmac", hmac_chain), ("log", verifiable_log), ("append-only", append_only_role),
          ("expect-head", expect_head), ("witness", witness_failure), ("credentials", credentials),
          ("health-detail", health_detail), ("reap", reap_members), ("verify", audit_verify)]


def main():
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(1, 10**6)
    only = {name for name in options.only.split(",") if name}
    unknown = only - {name for name, _ in CHECKS}
    if unknown:
        sys.exit(f"group: no check named {sorted(unknown)}; the checks are {[n for n, _ in CHECKS]}")
    selected = [(name, run) for name, run in CHECKS if not only or name in only]
    if options.without_group:
        selected = [(name, run) for name, run in selected if name in ("basic", "property")]
    work = tempfile.mkdtemp(prefix="group-check-")
    group = Group(work, with_group=not options.without_group)
    try:
        group.open()
        for name, run in selected:
            try:
                run(group, seed) if name == "property" else run(group)
            except Exception as error:
                check(name, False, f"{type(error).__name__}: {error}")
                # Keep going with whoever is left; a dead proxy comes back for the next check.
                try:
                    if group.pg and not group.pg.running():
                        group.pg.start()
                    for proxy in list(group.proxies.values()):
                        if proxy.frozen:
                            proxy.thaw()
                        if proxy.name in ("A", "B", "C") and not proxy.alive() and name != "verify":
                            proxy.start()
                except Exception as again:
                    check(f"{name}: recovering for the next check", False, f"{type(again).__name__}: {again}")
                    break
    except Exception as error:
        check("group setup", False, f"{type(error).__name__}: {error} (logs in {work})")
    finally:
        group.close()
        if options.keep or check.results.count(False):
            print(f"group: logs in {work}")
        else:
            subprocess.run(["rm", "-rf", work])
    if options.without_group:
        print("group: --without-group: checks 1 and 2 are expected to FAIL here")
    return check.summary("group")


sys.exit(main())
