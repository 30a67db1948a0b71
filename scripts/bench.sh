#!/usr/bin/env bash
# Benchmarks mixpeek-proxy against the caches people would otherwise put in front of the
# Mixpeek API (issue 6), all in one run, on loopback, on this machine:
#
#   origin        nginx serving a ~4 KiB API-keys list (APIKeyModel field names) as a static
#                 file; a second location answers the same body with `Cache-Control: no-store`
#   nginx         proxy_cache, 1 worker, key "$request_uri$http_authorization", 200s cached;
#                 two ports: one with nginx's default access log (combined format, unbuffered,
#                 to a file), one with `access_log off`
#   Varnish       hash on URL + Authorization (cached despite the Authorization header)
#   HAProxy       its cache (HAProxy 2.6: `cache` section, total-max-size 64 MB, max-age 3600 s),
#                 `nbthread 1` (on core 0 like the others with --pinned), keep-alive to the
#                 origin (`http-reuse always`). Its cache keys on Host + URI and stores nothing
#                 for a request that carries Authorization, so the SHA-256 of the Authorization
#                 value goes into the key as a query argument (`credential=<hex>`, which the
#                 origin's exact-match location ignores), the header is dropped before
#                 `cache-use`, and the origin's answer gets `Cache-Control: max-age=3600` before
#                 `cache-store` so that it is stored; X-Cache-Status from `res.cache_hit`.
#                 HAProxy logs nothing by default (no `log` line), so it is in both tables with
#                 its logging off: one server, measured once per round
#   mixpeek-proxy `serve` in front of the same origin, release build, twice: with its default
#                 flags (request log on stderr, which this script redirects to a file) and with
#                 `--access-log off`; both with `--cache-ttl 3600` (nginx, Varnish and HAProxy
#                 cache for an hour too, so no hit round sees an expiry) and
#                 `--credential-recheck 3600` (nginx, Varnish and HAProxy never ask the origin
#                 whether a credential still stands)
#
# Two pairs are compared: as shipped (both request logs on: mixpeek-proxy's default against
# nginx's default; HAProxy there as shipped too, i.e. logging nothing), and with both logs off
# (Varnish, HAProxy and the static origin are in that table).
# It checks that each cache really serves hits (first request MISS, then HIT, the origin's
# request count not growing), runs interleaved wrk rounds (A B C D A B C D ...) and prints
# medians: req/s, p50, p99, server CPU time per request (utime+stime from /proc/PID/stat of
# the server's processes), ratio to the nginx of the same pair. It counts mixpeek-proxy's
# request-log lines after SIGTERM: exactly one per request it counted, none dropped. Then,
# from the same run:
#   - the miss path: proxy p50 minus direct-to-origin p50, every call forwarded;
#   - audited mutations per second through the proxy in front of `mixpeek-proxy fake-upstream`
#     (POST creates with unique names, then PATCHes of missing keys), `audit verify` after,
#     and a durability probe (fsync/fdatasync calls per sequential create, with strace);
#   - start-to-healthy time and RSS with 100k cached entries on disk;
#   - (full run only) the request log under sustained load: mixpeek-proxy with default flags,
#     wrk -c64 for 60 s (--log-seconds), then SIGTERM: every request's line must be there;
#   - a group of proxies on PostgreSQL (scripts/group_bench.py): hits through a member of a
#     group of 3 vs a lone proxy, a create's latency in each, durable creates/s at 16 clients
#     over 2 proxies into one chain, then `audit verify --postgres-url --witness`.
# Prints the results as Markdown (with the machine and the command), progress on stderr.
#
#   scripts/bench.sh              full run (5 rounds x 10 s per server; about 7 minutes)
#   scripts/bench.sh --pinned     servers on core 0 (taskset -c 0), wrk on core 1
#   scripts/bench.sh --smoke      seconds: 1 round x 1 s, 1k entries (CI; numbers never asserted)
#   options: --rounds N  --duration SECONDS  --entries N  --log-seconds N  --keep (keep the temp dir)
#            --hits-only (only the cache-hit rounds: for quick comparisons while tuning)
#   environment: BIN=path/to/mixpeek-proxy skips the release build
#                (default: swift build -c release --scratch-path .build-release)
#                BASELINE_BIN=path/to/another/mixpeek-proxy adds that binary (an earlier
#                revision, say) to the log-off table, with BASELINE_FLAGS (default
#                "--cache-ttl 3600 --log-level warning": before the request log existed, that
#                was how to turn the per-request line off) and BASELINE_REV naming it
#
# Installs what is missing with apt-get: nginx, varnish, haproxy, wrk, sqlite3, curl, strace.
# Exits non-zero when a tool cannot be installed, a process fails to start, a cache fails its
# MISS-then-HIT check, a cache lets requests through to the origin during its hit rounds,
# a server answers errors, mixpeek-proxy's request log misses or drops a line, or `audit verify`
# fails. Never on performance figures.
# Every process it starts is stopped by PID at exit; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
COMMAND_LINE="scripts/bench.sh${*:+ $*}"
[ -n "${BIN:-}" ] && COMMAND_LINE="BIN=$BIN $COMMAND_LINE"
export PATH="$PATH:/usr/sbin:/sbin"

MODE=full
PINNED=0
KEEP=0
HITS_ONLY=0
ROUNDS=""
DURATION=""
ENTRIES=""
LOG_SECONDS=""
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) MODE=smoke ;;
    --pinned) PINNED=1 ;;
    --keep) KEEP=1 ;;
    --hits-only) HITS_ONLY=1 ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
    --duration) DURATION="${2:?--duration needs seconds}"; shift ;;
    --entries) ENTRIES="${2:?--entries needs a number}"; shift ;;
    --log-seconds) LOG_SECONDS="${2:?--log-seconds needs seconds}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$MODE" = smoke ]; then
  : "${ROUNDS:=1}" "${DURATION:=1}" "${ENTRIES:=1000}"
  WARMUP=0; MISS_ROUNDS=1; MISS_DURATION=1; MUT_DURATION=1; USERS=200; USERS_DURATION=1; : "${LOG_SECONDS:=0}"
else
  : "${ROUNDS:=5}" "${DURATION:=10}" "${ENTRIES:=100000}"
  WARMUP=2; MISS_ROUNDS=3; MISS_DURATION=5; MUT_DURATION=10; USERS=5000; USERS_DURATION=3; : "${LOG_SECONDS:=60}"
fi
[[ "$LOG_SECONDS" =~ ^[0-9]+$ ]] || { echo "bench: --log-seconds takes a whole number (0 skips the sustained-load count)" >&2; exit 2; }
for n in "$ROUNDS" "$DURATION" "$ENTRIES"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench: --rounds, --duration and --entries take positive integers" >&2; exit 2; }
done

TOKEN="sk_bench_0123456789abcdef0123456789abcdef"
LIST_PATH="/v1/organizations/users/alice@example.com/api-keys"
NOSTORE_PATH="/v1/organizations/users/nostore@example.com/api-keys"
# The miss-path rounds ask for nostore<i>@example.com, a different list per request: with one
# URL the proxy would coalesce concurrent misses into one upstream call (and nginx's
# proxy_cache_lock would make waiters poll every 500 ms), so not every call would be forwarded.
NOSTORE_LOCATION='~ ^/v1/organizations/users/nostore[0-9]*@example\.com/api-keys$'
MUT_PATH="/v1/organizations/users/bench@example.com/api-keys"
HIT_CONNECTIONS=64
MISS_CONNECTIONS=8
MUT_CONNECTIONS=16
STARTUP_SECONDS=60
STOP_SECONDS=10
LUA="$ROOT/scripts/bench/wrk.lua"
CLK_TCK="$(getconf CLK_TCK)"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
FAILURES=()
fail_later() { FAILURES+=("$*"); log "FAIL: $*"; }

# ---------------------------------------------------------------------------------------
# Tools (Debian packages) and the binary.

ensure_tools() {
  local missing=() as_root=()
  command -v nginx >/dev/null || missing+=(nginx)
  command -v varnishd >/dev/null || missing+=(varnish)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v sqlite3 >/dev/null || missing+=(sqlite3)
  command -v curl >/dev/null || missing+=(curl)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v pgrep >/dev/null || missing+=(procps)
  command -v strace >/dev/null || missing+=(strace)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "missing ${missing[*]} and not root (no sudo): install them first"
    as_root=(sudo -n)
  fi
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${as_root[@]}" apt-get install -y -q "${missing[@]}" >&2; then
    "${as_root[@]}" apt-get update -q >&2 || die "apt-get update failed"
    "${as_root[@]}" apt-get install -y -q "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
  fi
  for tool in nginx varnishd haproxy wrk sqlite3 curl taskset pgrep strace; do
    command -v "$tool" >/dev/null || die "$tool still missing after apt-get"
  done
}
ensure_tools

