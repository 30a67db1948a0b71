#!/usr/bin/env bash
# Runs every README code block whose info string ends in "runnable" (```sh runnable,
# ```python runnable) against a running demo, so the README's commands stay true.
# The README's http://127.0.0.1:8080 is replaced by the demo's port.
set -euo pipefail
BIN="$(realpath "${1:-.build/debug/mixpeek-proxy}")"
README="$(realpath "$(dirname "$0")/../README.md")"
HERE="$(realpath "$(dirname "$0")")"
. "$HERE/demo_lib.sh"

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
