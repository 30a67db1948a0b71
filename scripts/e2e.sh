#!/usr/bin/env bash
# End-to-end check with the official Mixpeek Python SDK against the real binary:
# starts `mixpeek-proxy fake-upstream` and `mixpeek-proxy serve` in front of it (both on
# free ports, with a fresh data dir), runs scripts/e2e_sdk.py, stops both, and exits with
# the Python script's status. Its last line is `e2e: N passed, M failed`.
#
#   bash scripts/e2e.sh [path/to/mixpeek-proxy]     (default .build/debug/mixpeek-proxy)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${1:-.build/debug/mixpeek-proxy}"
PYTHON="${PYTHON:-python3}"
STARTUP_SECONDS="${E2E_STARTUP_SECONDS:-60}"
STOP_SECONDS=10

case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
if [ ! -x "$BIN" ]; then
  echo "e2e: no executable at $BIN (build it with: swift build --product mixpeek-proxy)" >&2
  echo "e2e: 0 passed, 1 failed"
  exit 1
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mixpeek-e2e.XXXXXX")"
DATA="$WORK/data"
mkdir -p "$DATA"
FAKE_PID=""
PROXY_PID=""

. scripts/proc.sh

cleanup() {
  local status=$?
  stop_pid "$PROXY_PID" "e2e: proxy"
  stop_pid "$FAKE_PID" "e2e: fake upstream"
  if [ "${E2E_KEEP:-0}" = "1" ]; then
    echo "e2e: kept $WORK (data dir, and the servers' stdout and stderr)" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (bounded) for the first complete stdout line of a started process and prints the
# port of the URL in it.
port_from() {
  local out="$1" pid="$2" what="$3" i line port
  for ((i = 0; i < STARTUP_SECONDS * 10; i++)); do
    if [ "$(wc -l <"$out")" -ge 1 ]; then
      line="$(head -n 1 "$out")"
      # The first URL on the line (the proxy's line names its upstream's URL after its own).
      port="$(printf '%s\n' "$line" | grep -o -m 1 -E 'http://[^/ ]+:[0-9]+' | head -n 1 | sed -E 's|.*:([0-9]+)$|\1|' || true)"
      if [ -n "$port" ]; then
        echo "$port"
        return 0
      fi
      echo "e2e: $what printed no URL on its first line: $line" >&2
      return 1
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "e2e: $what exited before printing its URL" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "e2e: $what printed no URL within ${STARTUP_SECONDS}s" >&2
  return 1
}

fail_startup() {
  local log
  for log in fake proxy; do
    if [ -s "$WORK/$log.err" ]; then
      echo "---- last lines of the $log's stderr ----" >&2
      tail -n 20 "$WORK/$log.err" >&2
    fi
  done
  echo "e2e: 0 passed, 1 failed"
  exit 1
}

"$BIN" fake-upstream --port 0 >"$WORK/fake.out" 2>"$WORK/fake.err" &
FAKE_PID=$!
FAKE_PORT="$(port_from "$WORK/fake.out" "$FAKE_PID" "fake-upstream")" || fail_startup
echo "e2e: fake upstream on http://127.0.0.1:$FAKE_PORT (pid $FAKE_PID)"

"$BIN" serve --port 0 --upstream "http://127.0.0.1:$FAKE_PORT" --data-dir "$DATA" \
  >"$WORK/proxy.out" 2>"$WORK/proxy.err" &
PROXY_PID=$!
PROXY_PORT="$(port_from "$WORK/proxy.out" "$PROXY_PID" "mixpeek-proxy serve")" || fail_startup
echo "e2e: proxy on http://127.0.0.1:$PROXY_PORT (pid $PROXY_PID), data $DATA"

status=0
"$PYTHON" scripts/e2e_sdk.py --proxy "http://127.0.0.1:$PROXY_PORT" --data-dir "$DATA" --binary "$BIN" \
  --log "$WORK/proxy.out" --log "$WORK/proxy.err" || status=$?
exit "$status"