if [ -z "${BIN:-}" ]; then
  log "building mixpeek-proxy in release (scratch path .build-release)"
  swift build -c release --product mixpeek-proxy --scratch-path .build-release >&2 || die "release build failed"
  BIN="$(swift build -c release --scratch-path .build-release --show-bin-path)/mixpeek-proxy"
fi
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
[ -x "$BIN" ] || die "no executable at $BIN"

SRV=()   # prefix for every server process
CLI=()   # prefix for wrk
if [ "$PINNED" = 1 ]; then
  [ "$(nproc)" -ge 2 ] || die "--pinned needs at least 2 cores"
  SRV=(taskset -c 0)
  CLI=(taskset -c 1)
fi

# ---------------------------------------------------------------------------------------
# Temp dir, processes, cleanup.

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mixpeek-bench.XXXXXX")"
mkdir -p "$WORK/logs"
declare -A PID=() KIDS=()
STARTED=()
SLEEP_FIFO="$WORK/sleep.fifo"
mkfifo "$SLEEP_FIFO"
exec {SLEEPFD}<>"$SLEEP_FIFO"
# Sleeps without forking (a read that never gets data).
nap() { read -r -t "$1" -u "$SLEEPFD" _ 2>/dev/null || true; }

. scripts/proc.sh

# Stops a started process, then any child it had at start that outlived it (same command).
stop_proc() {
  local name="$1" kid comm
  [ -n "${PID[$name]:-}" ] || return 0
  stop_pid "${PID[$name]}" "bench: $name"
  for kid in ${KIDS[$name]:-}; do
    comm="${kid#*:}"; kid="${kid%%:*}"
    if [ -r "/proc/$kid/comm" ] && [ "$(cat "/proc/$kid/comm" 2>/dev/null)" = "$comm" ]; then
      kill -KILL "$kid" 2>/dev/null || true
    fi
  done
  PID[$name]=""
}

cleanup() {
  local status=$? i
  trap - EXIT INT TERM
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    stop_proc "${STARTED[$i]}" || true
  done
  if [ "$KEEP" = 1 ] || [ "$status" != 0 ]; then
    # The pre-filled cache file is large and says nothing about a failure: dropped unless --keep.
    [ "$KEEP" = 1 ] || rm -rf "$WORK/big-data"
    log "kept $WORK (configs, logs, data dirs)"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_proc NAME COMMAND...: starts a server (pinned to core 0 in --pinned), stdout and
# stderr under $WORK/logs.
start_proc() {
  local name="$1"
  shift
  "${SRV[@]}" "$@" >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err" &
  PID[$name]=$!
  STARTED+=("$name")
}

# Remembers the children a server has once it is up (nginx workers, Varnish's child).
note_children() {
  local name="$1" kid list=""
  for kid in $(pgrep -P "${PID[$name]}" || true); do
    list+="$kid:$(cat "/proc/$kid/comm" 2>/dev/null || echo '?') "
  done
  KIDS[$name]="$list"
}

# The PIDs whose CPU time counts for a server: the process and its children now.
server_pids() { echo "${PID[$1]}" $(pgrep -P "${PID[$1]}" || true); }

cpu_ticks() {
  local total=0 p s
  local -a f
  for p in "$@"; do
    s="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
    s="${s##*) }"
    read -r -a f <<<"$s"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

rss_kb() {
  local total=0 p v
  for p in "$@"; do
    v="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

used_ports=" "
# pick_port VAR: a free loopback port below the ephemeral range.
pick_port() {
  local i p
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + RANDOM % 12000))
    [[ "$used_ports" == *" $p "* ]] && continue
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
    used_ports+="$p "
    printf -v "$1" '%s' "$p"
    return 0
  done
  die "no free port found"
}

# wait_http NAME URL: bounded wait until URL answers 200 (fails if the process died).
wait_http() {
  local name="$1" url="$2" i code
  for ((i = 0; i < STARTUP_SECONDS * 20; i++)); do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)"
    [ "$code" = 200 ] && return 0
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
      log "$name exited during start-up; its stderr:"
      tail -n 20 "$WORK/logs/$name.err" >&2 || true
      die "$name failed to start"
    fi
    nap 0.05
  done
  tail -n 20 "$WORK/logs/$name.err" >&2 || true
  die "$name did not answer 200 on $url within ${STARTUP_SECONDS}s"
}

# health_ok PORT: one GET /_proxy/health over bash's /dev/tcp (no fork), true on 200.
health_ok() {
  local fd line
  { exec {fd}<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'GET /_proxy/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&"$fd" 2>/dev/null || { exec {fd}>&-; return 1; }
  IFS= read -r -t 2 line <&"$fd" || line=""
  exec {fd}>&-
  [[ "$line" == "HTTP/1.1 200"* ]]
}

# Float arithmetic.
calc() { awk "BEGIN { printf \"%s\", $* }"; }
fmt() { awk -v v="$2" "BEGIN { printf \"$1\", v }"; }
median() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
minmax() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'; }

# run_wrk OUT URL CONNECTIONS SECONDS [ENV=VALUE...]: one wrk run (on core 1 in --pinned);
# sets B[requests], B[p50_us], B[p99_us], B[errors] ... from the script's BENCH line.
declare -A B=()
run_wrk() {
  local out="$1" url="$2" conns="$3" secs="$4" kv line
  shift 4
  if ! env "$@" "${CLI[@]}" timeout -k 5 $((secs + 30)) \
      wrk -t2 -c"$conns" -d"${secs}s" --latency -H "Authorization: Bearer $TOKEN" -s "$LUA" "$url" >"$out" 2>&1; then
    cat "$out" >&2
    die "wrk failed against $url"
  fi
  line="$(grep '^BENCH ' "$out" | tail -n 1)"
  [ -n "$line" ] || { cat "$out" >&2; die "wrk printed no BENCH line for $url"; }
  B=()
  for kv in $line; do
    [[ "$kv" == *=* ]] && B[${kv%%=*}]="${kv#*=}"
  done
  B[errors]=$((B[connect] + B[read] + B[write] + B[status] + B[timeout]))
  B[rps]="$(calc "${B[requests]} / (${B[duration_us]} / 1000000)")"
}

# request_log_check NAME PORT: reads the requests mixpeek-proxy NAME counted and the request-log
# lines it dropped from /_proxy/metrics (nothing is sent in between), stops it with SIGTERM,
# then counts the request lines in its stderr (a file). Sets LOG_LINES[NAME], LOG_COUNTED[NAME],
# LOG_DROPPED[NAME]; a request without its line, or a dropped line, is a check failure.
declare -A LOG_LINES=() LOG_COUNTED=() LOG_DROPPED=()
request_log_check() {
  local name="$1" port="$2" metrics expected
  metrics="$(curl -sS --max-time 10 "http://127.0.0.1:$port/_proxy/metrics")" || die "$name: /_proxy/metrics did not answer"
  LOG_COUNTED[$name]="$(awk '/^mixpeek_proxy_requests_total[{ ]/ { n += $NF } END { printf "%d", n }' <<<"$metrics")"
  LOG_DROPPED[$name]="$(awk '$1 == "mixpeek_proxy_log_lines_dropped_total" { print $2 }' <<<"$metrics")"
  stop_proc "$name"
  LOG_LINES[$name]="$(grep -c ' \[MixpeekProxy\] request$' "$WORK/logs/$name.err" || true)"
  expected="${LOG_COUNTED[$name]}"
  [ "$name" = proxy_nolog ] && expected=0
  log "$name: ${LOG_LINES[$name]} request-log lines after SIGTERM for ${LOG_COUNTED[$name]} requests counted, ${LOG_DROPPED[$name]:-?} dropped"
  [ "${LOG_LINES[$name]}" -eq "$expected" ] \
    || fail_later "$name: ${LOG_LINES[$name]} request-log lines after SIGTERM, expected $expected (${LOG_COUNTED[$name]} requests counted)"
  [ "${LOG_DROPPED[$name]:-x}" = 0 ] || fail_later "$name: mixpeek_proxy_log_lines_dropped_total is ${LOG_DROPPED[$name]:-missing}"
}

# Response headers of one GET with the bench token, lower-cased names.
get_headers() { curl -sS --max-time 10 -D - -o "$2" -H "Authorization: Bearer $TOKEN" "$1" | tr -d '\r'; }
header() { awk -F': ' -v name="$1" 'tolower($1) == name { sub(/^[^:]*: /, ""); print; exit }'; }
status_of() { head -n 1 | awk '{ print $2 }'; }

# ---------------------------------------------------------------------------------------
# Machine and load.

CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
NPROC="$(nproc)"
MEM_GIB="$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
NGINX_VERSION="$(nginx -v 2>&1 | sed 's|.*nginx/||')"
VARNISH_VERSION="$(varnishd -V 2>&1 | head -n 1 | sed -E 's/.*varnish-([0-9.]+).*/\1/')"
HAPROXY_VERSION="$(haproxy -v 2>&1 | head -n 1 | sed -E 's/^HA-?Proxy version ([0-9][^ -]*).*/\1/')"
WRK_VERSION="$(wrk -v 2>&1 | head -n 1 | awk '{ print $2 }' || true)"
REVISION="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$(df --output=fstype "$WORK" 2>/dev/null | tail -n 1)" = tmpfs ]; then
  log "warning: $WORK is on tmpfs, so fsync is free and the mutation figure overstates durability cost; set TMPDIR to a disk"
