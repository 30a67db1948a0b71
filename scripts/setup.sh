#!/usr/bin/env bash
# Installs what building, testing and running mixpeek-proxy need on a fresh Debian machine
# with the Swift toolchain: SQLite's headers (GRDB links the system libsqlite3), curl (the
# demo tour and checks), the official Mixpeek Python SDK (end-to-end test), schemathesis
# (scripts/schema_check.py holds the fake and the proxy against Mixpeek's OpenAPI document), and what
# scripts/bench.sh compares against and measures with (nginx, Varnish, HAProxy, wrk, strace; its
# smoke run is part of scripts/test.sh), and Debian's Chromium, which
# scripts/status_page_check.py drives headless over the DevTools protocol on a pipe, and Go
# with its golang.org/x/mod (sumdb/tlog, sumdb/note), the verifiable log's outside judge.
# Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libsqlite3-dev sqlite3 curl ca-certificates openssl nginx varnish haproxy wrk strace procps util-linux chromium golang-go golang-golang-x-mod-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# PostgreSQL for the group-of-proxies tests (scripts/postgres.sh runs its own server in a temp
# dir on a free port). The cluster Debian's package would create and start is not wanted:
# services are kept from starting while it installs (policy-rc.d, unless the machine has one).
if ! dpkg -s postgresql >/dev/null 2>&1; then
  echo "setup: installing postgresql (its default cluster is not started)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  policy_made=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    policy_made=1
  fi
  status=0
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null; } || status=$?
  [ -z "$policy_made" ] || $SUDO rm -f /usr/sbin/policy-rc.d
  [ "$status" -eq 0 ] || { echo "setup: installing postgresql failed" >&2; exit "$status"; }
fi

command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6.1 or newer is needed)" >&2; exit 1; }

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import mixpeek, sys; sys.exit(0 if mixpeek.__version__ == "1.3.783" else 1)' 2>/dev/null; then
  echo "setup: installing the Mixpeek Python SDK"
  "$PYTHON" -m pip install -q --disable-pip-version-check -r scripts/requirements-e2e.txt
fi
if ! "$PYTHON" -c 'import schemathesis, sys; sys.exit(0 if schemathesis.__version__ == "4.32.5" else 1)' 2>/dev/null; then
  echo "setup: installing schemathesis (scripts/schema_check.py)"
  "$PYTHON" -m pip install -q --disable-pip-version-check -r scripts/requirements-schema.txt
fi
echo "setup: ok"
