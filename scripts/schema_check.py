#!/usr/bin/env python3
"""The outside judge: schemathesis (PyPI, pinned in scripts/requirements-schema.txt) holds the
fake upstream, and the proxy in front of it, against Mixpeek's own OpenAPI document 0.81 (the
extract's five API-keys operations), then a replay compares the two targets' answers byte for
byte.

1. `st run` against `mixpeek-proxy fake-upstream` alone, then against `mixpeek-proxy serve` in
   front of a fresh fake: seeded, --max-examples per operation, every check that applies.
2. The requests of the first run (its VCR cassette) are sent again, in order, to a fresh fake
   and to a fresh proxy in front of another fresh fake; status, Content-Type and body must be
   the same bytes, but for the values that are random on every run (ids, secrets, times).

A failure or a difference fails the script unless it is in DEVIATIONS below: the one list of
known, documented deviations, each with its reason. Prints `schema check: N passed, M failed`.

    python3 scripts/schema_check.py [path/to/mixpeek-proxy] [--examples N] [--seed N]
"""
import argparse, base64, json, os, re, shutil, subprocess, sys, tempfile, time, urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proctools  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The extract of Mixpeek's OpenAPI document 0.81 (API-keys operations and the audit log), kept
# in the repository so that the check runs from a clean clone.
SPEC = os.environ.get("MIXPEEK_OPENAPI", os.path.join(ROOT, "docs", "mixpeek-openapi-0.81-api-keys.json"))
TOKEN = "sk_schema_check_0123456789abcdefghijklmnop"

# The known deviations, in one place, each with its reason. A schemathesis failure is known
# when its check, the answer's status and a pattern of the answer's body match an entry; a
# replay difference when the proxy's answer matches a "replay" entry.
DEVIATIONS = [
    {"check": "positive_data_acceptance", "status": 400, "body": r'"code":"key_name_taken"',
     "reason": "the API's state, not its schema: a valid create names a key the user already has (the spec lists 400)"},
    {"check": "positive_data_acceptance", "status": 422, "body": r"body\.rate_limit_override: Input should be a valid integer",
     "reason": "the fake keeps rate_limit_override in 64 bits; the spec's integer (and pydantic) has no upper bound, so "
               "a larger number is refused"},
    {"check": "positive_data_acceptance", "status": 400, "body": r'"code":"mixpeek_proxy\.(non_canonical_path|bad_request)"',
     "reason": "the proxy's own documented refusal (README 'What the proxy does to each call'): an API-keys path not "
               "spelled canonically, or a user_email or key_name with a control character, is refused with 400 before it "
               "is forwarded, so that no mutation reaches the upstream unaudited (the spec's string allows any)"},
    {"check": "replay", "status": 400, "fake": 404, "body": r'"code":"mixpeek_proxy\.(non_canonical_path|bad_request)"',
     "reason": "as above: a name with a control character, or a path not spelled canonically, is refused by the proxy "
               "with 400 before it is forwarded; the fake, as the API, answers 404 for it"},
    {"check": "replay", "status": 400, "fake": 200, "body": r'"message":"malformed request: request target (has an escaped NUL, CR or LF|has a byte RFC 3986|has a % not followed|never carries a fragment)',
     "reason": "the proxy refuses, before forwarding or recording, a request target that is not RFC 3986's absolute-path "
               "[ ? query ]: an escaped NUL, CR or LF (a front end that decodes it would see another request), a stray byte, "
               "a bad escape or a fragment (docs/HTTP.md 'HTTP conformance'); the fake, as FastAPI, ignores an "
               "unknown query parameter however it is spelled"},
    {"check": "replay", "status": 405, "fake": 405, "body": r'"code":"mixpeek_proxy\.method_not_allowed"',
     "reason": "a method an API-keys path does not have is answered by the proxy itself (405 with the same Allow), in "
               "its own words, never forwarded"},
]

VOLATILE = re.compile(rb'"(key_id|key_hash|key_prefix|key|created_at|revoked_at|last_used_at|internal_id|organization_id)":"[^"]*"')