fi
log "work dir $WORK; load average $LOAD_BEFORE; binary $BIN"

# ---------------------------------------------------------------------------------------
# The list body: ~4 KiB, APIKeyModel field names.

mkdir -p "$WORK/origin"
BODY="$WORK/origin/list.json"
{
  printf '{"keys":['
  for ((i = 1; i <= 7; i++)); do
    [ "$i" -gt 1 ] && printf ','
    hash="$(printf 'sk_live_bench_key_%d' "$i" | sha256sum | cut -c1-64)"
    printf '{"key_id":"key_%s","key_hash":"%s","key_prefix":"sk_live_%s","key_type":"standard","is_internal":false,' \
      "${hash:0:24}" "$hash" "${hash:0:2}"
    printf '"internal_id":"int_%s","organization_id":"org_7f3a9c2e51d84b06","user_id":"usr_alice_5e1d2c3b","name":"ci-key-%d",' \
      "${hash:24:16}" "$i"
    printf '"description":"CI key %d for the build fleet (nightly and release pipelines)","permissions":["read","write","delete"],' "$i"
    printf '"rate_limit_override":null,"status":"active","expires_at":null,"created_at":"2026-0%d-1%dT09:3%d:12.%d45Z",' \
      "$(((i % 9) + 1))" "$((i % 10))" "$((i % 10))" "$i"
    printf '"created_by":"usr_alice_5e1d2c3b","revoked_at":null,"revoked_by":null,"allowed_origins":["https://ci.example.com"]}'
  done
  printf '],"total":7}'
} >"$BODY"
BODY_BYTES="$(wc -c <"$BODY")"
[ "$(sqlite3 :memory: "SELECT json_valid(readfile('$BODY'))")" = 1 ] || die "the list body is not valid JSON"

# ---------------------------------------------------------------------------------------
# Origin (nginx, static file), nginx proxy_cache, Varnish, HAProxy's cache, mixpeek-proxy.

pick_port ORIGIN_PORT
pick_port STATIC_PORT
pick_port NGINX_PORT
pick_port NGINX_NOLOG_PORT
pick_port VARNISH_PORT
pick_port HAPROXY_PORT
pick_port PROXY_PORT
pick_port PROXY_NOLOG_PORT
[ -n "${BASELINE_BIN:-}" ] && pick_port BASE_PORT
BASELINE_FLAGS="${BASELINE_FLAGS:---cache-ttl 3600 --log-level warning}"
pick_port LOGCOUNT_PORT
pick_port FAKE_PORT
pick_port MUT_PORT
pick_port BIG_PORT

USER_DIRECTIVE=""
[ "$(id -u)" = 0 ] && USER_DIRECTIVE="user root root;"

# nginx_common DIR: the parts of an nginx.conf that keep everything under DIR.
nginx_common() {
  cat <<EOF
$USER_DIRECTIVE
worker_processes 1;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() {
  cat <<EOF
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  sendfile on;
  tcp_nodelay on;
  keepalive_timeout 120s;
  keepalive_requests 100000000;
EOF
}

O="$WORK/origin"
mkdir -p "$O/tmp"
{
  nginx_common "$O"
  cat <<EOF
http {
$(nginx_http_common "$O")
  access_log off;
  # The port the caches use: every list request is logged, so misses can be counted.
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    location = /_ready { return 200 "ready\n"; }
    location = $LIST_PATH { default_type application/json; alias $BODY; access_log $O/list.log; }
    location $NOSTORE_LOCATION {
      default_type application/json; alias $BODY; access_log $O/nostore.log;
      add_header Cache-Control "no-store" always;
    }
    location / { return 404; }
  }
  # The same file, unlogged: the static-file reference row.
  server {
    listen 127.0.0.1:$STATIC_PORT;
    location = $LIST_PATH { default_type application/json; alias $BODY; }
    location / { return 404; }
  }
}
EOF
} >"$O/nginx.conf"
: >"$O/list.log"
: >"$O/nostore.log"

N="$WORK/nginx-cache"
mkdir -p "$N/tmp" "$N/cache" "$N/cache-nolog"
nginx_cache_location() {
  cat <<EOF
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache_key "\$request_uri\$http_authorization";
      proxy_cache_valid 200 1h;
      proxy_cache_lock on;
      add_header X-Cache-Status \$upstream_cache_status always;
EOF
}
{
  nginx_common "$N"
  cat <<EOF
http {
$(nginx_http_common "$N")
  proxy_cache_path $N/cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=1h use_temp_path=off;
  proxy_cache_path $N/cache-nolog levels=1:2 keys_zone=bench_nolog:10m max_size=256m inactive=1h use_temp_path=off;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 16; }
  # As shipped: nginx's default access log (combined format, no buffer=), to a file.
  server {
    listen 127.0.0.1:$NGINX_PORT;
    access_log $N/access.log;
    location = /_ready { return 200 "ready\n"; }
    location / {
      proxy_cache bench;
$(nginx_cache_location)
    }
  }
  # The same cache with its access log off (a cache zone of its own, so it has its own MISS).
  server {
    listen 127.0.0.1:$NGINX_NOLOG_PORT;
    access_log off;
    location = /_ready { return 200 "ready\n"; }
    location / {
      proxy_cache bench_nolog;
$(nginx_cache_location)
    }
  }
}
EOF
} >"$N/nginx.conf"

V="$WORK/varnish"
mkdir -p "$V"
cat >"$V/bench.vcl" <<EOF
vcl 4.1;
backend origin { .host = "127.0.0.1"; .port = "$ORIGIN_PORT"; }
sub vcl_recv {
  if (req.url == "/_ready") { return (synth(200, "ready")); }
  if (req.method != "GET" && req.method != "HEAD") { return (pass); }
  # The built-in vcl_recv passes every request that carries Authorization; this cache keys on it.
  return (hash);
}
sub vcl_hash {
  hash_data(req.url);
  hash_data(req.http.Authorization);
  return (lookup);
}
sub vcl_backend_response {
  if (beresp.status != 200 || beresp.http.Cache-Control ~ "no-store") {
    set beresp.uncacheable = true;
    set beresp.ttl = 120s;
    return (deliver);
  }
  set beresp.ttl = 1h;
  return (deliver);
}
EOF

# HAProxy's cache. No `log` line: HAProxy logs nothing unless told to (its default).
H="$WORK/haproxy"
mkdir -p "$H"
cat >"$H/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
  # maxconn needs ~8k descriptors: a lower limit only warns (2.6 fails by default).
  no strict-limits
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
cache bench
  total-max-size 64
  max-object-size 65536
  max-age 3600
listen bench
  bind 127.0.0.1:$HAPROXY_PORT
  http-request return status 200 content-type text/plain string ready if { path /_ready }
  # The cache keys on Host + URI and neither serves nor stores a request with Authorization: the
  # credential's SHA-256 goes into the URI (so into the key), then the header is dropped.
  http-request set-query "%[query]&credential=%[req.fhdr(authorization),sha2(256),hex]" if { query -m found }
  http-request set-query "credential=%[req.fhdr(authorization),sha2(256),hex]" unless { query -m found }
  http-request del-header authorization
  http-request cache-use bench
  # The origin's static file carries no expiry: an hour, so that it is stored (and kept as long as
  # the others keep theirs).
  http-response set-header Cache-Control max-age=3600 unless { res.cache_hit }
  http-response cache-store bench
  http-response set-header X-Cache-Status HIT if { res.cache_hit }
  http-response set-header X-Cache-Status MISS unless { res.cache_hit }
  http-reuse always
  server origin 127.0.0.1:$ORIGIN_PORT
