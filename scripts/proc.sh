# Sourced by the check and benchmark scripts: stopping what they started.

# stop_pid PID WHAT: SIGTERM, a wait of at most STOP_SECONDS (default 10), then SIGKILL; reaps
# the process if it is the caller's child. Sleeps with the caller's `nap` if it has one (no fork).
stop_pid() {
  local pid="$1" what="$2" i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < ${STOP_SECONDS:-10} * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    if declare -F nap >/dev/null; then nap 0.05; else sleep 0.05; fi
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$what (pid $pid) did not stop within ${STOP_SECONDS:-10}s of SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
