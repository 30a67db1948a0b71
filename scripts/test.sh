#!/usr/bin/env bash
# The test command: builds (no warnings allowed in our code), runs the Swift test suites,
# then the end-to-end check with the official Python SDK against the real binary, schemathesis
# against Mixpeek's OpenAPI document (the fake alone and behind the proxy), the
# demo's printed commands, the status page in headless Chromium, crash/shutdown checks, audit
# reconcile against the fake's audit log, the audit log checked by Go's sumdb verifier, a
# group of proxies on PostgreSQL, soak and request-log checks, a benchmark smoke run, and the
# README's runnable blocks.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== swift build"
swift build 2>&1 | tee .build-log.txt | grep -v '^\[' || true
if grep -E '^/.*(Sources|Tests)/.*warning:' .build-log.txt; then
  echo "test: the build has warnings in our code" >&2
  exit 1
fi
grep -q 'error:' .build-log.txt && { echo "test: build failed" >&2; exit 1; }

echo "== the verifiable log's vectors are Go's (sumdb/tlog, sumdb/note)"
bash scripts/log_vectors.sh

echo "== swift test"
swift test 2>&1 | grep -v -E "^\[[0-9]+/[0-9]+\]"

echo "== the verifiable audit log read over HTTP by Go's sumdb/tlog and sumdb/note, tampering caught"
python3 scripts/log_check.py .build/debug/mixpeek-proxy

echo "== demo tour"
bash scripts/demo_check.sh .build/debug/mixpeek-proxy

echo "== end to end with the Mixpeek Python SDK"
bash scripts/e2e.sh .build/debug/mixpeek-proxy

echo "== schemathesis: the fake, and the proxy in front of it, against Mixpeek's OpenAPI document; both replayed byte for byte"
python3 scripts/schema_check.py .build/debug/mixpeek-proxy

echo "== the status page in headless Chromium (screenshots under .build/)"
python3 scripts/status_page_check.py .build/debug/mixpeek-proxy
python3 scripts/status_page_check.py --group .build/debug/mixpeek-proxy

echo "== crashes and shutdown against the real binary"
python3 scripts/crash_check.py .build/debug/mixpeek-proxy

echo "== audit reconcile against the fake's audit log: changes around the proxy, unknowns settled, 429, 401/403, the token never written"
python3 scripts/reconcile_check.py .build/debug/mixpeek-proxy

echo "== a group of proxies on a throwaway PostgreSQL: cross-proxy read-your-writes, the seeded property test, faults"
python3 scripts/group_check.py .build/debug/mixpeek-proxy

echo "== soak (short form; scripts/soak.py --seconds 60 for the long one)"
python3 scripts/soak.py --seconds 10 --binary .build/debug/mixpeek-proxy

echo "== request log (short form; bench.sh counts 60 s of load): a line per request after SIGTERM, SIGHUP reopens"
python3 scripts/access_log_check.py --requests 3000 --binary .build/debug/mixpeek-proxy

echo "== benchmark smoke run (scripts/bench.sh --smoke: the script works; figures not asserted)"
if ! BIN=.build/debug/mixpeek-proxy bash scripts/bench.sh --smoke >.build/bench-smoke.md 2>.build/bench-smoke.log; then
  tail -n 30 .build/bench-smoke.log >&2
  exit 1
fi
echo "bench smoke: the script ran every section and check (debug-build figures, not meaningful: .build/bench-smoke.md)"

echo "== README command blocks marked runnable"
bash scripts/readme_check.sh .build/debug/mixpeek-proxy