EOF
haproxy -c -q -f "$H/haproxy.cfg" >"$WORK/logs/haproxy-check.out" 2>&1 \
  || { cat "$WORK/logs/haproxy-check.out" >&2; die "haproxy -c rejects $H/haproxy.cfg (HAProxy 2.6 or newer is needed; found $HAPROXY_VERSION)"; }

log "starting the origin, nginx proxy_cache, Varnish, HAProxy and mixpeek-proxy${SRV:+ (pinned to core 0)}"
start_proc origin nginx -p "$O" -c "$O/nginx.conf" -e "$O/error.log"
wait_http origin "http://127.0.0.1:$ORIGIN_PORT/_ready"
note_children origin
start_proc nginx nginx -p "$N" -c "$N/nginx.conf" -e "$N/error.log"
start_proc varnish varnishd -F -j none -a "127.0.0.1:$VARNISH_PORT" -f "$V/bench.vcl" -s malloc,64m -n "$V/work" -T none
start_proc haproxy haproxy -db -f "$H/haproxy.cfg"
# Default flags but the TTL; the request log goes to stderr, redirected to $WORK/logs/proxy.err.
PROXY_FLAGS="--cache-ttl 3600 --credential-recheck 3600"
PROXY_NOLOG_FLAGS="--cache-ttl 3600 --credential-recheck 3600 --access-log off"
start_proc proxy "$BIN" serve --port "$PROXY_PORT" --upstream "http://127.0.0.1:$ORIGIN_PORT" \
  --data-dir "$WORK/proxy-data" $PROXY_FLAGS
start_proc proxy_nolog "$BIN" serve --port "$PROXY_NOLOG_PORT" --upstream "http://127.0.0.1:$ORIGIN_PORT" \
  --data-dir "$WORK/proxy-nolog-data" $PROXY_NOLOG_FLAGS
wait_http nginx "http://127.0.0.1:$NGINX_PORT/_ready"
wait_http varnish "http://127.0.0.1:$VARNISH_PORT/_ready"
wait_http haproxy "http://127.0.0.1:$HAPROXY_PORT/_ready"
wait_http proxy "http://127.0.0.1:$PROXY_PORT/_proxy/health"
wait_http proxy_nolog "http://127.0.0.1:$PROXY_NOLOG_PORT/_proxy/health"
if [ -n "${BASELINE_BIN:-}" ]; then
  start_proc proxy_base "$BASELINE_BIN" serve --port "$BASE_PORT" --upstream "http://127.0.0.1:$ORIGIN_PORT" \
    --data-dir "$WORK/proxy-base-data" $BASELINE_FLAGS
  wait_http proxy_base "http://127.0.0.1:$BASE_PORT/_proxy/health"
  note_children proxy_base
fi
note_children nginx
note_children varnish
note_children haproxy
note_children proxy
note_children proxy_nolog

origin_count() { wc -l <"$O/$1.log" | tr -d ' '; }

# The two pairs: as shipped (request logs on), then logs off (with Varnish and the static file).
# HAProxy logs nothing as shipped, so it is in both tables: one server, measured once per round.
SHIPPED_KEYS=(proxy nginx haproxy)
NOLOG_KEYS=(proxy_nolog nginx_nolog varnish haproxy static)
[ -n "${BASELINE_BIN:-}" ] && NOLOG_KEYS=(proxy_nolog proxy_base nginx_nolog varnish haproxy static)
# The servers the rounds measure, in round order: both tables' rows, each once.
KEYS=()
for key in "${SHIPPED_KEYS[@]}" "${NOLOG_KEYS[@]}"; do
  [[ " ${KEYS[*]} " == *" $key "* ]] || KEYS+=("$key")
done
CACHE_KEYS=(proxy nginx proxy_nolog nginx_nolog varnish haproxy)
[ -n "${BASELINE_BIN:-}" ] && CACHE_KEYS+=(proxy_base)
declare -A LABEL=([proxy]="mixpeek-proxy" [nginx]="nginx proxy_cache" [proxy_nolog]="mixpeek-proxy, request log off"
  [nginx_nolog]="nginx proxy_cache, access log off" [varnish]="Varnish" [haproxy]="HAProxy cache"
  [static]="nginx static file (origin; reference)")
declare -A CONFIG=(
  [proxy]="\`serve $PROXY_FLAGS\`: request log on (default), stderr redirected to a file"
  [nginx]="1 worker, \`access_log\` to a file (default: combined, unbuffered)"
  [proxy_nolog]="\`serve $PROXY_NOLOG_FLAGS\`"
  [nginx_nolog]="1 worker, \`access_log off\`"
  [varnish]="\`-s malloc,64m\`, no log file (varnishlog not running)"
  [haproxy]="\`nbthread 1\`, cache 64 MB; the credential's SHA-256 in the key (a query argument), \`Authorization\` dropped, the origin's answer given \`max-age=3600\`; no \`log\` (its default: logs nothing)"
  [static]="1 worker, \`access_log off\`"
  [proxy_base]="\`serve $BASELINE_FLAGS\`")
LABEL[proxy_base]="mixpeek-proxy ${BASELINE_REV:-baseline}"
# Each table's ratios are to the nginx of its pair (hit_rows' first argument).
declare -A URL=(
  [proxy]="http://127.0.0.1:$PROXY_PORT$LIST_PATH" [nginx]="http://127.0.0.1:$NGINX_PORT$LIST_PATH"
  [proxy_nolog]="http://127.0.0.1:$PROXY_NOLOG_PORT$LIST_PATH" [nginx_nolog]="http://127.0.0.1:$NGINX_NOLOG_PORT$LIST_PATH"
  [varnish]="http://127.0.0.1:$VARNISH_PORT$LIST_PATH" [haproxy]="http://127.0.0.1:$HAPROXY_PORT$LIST_PATH"
  [static]="http://127.0.0.1:$STATIC_PORT$LIST_PATH"
  [proxy_base]="http://127.0.0.1:${BASE_PORT:-0}$LIST_PATH")
declare -A PROC=([proxy]=proxy [nginx]=nginx [proxy_nolog]=proxy_nolog [nginx_nolog]=nginx [varnish]=varnish [haproxy]=haproxy
  [static]=origin [proxy_base]=proxy_base)

# Which cache result a response's headers show: MISS, HIT or something else.
cache_result() { # KEY HEADERS
  local key="$1" headers="$2" v
  case "$key" in
    proxy|proxy_nolog|proxy_base) header x-cache <<<"$headers" ;;
    nginx|nginx_nolog|haproxy) header x-cache-status <<<"$headers" ;;
    varnish)
      v="$(header x-varnish <<<"$headers")"
      case "$(wc -w <<<"$v" | tr -d ' ')" in 1) echo MISS ;; 2) echo HIT ;; *) echo "x-varnish=$v" ;; esac ;;
  esac
}

# check_hits KEY: first request MISS (one origin call), second HIT, then more hits with no
# origin call; bodies equal to the origin's file.
check_hits() {
  local key="$1" url="${URL[$1]}" before after h1 h2 r1 r2 codes extra=20
  before="$(origin_count list)"
  h1="$(get_headers "$url" "$WORK/body.$key.1")"
  after="$(origin_count list)"
  h2="$(get_headers "$url" "$WORK/body.$key.2")"
  r1="$(cache_result "$key" "$h1")"
  r2="$(cache_result "$key" "$h2")"
  [ "$(status_of <<<"$h1")" = 200 ] && [ "$(status_of <<<"$h2")" = 200 ] \
    || { fail_later "${LABEL[$key]}: list answered $(status_of <<<"$h1") then $(status_of <<<"$h2"), not 200"; return 1; }
  [ "$r1" = MISS ] && [ "$r2" = HIT ] \
    || { fail_later "${LABEL[$key]}: expected MISS then HIT, got '$r1' then '$r2'"; return 1; }
  [ "$after" -eq $((before + 1)) ] \
    || { fail_later "${LABEL[$key]}: the MISS made $((after - before)) origin calls, not 1"; return 1; }
  cmp -s "$BODY" "$WORK/body.$key.1" && cmp -s "$BODY" "$WORK/body.$key.2" \
    || { fail_later "${LABEL[$key]}: body differs from the origin's"; return 1; }
  local args=()
  for ((i = 0; i < extra; i++)); do args+=(-o /dev/null "$url"); done
  codes="$(curl -s --max-time 20 -w '%{http_code} ' -H "Authorization: Bearer $TOKEN" "${args[@]}")"
  [ "$codes" = "$(printf '200 %.0s' $(seq 1 "$extra"))" ] || { fail_later "${LABEL[$key]}: hits answered $codes"; return 1; }
  [ "$(origin_count list)" -eq "$after" ] \
    || { fail_later "${LABEL[$key]}: origin called $(( $(origin_count list) - after )) times during $extra hits"; return 1; }
  log "${LABEL[$key]}: MISS then HIT ($( [ "$key" = varnish ] && echo "X-Varnish: $(header x-varnish <<<"$h2"), Age: $(header age <<<"$h2")" || echo "$r1 → $r2")), no origin call in $extra more hits"
}
for key in "${CACHE_KEYS[@]}"; do
  check_hits "$key" || true
