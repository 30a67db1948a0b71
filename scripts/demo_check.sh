#!/usr/bin/env bash
# Runs `mixpeek-proxy demo` and then every command its tour prints, exactly as printed (with
# `mixpeek-proxy` resolved to the binary under test), failing on the first that fails.
set -euo pipefail
BIN="$(realpath "${1:-.build/debug/mixpeek-proxy}")"
. "$(realpath "$(dirname "$0")")/demo_lib.sh"

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
grep -q 'nothing changed around the proxy' out.* || { echo "demo_check: audit reconcile found changes around the proxy"; exit 1; }
# The tour ends with the status page's address, and it serves the page.
page="$(tail -n 1 tour.txt | sed -e 's/^ *//')"
[[ "$page" == "$url/_proxy/" ]] || { echo "demo_check: the tour does not end with the status page's address: $page"; exit 1; }
# Read whole before it is searched: `grep -q` stops at the title, and curl, writing the rest of a
# page larger than a pipe holds, then fails (23), which pipefail reports as no page.
status_page="$(curl -fsS "$page")" || { echo "demo_check: no status page at $page"; exit 1; }
grep -q '<title>mixpeek-proxy status</title>' <<<"$status_page" || { echo "demo_check: no status page at $page"; exit 1; }
echo "demo_check: ran $count commands from the demo tour: all passed"
