#!/usr/bin/env bash
# make fuzz: runs every fuzz target of the root module briefly.
# FUZZTIME sets the time per target (default 10s); a failing input is saved
# under the package's testdata/fuzz/ by go test, and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-10s}
status=0
for pkg in $(go list ./...); do
  for f in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
    echo "=== $pkg $f ($FUZZTIME)"
    go test -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 5s "$pkg" || status=1
  done
done
exit $status