done
[ ${#FAILURES[@]} -eq 0 ] || die "a cache failed its MISS-then-HIT check: ${FAILURES[*]}"

# ---------------------------------------------------------------------------------------
# Cache hits: interleaved wrk rounds.

declare -A R_RPS=() R_P50=() R_P99=() R_CPU=() R_ORIGIN=() R_ERR=()
if [ "$WARMUP" -gt 0 ]; then
  log "warm-up: ${WARMUP}s per server"
  for key in "${KEYS[@]}"; do run_wrk "$WORK/logs/warmup.$key" "${URL[$key]}" "$HIT_CONNECTIONS" "$WARMUP"; done
fi
log "cache hits: $ROUNDS round(s) x ${DURATION}s per server, wrk -t2 -c$HIT_CONNECTIONS, order ${KEYS[*]}"
for ((round = 1; round <= ROUNDS; round++)); do
  for key in "${KEYS[@]}"; do
    pids="$(server_pids "${PROC[$key]}")"
    c0="$(cpu_ticks $pids)"
    o0="$(origin_count list)"
    run_wrk "$WORK/logs/hits.$key.$round" "${URL[$key]}" "$HIT_CONNECTIONS" "$DURATION"
    c1="$(cpu_ticks $pids)"
    o1="$(origin_count list)"
    cpu="$(calc "($c1 - $c0) * 1000000 / $CLK_TCK / ${B[requests]}")"
    R_RPS[$key]+="${B[rps]} "
    R_P50[$key]+="${B[p50_us]} "
    R_P99[$key]+="${B[p99_us]} "
    R_CPU[$key]+="$cpu "
    R_ORIGIN[$key]=$(( ${R_ORIGIN[$key]:-0} + o1 - o0 ))
    R_ERR[$key]=$(( ${R_ERR[$key]:-0} + B[errors] ))
    log "round $round ${LABEL[$key]}: $(fmt '%.0f' "${B[rps]}") req/s, p50 ${B[p50_us]} µs, p99 ${B[p99_us]} µs, $(fmt '%.2f' "$cpu") CPU µs/req, origin calls $((o1 - o0)), errors ${B[errors]}"
  done
done
declare -A RSS_AFTER=()
for key in "${KEYS[@]}"; do RSS_AFTER[$key]="$(rss_kb $(server_pids "${PROC[$key]}"))"; done
for key in "${CACHE_KEYS[@]}"; do
  [ "${R_ORIGIN[$key]}" -eq 0 ] || fail_later "${LABEL[$key]}: ${R_ORIGIN[$key]} origin calls during its hit rounds"
done
for key in "${KEYS[@]}"; do
  [ "${R_ERR[$key]}" -eq 0 ] || fail_later "${LABEL[$key]}: ${R_ERR[$key]} errors (socket errors, timeouts or non-2xx) during its hit rounds"
done

declare -A M_RPS=() M_P50=() M_P99=() M_CPU=()
for key in "${KEYS[@]}"; do
  M_RPS[$key]="$(median ${R_RPS[$key]})"
  M_P50[$key]="$(median ${R_P50[$key]})"
  M_P99[$key]="$(median ${R_P99[$key]})"
  M_CPU[$key]="$(median ${R_CPU[$key]})"
done

# The log-off proxy is done; with --hits-only, so is the other one. Their request logs are counted.
# HAProxy serves only the hit rounds: stopped now.
request_log_check proxy_nolog "$PROXY_NOLOG_PORT"
stop_proc haproxy
[ "$HITS_ONLY" = 1 ] && request_log_check proxy "$PROXY_PORT"

if [ "$HITS_ONLY" = 0 ]; then
# ---------------------------------------------------------------------------------------
# Miss path: the origin answers no-store, so every list call is forwarded.

MISS_KEYS=(direct proxy nginx varnish)
declare -A MISS_LABEL=([direct]="origin directly" [proxy]="through mixpeek-proxy" [nginx]="through nginx proxy_cache" [varnish]="through Varnish")
declare -A MISS_URL=(
  [direct]="http://127.0.0.1:$ORIGIN_PORT$NOSTORE_PATH" [proxy]="http://127.0.0.1:$PROXY_PORT$NOSTORE_PATH"
  [nginx]="http://127.0.0.1:$NGINX_PORT$NOSTORE_PATH" [varnish]="http://127.0.0.1:$VARNISH_PORT$NOSTORE_PATH")
for key in proxy nginx varnish; do
  before="$(origin_count nostore)"
  h1="$(get_headers "${MISS_URL[$key]}" /dev/null)"
  h2="$(get_headers "${MISS_URL[$key]}" /dev/null)"
  calls=$(( $(origin_count nostore) - before ))
  [ "$(status_of <<<"$h1")" = 200 ] && [ "$(status_of <<<"$h2")" = 200 ] && [ "$calls" -eq 2 ] \
    || fail_later "miss path ${MISS_LABEL[$key]}: two no-store lists made $calls origin calls (statuses $(status_of <<<"$h1") $(status_of <<<"$h2"))"
  if [ "$key" = proxy ] && [ "$(header x-cache <<<"$h2")" != MISS ]; then
    fail_later "miss path: mixpeek-proxy answered X-Cache $(header x-cache <<<"$h2") for a no-store list"
  fi
done
log "miss path: $MISS_ROUNDS round(s) x ${MISS_DURATION}s, wrk -t2 -c$MISS_CONNECTIONS, order ${MISS_KEYS[*]}"
declare -A MR_RPS=() MR_P50=() MR_P99=() MR_CALLS=() MR_REQS=() MR_ERR=() MR_CPU=()
declare -A MISS_PROC=([direct]=origin [proxy]=proxy [nginx]=nginx [varnish]=varnish)
for ((round = 1; round <= MISS_ROUNDS; round++)); do
  for key in "${MISS_KEYS[@]}"; do
    o0="$(origin_count nostore)"
    pids="$(server_pids "${MISS_PROC[$key]}")"
    c0="$(cpu_ticks $pids)"
    run_wrk "$WORK/logs/miss.$key.$round" "${MISS_URL[$key]}" "$MISS_CONNECTIONS" "$MISS_DURATION" BENCH_MODE=unique
    o1="$(origin_count nostore)"
    c1="$(cpu_ticks $pids)"
    MR_CPU[$key]+="$(calc "($c1 - $c0) * 1000000 / $CLK_TCK / ${B[requests]}") "
    MR_RPS[$key]+="${B[rps]} "
    MR_P50[$key]+="${B[p50_us]} "
    MR_P99[$key]+="${B[p99_us]} "
    MR_CALLS[$key]=$(( ${MR_CALLS[$key]:-0} + o1 - o0 ))
    MR_REQS[$key]=$(( ${MR_REQS[$key]:-0} + B[requests] ))
    MR_ERR[$key]=$(( ${MR_ERR[$key]:-0} + B[errors] ))
    log "miss round $round ${MISS_LABEL[$key]}: $(fmt '%.0f' "${B[rps]}") req/s, p50 ${B[p50_us]} µs, p99 ${B[p99_us]} µs, origin calls $((o1 - o0)) for ${B[requests]} requests"
  done
done
for key in "${MISS_KEYS[@]}"; do
  [ "${MR_ERR[$key]}" -eq 0 ] || fail_later "miss path ${MISS_LABEL[$key]}: ${MR_ERR[$key]} errors"
done
declare -A MM_RPS=() MM_P50=() MM_P99=() MM_CPU=()
for key in "${MISS_KEYS[@]}"; do
  MM_RPS[$key]="$(median ${MR_RPS[$key]})"
  MM_P50[$key]="$(median ${MR_P50[$key]})"
  MM_P99[$key]="$(median ${MR_P99[$key]})"
  MM_CPU[$key]="$(median ${MR_CPU[$key]})"
done

# The hit-path servers are done: stop them so the next figures run on a quiet machine.
request_log_check proxy "$PROXY_PORT"
for name in varnish nginx; do stop_proc "$name"; done

# ---------------------------------------------------------------------------------------
# The request log under sustained load (full run): mixpeek-proxy with its default flags (but the
# TTL), as many hits as it serves for LOG_SECONDS, then SIGTERM: every request has its line.

if [ "$LOG_SECONDS" -gt 0 ]; then
  start_proc logcount "$BIN" serve --port "$LOGCOUNT_PORT" --upstream "http://127.0.0.1:$ORIGIN_PORT" \
    --data-dir "$WORK/logcount-data" $PROXY_FLAGS
  wait_http logcount "http://127.0.0.1:$LOGCOUNT_PORT/_proxy/health"
  get_headers "http://127.0.0.1:$LOGCOUNT_PORT$LIST_PATH" /dev/null >/dev/null
  log "request log under load: wrk -t2 -c$HIT_CONNECTIONS -d${LOG_SECONDS}s against mixpeek-proxy with default flags"
  run_wrk "$WORK/logs/logcount" "http://127.0.0.1:$LOGCOUNT_PORT$LIST_PATH" "$HIT_CONNECTIONS" "$LOG_SECONDS"
  LOGCOUNT_RPS="${B[rps]}"; LOGCOUNT_WRK="${B[requests]}"
  [ "${B[errors]}" -eq 0 ] || fail_later "request log under load: ${B[errors]} wrk errors"
  request_log_check logcount "$LOGCOUNT_PORT"
  [ "${LOG_LINES[logcount]}" -ge "$LOGCOUNT_WRK" ] \
    || fail_later "request log under load: ${LOG_LINES[logcount]} lines for $LOGCOUNT_WRK responses wrk received"
fi

# ---------------------------------------------------------------------------------------
# Durable audited mutations through the proxy in front of the fake upstream: creates with
# unique names (the fake's work per create grows with the keys it holds, so its CPU is shown),
# then PATCHes of keys that do not exist (404 upstream, audited as `rejected`; constant work
# upstream). Then a durability probe: a few sequential creates with the proxy under strace,
# counting fsync/fdatasync calls (each sequential mutation must sync its intent and outcome).

MUT_DATA="$WORK/mutation-data"
start_proc fake "$BIN" fake-upstream --port "$FAKE_PORT"
start_proc mutproxy "$BIN" serve --port "$MUT_PORT" --upstream "http://127.0.0.1:$FAKE_PORT" \
  --data-dir "$MUT_DATA"
wait_http mutproxy "http://127.0.0.1:$MUT_PORT/_proxy/health"
for ((i = 0; i < STARTUP_SECONDS * 20; i++)); do
  (exec 3<>"/dev/tcp/127.0.0.1/$FAKE_PORT") 2>/dev/null && break
  kill -0 "${PID[fake]}" 2>/dev/null || die "fake-upstream failed to start: $(tail -n 5 "$WORK/logs/fake.err")"
  nap 0.05
done
# create_once NAME: one create through the proxy, prints the status.
create_once() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' -d "{\"name\":\"$1\"}" "http://127.0.0.1:$MUT_PORT$MUT_PATH"
}
code="$(create_once k-check)"
[ "$code" = 200 ] || die "a create through the proxy answered $code, not 200"
MUT_KINDS=(create update)
declare -A MUT_LABEL=([create]="POST create (unique names)" [update]="PATCH of a missing key (404, audited as rejected)")
declare -A MUT_RPS=() MUT_P50=() MUT_P99=() MUT_OK=() MUT_BAD=() MUT_CPU=() MUT_FAKE_CPU=()
for kind in "${MUT_KINDS[@]}"; do
  log "mutations: ${MUT_LABEL[$kind]}, wrk -t2 -c$MUT_CONNECTIONS -d${MUT_DURATION}s"
  pids="$(server_pids mutproxy)"
  c0="$(cpu_ticks $pids)"
  f0="$(cpu_ticks "${PID[fake]}")"
  run_wrk "$WORK/logs/mutations.$kind" "http://127.0.0.1:$MUT_PORT$MUT_PATH" "$MUT_CONNECTIONS" "$MUT_DURATION" \
    BENCH_MODE="$kind" BENCH_PATH="$MUT_PATH"
  c1="$(cpu_ticks $pids)"
  f1="$(cpu_ticks "${PID[fake]}")"
  MUT_RPS[$kind]="${B[rps]}"; MUT_P50[$kind]="${B[p50_us]}"; MUT_P99[$kind]="${B[p99_us]}"
  MUT_OK[$kind]="${B[ok]}"; MUT_BAD[$kind]=$((B[bad] + B[connect] + B[read] + B[write] + B[timeout]))
  MUT_CPU[$kind]="$(calc "($c1 - $c0) * 1000000 / $CLK_TCK / ${B[requests]}")"
  MUT_FAKE_CPU[$kind]="$(calc "($f1 - $f0) * 1000000 / $CLK_TCK / ${B[requests]}")"
  [ "${MUT_BAD[$kind]}" -eq 0 ] || fail_later "mutations (${MUT_LABEL[$kind]}): ${MUT_BAD[$kind]} unexpected answers or wrk errors"
  log "mutations ${MUT_LABEL[$kind]}: $(fmt '%.0f' "${MUT_RPS[$kind]}")/s, p50 ${B[p50_us]} µs, proxy $(fmt '%.0f' "${MUT_CPU[$kind]}") CPU µs each, fake $(fmt '%.0f' "${MUT_FAKE_CPU[$kind]}")"
done

PROBE_MUTATIONS=20
SYNCS_PER_MUTATION="n/a (no strace)"
if command -v strace >/dev/null; then
  strace -f -qq -e trace=fsync,fdatasync -o "$WORK/logs/durability.strace" -p "${PID[mutproxy]}" 2>"$WORK/logs/strace.err" &
  STRACE_PID=$!
  PID[strace]=$STRACE_PID
  STARTED+=(strace)
  nap 0.5
  attached=0
  kill -0 "$STRACE_PID" 2>/dev/null && attached=1
  for ((i = 1; i <= PROBE_MUTATIONS; i++)); do
    code="$(create_once "durability-probe-$i")"
    [ "$code" = 200 ] || fail_later "durability probe: a create answered $code"
  done
  nap 0.2
  kill -0 "$STRACE_PID" 2>/dev/null || attached=0
  kill -INT "$STRACE_PID" 2>/dev/null || true
  stop_proc strace
  if [ "$attached" = 1 ] && ! grep -q -i -E 'not permitted|attach' "$WORK/logs/strace.err"; then
    syncs="$(grep -c -E '(fsync|fdatasync)\(' "$WORK/logs/durability.strace" || true)"
    SYNCS_PER_MUTATION="$(fmt '%.1f' "$(calc "$syncs / $PROBE_MUTATIONS")")"
    log "durability probe: $syncs fsync/fdatasync calls for $PROBE_MUTATIONS sequential creates"
  else
    SYNCS_PER_MUTATION="n/a (strace could not attach)"
    log "durability probe skipped: strace could not attach ($(head -c 200 "$WORK/logs/strace.err"))"
  fi
fi
stop_proc mutproxy
stop_proc fake
if "$BIN" audit verify --data-dir "$MUT_DATA" >"$WORK/logs/audit-verify.out" 2>&1; then
  AUDIT_VERIFY="passes"
else
  AUDIT_VERIFY="FAILS"
  cat "$WORK/logs/audit-verify.out" >&2
  fail_later "audit verify failed after the mutation runs"
fi
AUDIT_MUTATIONS="$("$BIN" audit query --data-dir "$MUT_DATA" --format jsonl 2>/dev/null | wc -l | tr -d ' ')"
ANSWERED=$((1 + ${MUT_OK[create]} + ${MUT_OK[update]} + PROBE_MUTATIONS))
log "mutations: audit verify $AUDIT_VERIFY, $AUDIT_MUTATIONS mutations in the log for $ANSWERED answered"

# ---------------------------------------------------------------------------------------
# Start-to-healthy and RSS with many cached entries on disk.

BIG_DATA="$WORK/big-data"
BIG_MAX_BYTES=$((ENTRIES * (BODY_BYTES + 1024) + 67108864))
big_args=(serve --port "$BIG_PORT" --upstream "http://127.0.0.1:$ORIGIN_PORT" --data-dir "$BIG_DATA"
  --cache-ttl 3600 --credential-recheck 3600 --cache-max-bytes "$BIG_MAX_BYTES")
# time_to_healthy NAME VAR: starts the big-cache proxy, sets VAR to the milliseconds from exec
# to the first 200 on /_proxy/health (polled every 2 ms, bounded).
time_to_healthy() {
  local name="$1" var="$2" t0 t1 i
  t0="$EPOCHREALTIME"
  start_proc "$name" "$BIN" "${big_args[@]}"
  for ((i = 0; i < STARTUP_SECONDS * 500; i++)); do
    health_ok "$BIG_PORT" && break
    kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited during start-up: $(tail -n 5 "$WORK/logs/$name.err")"
    nap 0.002
  done
  t1="$EPOCHREALTIME"
  health_ok "$BIG_PORT" || die "$name not healthy within ${STARTUP_SECONDS}s"
  printf -v "$var" '%s' "$(calc "(${t1/./} - ${t0/./}) / 1000")"
}
time_to_healthy bigfirst START_EMPTY_MS
RSS_EMPTY_KB="$(rss_kb "${PID[bigfirst]}")"
stop_proc bigfirst
DB="$BIG_DATA/cache.sqlite"
SCHEMA="$(sqlite3 "$DB" .schema)"
COLUMNS="$(sqlite3 "$DB" 'SELECT group_concat(name, ",") FROM pragma_table_info("cache_entries")')"
[ "$COLUMNS" = "credential,user_email,include_revoked,status,content_type,etag,last_modified,body,stored_at,user_fold,lifetime,may_serve_stale" ] \
  || die "cache_entries has columns $COLUMNS; update the pre-fill in scripts/bench.sh. Schema: $SCHEMA"
CREDENTIAL="$(printf '%s' "Bearer $TOKEN" | sha256sum | cut -d' ' -f1)"
log "pre-filling $DB with $ENTRIES entries of $BODY_BYTES bytes"
sqlite3 "$DB" <<SQL || die "pre-filling the cache file failed"
BEGIN;
CREATE TEMP TABLE bench_body AS SELECT readfile('$BODY') AS b;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $ENTRIES)
INSERT INTO cache_entries (credential, user_email, include_revoked, status, content_type, etag, last_modified, body, stored_at, user_fold)
SELECT '$CREDENTIAL', 'user' || i || '@example.com', 0, 200, 'application/json', NULL, NULL,
       (SELECT b FROM bench_body), $EPOCHREALTIME, 'user' || i || '@example.com'