def deviation(check, status, body, fake=None):
    """The documented reason for a failure of `check` on an answer (`status`, `body`; for a
    replay, `fake` is the fake's status for the same request), or None."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body or ""
    for known in DEVIATIONS:
        if (known["check"] == check and known["status"] == status and known.get("fake") == fake
                and re.search(known["body"], text)):
            return known["reason"]
    return None


def filtered_spec(directory):
    """The extract's five API-keys operations (the audit log's is not the proxy's business)."""
    with open(SPEC) as handle:
        spec = json.load(handle)
    spec["paths"] = {path: item for path, item in spec["paths"].items() if path.startswith("/v1/organizations/users/")}
    spec.pop("servers", None)
    path = os.path.join(directory, "api-keys.json")
    with open(path, "w") as handle:
        json.dump(spec, handle)
    return path


class Stack:
    """A fresh fake, and a proxy in front of it unless `proxied` is false."""

    def __init__(self, binary, work, name, proxied):
        self.processes = []
        fake, fake_port = proctools.start(binary, ["fake-upstream", "--port", "0"], os.path.join(work, f"{name}-fake.log"))
        self.processes.append(fake)
        self.port = fake_port
        if proxied:
            data = os.path.join(work, f"{name}-data")
            os.makedirs(data)
            proxy, self.port = proctools.start(
                binary, ["serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", data,
                         "--access-log", "off"], os.path.join(work, f"{name}-proxy.log"))
            self.processes.append(proxy)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        for process in reversed(self.processes):
            proctools.stop(process)


def run_schemathesis(spec, stack, report, examples, seed):
    """`st run`; returns its failures as (operation, check, status, body, title)."""
    command = [
        "st", "run", spec, "--url", stack.url, "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all",
        "--max-examples", str(examples), "--seed", str(seed), "--workers", "1", "--generation-database", "none",
        "--report", "ndjson,vcr", "--report-dir", report, "--report-preserve-bytes", "--no-color",
        "--suppress-health-check", "all", "--request-timeout", "10",
    ]
    started = time.time()
    # In the run's own directory: schemathesis keeps state beside where it runs.
    result = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(report))
    elapsed = time.time() - started
    failures = []
    events = os.path.join(report, next(name for name in os.listdir(report) if name.endswith(".ndjson")))
    with open(events) as handle:
        for line in handle:
            event = json.loads(line).get("ScenarioFinished")
            if not event:
                continue
            recorder = event.get("recorder", {})
            for case, checks in recorder.get("checks", {}).items():
                for check in checks:
                    if check.get("status") != "failure":
                        continue
                    info = (check.get("failure_info") or {}).get("failure") or {}
                    response = ((recorder.get("interactions") or {}).get(case) or {}).get("response") or {}
                    content = response.get("content") or {}
                    body = base64.b64decode(content["$base64"]) if "$base64" in content else str(content).encode()
                    failures.append((info.get("operation") or recorder.get("label", "?"), check.get("name", "?"),
                                     response.get("status_code"), body, info.get("title", "")))
    return failures, result, elapsed


def cassette_requests(report):
    """The requests of a run, in order, from its VCR cassette (bodies kept as bytes)."""
    import yaml  # schemathesis depends on PyYAML
    path = os.path.join(report, next(name for name in os.listdir(report) if name.endswith(".yaml")))
    with open(path) as handle:
        cassette = yaml.safe_load(handle)
    requests = []
    for interaction in cassette.get("http_interactions", []):
        request = interaction["request"]
        body = request.get("body") or {}
        data = base64.b64decode(body["base64_string"]) if "base64_string" in body else (body.get("string") or "").encode()
        headers = {name: values[0] if isinstance(values, list) else values for name, values in (request.get("headers") or {}).items()}
        # The report hides credentials: the run's own is put back.
        if "Authorization" in headers:
            headers["Authorization"] = f"Bearer {TOKEN}"
        requests.append((request["method"], request["uri"], headers, data or None))
    return requests


