# Sourced by demo_check.sh and readme_check.sh: runs `$BIN demo` in a temporary directory
# ($work, the current directory afterwards), waits for its tour, and stops it at exit.
# Sets $pid and $url.
work="$(mktemp -d)"
pid=""
. "$(realpath "$(dirname "${BASH_SOURCE[0]}")")/proc.sh"
cleanup() {
  STOP_SECONDS=5 stop_pid "$pid" "demo"
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
"$BIN" demo --port 0 --data-dir "$work/data" --log-level warning > tour.txt 2> demo.log &
pid=$!
# The tour's last line is the status page's address.
for _ in $(seq 100); do grep -q '/_proxy/$' tour.txt 2>/dev/null && break; sleep 0.1; done
url="$(grep -o 'proxy on http://127.0.0.1:[0-9]*' tour.txt | head -1 | sed 's/proxy on //')"
[ -n "$url" ] || { echo "$(basename "$0"): the demo did not start"; cat demo.log; exit 1; }
