#!/usr/bin/env bash
# The verifiable log's outside judge: builds scripts/tlog_judge with Go's own sumdb/tlog and
# sumdb/note (Debian's golang-go and golang-golang-x-mod-dev, offline) and checks that
# Tests/MixpeekLogTests/Fixtures/go-tlog-vectors.json is exactly what Go computes, so the Swift
# tests that read it hold our tree, proofs, tiles and signed notes against Go's.
#   bash scripts/log_vectors.sh           check (exit 1 when the file differs from Go's output)
#   bash scripts/log_vectors.sh --write   write the file anew
set -euo pipefail
cd "$(dirname "$0")/.."
fixture=Tests/MixpeekLogTests/Fixtures/go-tlog-vectors.json
judge=.build/tlog-judge
mkdir -p .build
GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="${GOCACHE:-$PWD/.build/go-cache}" go build -o "$judge" ./scripts/tlog_judge
if [ "${1:-}" = "--write" ]; then
  "$judge" vectors > "$fixture"
  echo "log vectors: wrote $fixture"
  exit 0
fi
if "$judge" vectors | cmp -s - "$fixture"; then
  echo "log vectors: $fixture is what Go's sumdb/tlog and sumdb/note compute (1 passed, 0 failed)"
else
  echo "log vectors: $fixture differs from Go's output (bash scripts/log_vectors.sh --write to see how)" >&2
  exit 1
fi