def send(base, method, uri, headers, body):
    target = re.sub(r"^https?://[^/]+", "", uri)
    request = urllib.request.Request(base + target, data=body, method=method)
    for name, value in headers.items():
        if name.lower() not in ("host", "content-length", "connection", "x-schemathesis-testcaseid"):
            request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type"), error.read()
    except (urllib.error.URLError, ValueError) as error:
        return None, None, str(error).encode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary", nargs="?", default=".build/debug/mixpeek-proxy")
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)
    if shutil.which("st") is None:
        print("schema check: schemathesis is not installed (bash scripts/setup.sh)", file=sys.stderr)
        print("schema check: 0 passed, 1 failed")
        return 1
    urllib.request.install_opener(urllib.request.build_opener(NoRedirect))
    work = tempfile.mkdtemp(prefix="mixpeek-schema.")
    spec = filtered_spec(work)
    passed = failed = 0
    documented = {}
    try:
        for name, proxied in (("fake", False), ("proxy", True)):
            stack = Stack(binary, work, name, proxied)
            report = os.path.join(work, f"{name}-report")
            try:
                failures, result, elapsed = run_schemathesis(spec, stack, report, args.examples, args.seed)
            finally:
                stack.stop()
            new = []
            for operation, check, status, body, title in failures:
                reason = deviation(check, status, body)
                if reason:
                    documented.setdefault(reason, set()).add(f"{name}: {operation} {check} {status}")
                else:
                    new.append((operation, check, status, title, body[:300]))
            summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
            if new:
                failed += 1
                print(f"FAIL schemathesis against the {name}: {len(new)} failure(s) not in DEVIATIONS ({elapsed:.0f} s)")
                for operation, check, status, title, body in sorted(set(new))[:20]:
                    print(f"     {operation}: {check} ({title}) on {status}: {body!r}")
                print("     " + "\n     ".join(result.stdout.strip().splitlines()[-15:]))
            else:
                passed += 1
                print(f"ok   schemathesis against the {name}: no failure outside DEVIATIONS ({elapsed:.0f} s; {summary})")

        # The replay: the fake run's requests, in order, to a fresh fake and a fresh proxy+fake.
        requests = cassette_requests(os.path.join(work, "fake-report"))
        alone = Stack(binary, work, "replay-fake", False)
        behind = Stack(binary, work, "replay-proxy", True)
        identical = refused = 0
        differences = []
        try:
            for method, uri, headers, body in requests:
                a = send(alone.url, method, uri, headers, body)
                b = send(behind.url, method, uri, headers, body)
                if a[0] == b[0] and a[1] == b[1] and VOLATILE.sub(rb'"\1":"*"', a[2]) == VOLATILE.sub(rb'"\1":"*"', b[2]):
                    identical += 1
                elif deviation("replay", b[0], b[2], fake=a[0]):
                    refused += 1
                    code = re.search(rb'"code":"(mixpeek_proxy\.[a-z_]+)"', b[2])
                    documented.setdefault(deviation("replay", b[0], b[2], fake=a[0]), set()).add(
                        f"replay: {method} {b[0]} {code.group(1).decode() if code else '?'}")
                else:
                    differences.append((method, uri, a, b))
        finally:
            alone.stop()
            behind.stop()
        if differences or identical == 0:
            failed += 1
            print(f"FAIL replay: {identical} of {len(requests)} answers identical, {refused} the proxy's documented refusals, "
                  f"{len(differences)} different")
            for method, uri, a, b in differences[:10]:
                print(f"     {method} {uri}\n       fake:  {a[0]} {a[2][:200]!r}\n       proxy: {b[0]} {b[2][:200]!r}")
        else:
            passed += 1
            print(f"ok   replay: {identical} of {len(requests)} answers byte-identical (random ids, secrets and times masked), "
                  f"{refused} the proxy's documented refusals")
        for reason, where in documented.items():
            print(f"     known deviation ({len(where)}: {', '.join(sorted(where)[:4])}): {reason}")
    finally:
        if args.keep:
            print(f"schema check: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"schema check: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
