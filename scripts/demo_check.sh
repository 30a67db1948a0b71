#!/usr/bin/env bash
# Runs `mixpeek-proxy demo` and then every command its tour prints, exactly as printed (with
# `mixpeek-proxy` resolved to the binary under test), failing on the first that fails.
set -euo pipefail
BIN="$(realpath "${1:-.build/debug/mixpeek-proxy}")"
work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cd "$work"
"$BIN" demo --port 0 --log-level warning > tour.txt 2> demo.log &
pid=$!
for _ in $(seq 100); do
  grep -q 'audit verify' tour.txt 2>/dev/null && break
  sleep 0.1
done
grep -q 'audit verify' tour.txt || { echo "demo_check: the demo printed no tour"; cat demo.log; exit 1; }

# The tour's commands are its indented lines that start with a command name.
grep -E '^  (export|curl|python3|mixpeek-proxy) ' tour.txt | sed -e 's/^  //' > commands.txt
count=$(wc -l < commands.txt)
[ "$count" -ge 10 ] || { echo "demo_check: expected at least 10 commands in the tour, found $count"; exit 1; }

export PATH="$(dirname "$BIN"):$PATH"
n=0
while IFS= read -r line; do
  n=$((n + 1))
  if [[ "$line" == export* ]]; then eval "$line"; continue; fi
  out="$(bash -o pipefail -c "$line" 2>&1)" || { echo "demo_check: FAILED: $line"; echo "$out"; exit 1; }
  echo "$out" > "out.$n"
done < commands.txt

# What the tour promises: a MISS then a HIT, the protected key refused, the audit intact.
grep -qi 'x-cache: MISS' out.* || { echo "demo_check: no MISS seen"; exit 1; }
grep -qi 'x-cache: HIT' out.* || { echo "demo_check: no HIT seen"; exit 1; }
grep -q '"status":403' out.* || { echo "demo_check: admin-key was not refused"; exit 1; }
grep -q 'audit chain intact' out.* || { echo "demo_check: audit verify did not pass"; exit 1; }
grep -q 'rotate' out.* || { echo "demo_check: audit query shows no rotate"; exit 1; }
echo "demo_check: ran $count commands from the demo tour: all passed"