FROM n;
COMMIT;
SQL
BIG_ROWS="$(sqlite3 "$DB" 'SELECT count(*) FROM cache_entries')"
[ "$BIG_ROWS" -eq "$ENTRIES" ] || die "cache file holds $BIG_ROWS entries, not $ENTRIES"
BIG_FILE_MB="$(calc "$(stat -c %s "$DB") / 1048576")"
time_to_healthy big START_FULL_MS
RSS_HEALTHY_KB="$(rss_kb "${PID[big]}")"
h="$(get_headers "http://127.0.0.1:$BIG_PORT/v1/organizations/users/user1@example.com/api-keys" "$WORK/body.big")"
[ "$(header x-cache <<<"$h")" = HIT ] && cmp -s "$BODY" "$WORK/body.big" \
  || fail_later "a pre-filled entry was not served as a HIT from disk (X-Cache $(header x-cache <<<"$h"))"
o0="$(origin_count list)"
run_wrk "$WORK/logs/users" "http://127.0.0.1:$BIG_PORT/" 16 "$USERS_DURATION" BENCH_MODE=users BENCH_USERS="$USERS"
USERS_REQS="${B[requests]}"; USERS_ERR="${B[errors]}"; USERS_RPS="${B[rps]}"
[ "$(origin_count list)" -eq "$o0" ] || fail_later "hits on pre-filled entries went to the origin"
[ "$USERS_ERR" -eq 0 ] || fail_later "hits on pre-filled entries: $USERS_ERR errors"
RSS_HITS_KB="$(rss_kb "${PID[big]}")"
HWM_KB="$(awk '/^VmHWM:/ {print $2}' "/proc/${PID[big]}/status")"
stop_proc big
log "$ENTRIES entries: start to healthy ${START_FULL_MS} ms (empty ${START_EMPTY_MS} ms), RSS $((RSS_HEALTHY_KB / 1024)) MB → $((RSS_HITS_KB / 1024)) MB after $USERS_REQS hits"
fi # HITS_ONLY

