#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests, on loopback, in a directory of its own.
#
#   scripts/postgres.sh start DIR   initdb into DIR (when it holds no cluster yet), start the
#                                   server on 127.0.0.1 on a free port (the same port again when
#                                   DIR was started before), wait until it accepts connections,
#                                   print its superuser URL on stdout:
#                                   postgres://postgres@127.0.0.1:PORT/postgres
#   scripts/postgres.sh stop DIR    fast shutdown of the server whose PID is in DIR/postmaster.pid
#                                   (checked to be that directory's postmaster); no other server
#                                   is touched; waits until it has exited
#   scripts/postgres.sh url DIR     print the URL again
#   scripts/postgres.sh bindir      print the directory of the PostgreSQL binaries used
#
# DIR is the data directory and the Unix socket directory. As root the server runs as the
# `postgres` system user (Debian's package creates it) and DIR is given to that user, so every
# directory above DIR must be searchable by it (a directory from `mktemp -d` in /tmp is);
# otherwise it runs as you. Authentication: the superuser `postgres` is trusted on loopback and
# the socket; every other role logs in with its password (scram-sha-256). fsync stays on: tests
# measure durable mutations. The server's log is DIR/server.log.
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() {
  local dir
  if command -v pg_config >/dev/null 2>&1; then
    dir="$(pg_config --bindir 2>/dev/null || true)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return; fi
  fi
  # The newest version Debian installed.
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -n -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return; fi
  done
  die "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package (scripts/setup.sh does)"
}

# Runs a command as the user who owns the cluster: `postgres` when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

configured_port() {
  sed -n "s/^port = \([0-9]*\).*/\1/p" "$1/postgresql.conf" | tail -n 1
}

# The PID in DIR/postmaster.pid when that process is alive and is this directory's postmaster.
running_pid() {
  local dir="$1" pid piddir
  [ -f "$dir/postmaster.pid" ] || return 1
  pid="$(sed -n 1p "$dir/postmaster.pid" 2>/dev/null)"
  piddir="$(sed -n 2p "$dir/postmaster.pid" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$piddir" = "$dir" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # A reused PID is not ours: the process must be a postgres server.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -E '(^|/)(postgres|postmaster)( |$)' || return 1
  echo "$pid"
}

url() {
  local port
  port="$(configured_port "$1")"
  [ -n "$port" ] || die "$1 has no configured port: was it started with this script?"
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

init_cluster() {
  local dir="$1" bin="$2"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' user to run the server as (Debian's postgresql package creates it)"
    chown postgres:postgres "$dir"
    chmod 700 "$dir"
    runuser -u postgres -- test -w "$dir" \
      || die "the postgres user cannot reach $dir: every directory above it must be searchable (o+x)"
  else
    chmod 700 "$dir"
  fi
  local log
  log="$(mktemp)"
  as_owner "$bin/initdb" -D "$dir" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >"$log" 2>&1 \
    || { cat "$log" >&2; rm -f "$log"; die "initdb failed"; }
  rm -f "$log"
  # The superuser is trusted on loopback; every other role needs its password. The first
  # matching line wins, so these go before initdb's own lines.
  local hba="$dir/pg_hba.conf"
  {
    echo "# scripts/postgres.sh: test server"
    echo "local all all trust"
    echo "host all postgres 127.0.0.1/32 trust"
    echo "host all all 127.0.0.1/32 scram-sha-256"
  } >"$hba.new"
  cat "$hba" >>"$hba.new"
  mv "$hba.new" "$hba"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$hba"
  chmod 600 "$hba"
}

set_port() {
  local dir="$1" port="$2" conf="$1/postgresql.conf"
  # One block of settings at the end of the file: later lines win over initdb's defaults.
  sed -i '/^# scripts\/postgres.sh settings/,$d' "$conf"
  cat >>"$conf" <<EOF
# scripts/postgres.sh settings
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = on
synchronous_commit = on
max_connections = 200
logging_collector = off
log_connections = off
EOF
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$conf"
}

start() {
  local dir="$1" bin attempt port pid
  bin="$(bindir)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd -P)"
  if pid="$(running_pid "$dir")"; then
    url "$dir"
    return
  fi
  if [ ! -f "$dir/PG_VERSION" ]; then
    [ -z "$(ls -A "$dir")" ] || die "$dir is neither empty nor a PostgreSQL data directory"
    init_cluster "$dir" "$bin"
    port=""
  else
    port="$(configured_port "$dir")"
  fi
  # A fresh cluster gets a free port; if someone takes it before the server binds, another.
  for attempt in 1 2 3 4 5; do
    if [ -z "$port" ] || { [ "$attempt" -gt 1 ] && [ ! -f "$dir/.port-fixed" ]; }; then
      port="$(free_port)"
      set_port "$dir" "$port"
    fi
    if as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null 2>&1; then
      break
    fi
    if [ -f "$dir/.port-fixed" ] || [ "$attempt" -eq 5 ]; then
      tail -n 20 "$dir/server.log" >&2 || true
      die "the server in $dir did not start (log: $dir/server.log)"
    fi
  done
  # Restarts use the same port, so that clients' URL stays right.
  as_owner touch "$dir/.port-fixed"
  local deadline=$((SECONDS + 30))
  until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres -U postgres; do
    [ "$SECONDS" -lt "$deadline" ] || die "the server in $dir does not accept connections on 127.0.0.1:$port"
    sleep 0.1
  done
  url "$dir"
}

stop() {
  local dir pid deadline
  [ -d "$1" ] || die "no directory $1"
  dir="$(cd "$1" && pwd -P)"
  if ! pid="$(running_pid "$dir")"; then
    echo "postgres.sh: no server running in $dir" >&2
    return 0
  fi
  kill -INT "$pid"  # fast shutdown: roll back open transactions, disconnect, checkpoint
  deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "postgres.sh: $pid did not stop in 30 s; immediate shutdown" >&2
      kill -QUIT "$pid" 2>/dev/null || true
      sleep 2
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
}

case "${1:-}" in
  start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  url) [ $# -eq 2 ] || die "usage: $0 url DIR"; url "$(cd "$2" && pwd -P)" ;;
  bindir) bindir ;;
  *) die "usage: $0 start DIR | stop DIR | url DIR | bindir" ;;
esac
