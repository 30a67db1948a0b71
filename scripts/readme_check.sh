#!/usr/bin/env bash
# Runs every README code block whose info string ends in "runnable" (```sh runnable,
# ```python runnable) against a running demo, so the README's commands stay true.
# The README's http://127.0.0.1:8080 is replaced by the demo's port.
set -euo pipefail
BIN="$(realpath "${1:-.build/debug/mixpeek-proxy}")"
README="$(realpath "$(dirname "$0")/../README.md")"
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

"$BIN" demo --port 0 --data-dir "$work/data" --log-level warning > tour.txt 2> demo.log &
pid=$!
for _ in $(seq 100); do grep -q 'proxy on http' tour.txt 2>/dev/null && break; sleep 0.1; done
url="$(grep -o 'proxy on http://127.0.0.1:[0-9]*' tour.txt | head -1 | sed 's/proxy on //')"
[ -n "$url" ] || { echo "readme_check: the demo did not start"; cat demo.log; exit 1; }

export PATH="$(dirname "$BIN"):$PATH"
export MIXPEEK_PROXY_DATA_DIR="$work/data"
export MIXPEEK_API_KEY="sk_readme_0123456789abcdefghijklmnop"

python3 - "$README" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"```(\w+) runnable\n(.*?)```", text, re.S)
for n, (language, body) in enumerate(blocks):
    open(f"block{n}.{ 'py' if language == 'python' else 'sh' }", "w").write(body)
print(len(blocks))
PY
count=$(ls block* 2>/dev/null | wc -l)
[ "$count" -ge 3 ] || { echo "readme_check: expected at least 3 runnable blocks, found $count"; exit 1; }
for block in $(ls block* | sort -V); do
  sed -i "s#http://127.0.0.1:8080#$url#g" "$block"
  case "$block" in
    *.py) python3 "$block" > "$block.out" 2>&1 || { echo "readme_check: FAILED $block:"; cat "$block"; cat "$block.out"; exit 1; } ;;
    *.sh) bash -euo pipefail "$block" > "$block.out" 2>&1 || { echo "readme_check: FAILED $block:"; cat "$block"; cat "$block.out"; exit 1; } ;;
  esac
done
echo "readme_check: ran $count runnable README blocks: all passed"
