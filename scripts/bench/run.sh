#!/usr/bin/env bash
# make bench: every side-by-side benchmark in one run, on this machine.
# QUICK=1 gives one short run of each (a few minutes) for checking a change.
# Results go to scripts/bench/results/ (one Markdown file per suite); the
# figures in BENCHMARKS.md are copied from there with the commands used.
set -euo pipefail
cd "$(dirname "$0")"
export BIN=${BIN:-$(cd ../.. && pwd)/bin}
[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces)" >&2; exit 1; }
need=()
for t in iperf3 wrk nginx haproxy curl; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" iproute2 python3
fi
(cd ../.. && go build -o "$BIN/" ./internal/benchapps/...)
status=0
for suite in tunnel proxy ingress enclave; do
  [ -x "./$suite.sh" ] || continue
  echo "=== $suite ==="
  "./$suite.sh" || { echo "bench: $suite failed" >&2; status=1; }
done
echo "results: $(pwd)/results"
exit $status