# ---------------------------------------------------------------------------------------
# Report (Markdown on stdout).

LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
ms() { fmt '%.3f' "$(calc "$1 / 1000")"; }
yes_no() { if [ "$(calc "($1) ? 1 : 0")" = 1 ]; then echo "yes"; else echo "**no**"; fi; }
# hit_rows REF KEY...: a Markdown table of the hit figures, ratios to REF (the table's nginx).
hit_rows() {
  local key ref="$1"
  shift
  echo
  echo "| server | configuration | req/s | req/s range | p50 ms | p99 ms | CPU µs/req | req/s ÷ nginx | CPU ÷ nginx | RSS MB |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for key in "$@"; do
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$key]}" "${CONFIG[$key]}" "$(fmt '%.0f' "${M_RPS[$key]}")" \
      "$(minmax ${R_RPS[$key]})" "$(ms "${M_P50[$key]}")" "$(ms "${M_P99[$key]}")" "$(fmt '%.1f' "${M_CPU[$key]}")" \
      "$(fmt '%.2f' "$(calc "${M_RPS[$key]} / ${M_RPS[$ref]}")")" "$(fmt '%.2f' "$(calc "${M_CPU[$key]} / ${M_CPU[$ref]}")")" \
      "$(fmt '%.1f' "$(calc "${RSS_AFTER[$key]} / 1024")")"
  done
}
log_count_text() { echo "${LOG_LINES[$1]} lines for ${LOG_COUNTED[$1]} requests, ${LOG_DROPPED[$1]:-?} dropped"; }
{
  echo
  echo "### mixpeek-proxy vs nginx proxy_cache vs Varnish vs HAProxy — $MODE run$([ "$PINNED" = 1 ] && echo ", pinned (servers on core 0, wrk on core 1)" || echo ", unpinned")"
  echo
  echo "Machine: $NPROC × $CPU_MODEL (nproc $NPROC), $MEM_GIB GiB, Linux $(uname -r); load average $LOAD_BEFORE before, $LOAD_AFTER after."
  echo "Command: \`$COMMAND_LINE\` — mixpeek-proxy $REVISION ($(basename "$(dirname "$BIN")") build), nginx $NGINX_VERSION, Varnish $VARNISH_VERSION, HAProxy $HAPROXY_VERSION, wrk $WRK_VERSION."
  echo "Body: $BODY_BYTES bytes of JSON (7 keys, APIKeyModel fields), \`Authorization: Bearer sk_bench_…\`."
  echo
  echo "**Cache hits** — wrk -t2 -c$HIT_CONNECTIONS, $ROUNDS interleaved round(s) × ${DURATION} s per server (all ${#KEYS[@]} servers interleaved), medians; CPU = server utime+stime per request; ratios to the nginx of the same table."
  echo
  echo "As shipped — request logs on, each as it comes by default (mixpeek-proxy's request log on stderr, redirected by the script to a file; nginx's access log to a file; HAProxy logs nothing by default, so its row is the same server and rounds as in the log-off table, here with the ratios to nginx with its access log on):"
  hit_rows nginx "${SHIPPED_KEYS[@]}"
  echo
  echo "Request logs off:"
  hit_rows nginx_nolog "${NOLOG_KEYS[@]}"
  echo
  echo "mixpeek-proxy's request log, counted after SIGTERM: $(log_count_text proxy) (as shipped, over every round above$([ "$HITS_ONLY" = 0 ] && echo " and the miss path")); $(log_count_text proxy_nolog) with \`--access-log off\`."
  if [ -n "${LOG_LINES[logcount]:-}" ]; then
    echo "Under sustained load (\`serve $PROXY_FLAGS\`, wrk -t2 -c$HIT_CONNECTIONS -d${LOG_SECONDS}s, $(fmt '%.0f' "$LOGCOUNT_RPS") req/s): $(log_count_text logcount); wrk received $LOGCOUNT_WRK responses."
  fi
  echo
  echo "**Targets (issue 11)**"
  echo
  echo "| target | measured | met |"
  echo "|---|---|---|"
  echo "| as shipped: hits req/s ≥ 1.1 × nginx (access log on) | $(fmt '%.2f' "$(calc "${M_RPS[proxy]} / ${M_RPS[nginx]}")") × | $(yes_no "${M_RPS[proxy]} >= 1.1 * ${M_RPS[nginx]}") |"
  echo "| as shipped: hits p99 ≤ nginx's | $(ms "${M_P99[proxy]}") ms vs $(ms "${M_P99[nginx]}") ms | $(yes_no "${M_P99[proxy]} <= ${M_P99[nginx]}") |"
  echo "| as shipped: CPU µs per hit ≤ nginx's | $(fmt '%.1f' "${M_CPU[proxy]}") vs $(fmt '%.1f' "${M_CPU[nginx]}") | $(yes_no "${M_CPU[proxy]} <= ${M_CPU[nginx]}") |"
  echo "| logs off: hits req/s ≥ 1.2 × nginx (access_log off) | $(fmt '%.2f' "$(calc "${M_RPS[proxy_nolog]} / ${M_RPS[nginx_nolog]}")") × | $(yes_no "${M_RPS[proxy_nolog]} >= 1.2 * ${M_RPS[nginx_nolog]}") |"
  echo "| request log: one line per request, none dropped, at SIGTERM | $(log_count_text proxy) | $(yes_no "${LOG_LINES[proxy]} == ${LOG_COUNTED[proxy]} && ${LOG_DROPPED[proxy]:-1} == 0") |"
  if [ -n "${LOG_LINES[logcount]:-}" ]; then
    echo "| request log: no line lost at ≥ 50k req/s for 60 s | $(fmt '%.0f' "$LOGCOUNT_RPS") req/s for ${LOG_SECONDS} s; $(log_count_text logcount) | $(yes_no "$LOGCOUNT_RPS >= 50000 && $LOG_SECONDS >= 60 && ${LOG_LINES[logcount]} == ${LOG_COUNTED[logcount]} && ${LOG_DROPPED[logcount]:-1} == 0") |"
  fi
  if [ "$HITS_ONLY" = 0 ]; then
  echo
  echo "**Miss path** — origin answers \`Cache-Control: no-store\`, a different user's list per request so every call is forwarded; wrk -t2 -c$MISS_CONNECTIONS, $MISS_ROUNDS interleaved round(s) × ${MISS_DURATION} s, medians; mixpeek-proxy and nginx as shipped (request logs on)."
  echo
  echo "| path | req/s | p50 ms | p99 ms | p50 added over direct, ms | CPU µs/req (the cache's; origin's for direct) | origin calls per request |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for key in "${MISS_KEYS[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${MISS_LABEL[$key]}" "$(fmt '%.0f' "${MM_RPS[$key]}")" "$(ms "${MM_P50[$key]}")" \
      "$(ms "${MM_P99[$key]}")" "$([ "$key" = direct ] && echo — || ms "$(calc "${MM_P50[$key]} - ${MM_P50[direct]}")")" \
      "$(fmt '%.1f' "${MM_CPU[$key]}")" "$(fmt '%.2f' "$(calc "${MR_CALLS[$key]} / ${MR_REQS[$key]}")")"
  done
  echo
  echo "**Durable audited mutations** — through mixpeek-proxy (\`serve\` with default flags: request log on, stderr to a file) to \`mixpeek-proxy fake-upstream\`, wrk -t2 -c$MUT_CONNECTIONS, ${MUT_DURATION} s each; data dir on $(df --output=fstype "$WORK" | tail -n 1). CPU = utime+stime per mutation."
  echo
  echo "| mutation | per second | p50 ms | p99 ms | proxy CPU µs | fake upstream CPU µs | answered as expected / other |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for kind in "${MUT_KINDS[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s | %s / %s |\n' "${MUT_LABEL[$kind]}" "$(fmt '%.0f' "${MUT_RPS[$kind]}")" \
      "$(ms "${MUT_P50[$kind]}")" "$(ms "${MUT_P99[$kind]}")" "$(fmt '%.0f' "${MUT_CPU[$kind]}")" \
      "$(fmt '%.0f' "${MUT_FAKE_CPU[$kind]}")" "${MUT_OK[$kind]}" "${MUT_BAD[$kind]}"
  done
  echo
  echo "\`audit verify\` after the runs: **$AUDIT_VERIFY**; $AUDIT_MUTATIONS mutations in the log for $ANSWERED answered (the rest were in flight when wrk stopped). Durability probe: **$SYNCS_PER_MUTATION fsync/fdatasync calls per sequential create** (strace; a durable intent and outcome need at least 1 each, so < 2 means records reach the disk later than the response claims)."
  echo
  echo "**$ENTRIES cached entries on disk** — cache.sqlite $(fmt '%.0f' "$BIG_FILE_MB") MB ($ENTRIES × $BODY_BYTES-byte lists, \`serve --cache-ttl 3600 --cache-max-bytes $BIG_MAX_BYTES\` so they fit the bound); page cache warm."
  echo
  echo "| start → healthy, empty data dir | start → healthy, $ENTRIES entries | RSS at healthy | RSS after $USERS_REQS hits over $USERS users | peak RSS (VmHWM) |"
  echo "|---:|---:|---:|---:|---:|"
  printf '| %s ms | %s ms | %s MB | %s MB | %s MB |\n' "$(fmt '%.0f' "$START_EMPTY_MS")" "$(fmt '%.0f' "$START_FULL_MS")" \
    "$(fmt '%.1f' "$(calc "$RSS_HEALTHY_KB / 1024")")" "$(fmt '%.1f' "$(calc "$RSS_HITS_KB / 1024")")" "$(fmt '%.1f' "$(calc "$HWM_KB / 1024")")"
  echo
  echo "**Targets (issue 6; its hit targets are issue 11's above)**"
  echo
  echo "| target | measured | met |"
  echo "|---|---|---|"
  echo "| miss path: ≤ 0.5 ms added at p50 | $(ms "$(calc "${MM_P50[proxy]} - ${MM_P50[direct]}")") ms | $(yes_no "${MM_P50[proxy]} - ${MM_P50[direct]} <= 500") |"
  durable=0
  [[ "$SYNCS_PER_MUTATION" =~ ^[0-9.]+$ ]] && [ "$(calc "($SYNCS_PER_MUTATION >= 2) ? 1 : 0")" = 1 ] && durable=1
  echo "| ≥ 1,000 durably audited mutations/s | $(fmt '%.0f' "${MUT_RPS[create]}")/s creates, $(fmt '%.0f' "${MUT_RPS[update]}")/s PATCH→404; $SYNCS_PER_MUTATION syncs per sequential mutation | $(yes_no "${MUT_RPS[create]} >= 1000 && $durable") |"
  echo "| $ENTRIES entries: RSS ≤ 128 MB | $(fmt '%.1f' "$(calc "$HWM_KB / 1024")") MB peak | $(yes_no "$HWM_KB <= 131072") |"
  echo "| $ENTRIES entries: start → healthy ≤ 300 ms | $(fmt '%.0f' "$START_FULL_MS") ms | $(yes_no "$START_FULL_MS <= 300") |"
  fi # HITS_ONLY
  if [ "$MODE" = smoke ]; then
    echo
    echo "_Smoke run: 1 short round each; the numbers only show the script works._"
  fi
  if [ ${#FAILURES[@]} -gt 0 ]; then
    echo
    echo "**Check failures:**"
    for f in "${FAILURES[@]}"; do echo "- $f"; done
  fi
}

# A group of proxies on PostgreSQL (issue 13), after the rest of the run: hits through a
# member of a group of 3 vs a lone proxy, a mutation's added latency, durable mutations/s
# into one chain. scripts/group_bench.py starts its own PostgreSQL (scripts/postgres.sh).
if [ "$HITS_ONLY" = 0 ]; then
  log "a group of proxies on PostgreSQL (scripts/group_bench.py)"
  echo
  echo "### A group of proxies on PostgreSQL"
  echo
  if ! SMOKE="$([ "$MODE" = smoke ] && echo 1 || echo 0)" python3 scripts/group_bench.py "$BIN"; then
    fail_later "the group benchmark failed (scripts/group_bench.py)"
  fi
fi

if [ ${#FAILURES[@]} -gt 0 ]; then
  log "${#FAILURES[@]} check(s) failed"
  exit 1
fi
log "done"
