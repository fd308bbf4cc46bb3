#!/usr/bin/env bash
# make bench: every side-by-side benchmark in one run on this machine, then
# BENCHMARKS.md and the charts in docs/bench/ generated from the figures
# (scripts/bench/report). Raw records: docs/bench/results/bench-TIME.jsonl,
# Go micro-benchmarks: docs/bench/results/gobench-TIME.txt (benchstat input).
#
# QUICK=1 (make bench-quick): one short run of everything, a few minutes, to
# check a change; it writes only under scripts/bench/results/ (quick-TIME/,
# BENCHMARKS-quick.md, charts/), never BENCHMARKS.md or docs/bench.
#
# SUITES="tunnel userspace ingress proxy enclave" chooses suites; GOBENCH=0
# skips the micro-benchmarks; ESTIMATE_ONLY=1 prints the time estimate and stops. Each suite also runs on its own
# (scripts/bench/SUITE.sh). Needs root; load stays on 127.0.0.1 and in
# network namespaces this run creates.
set -euo pipefail
cd "$(dirname "$0")"
BENCH=$(pwd)
ROOT=$(cd ../.. && pwd)
export BIN=${BIN:-$ROOT/bin}
[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces)" >&2; exit 1; }
need=()
for t in iperf3 wrk nginx haproxy curl python3; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" iproute2
fi
(cd "$ROOT" && go build -o "$BIN/" ./internal/benchapps/...)
(cd "$ROOT/scripts" && go build -o "$BIN/benchreport" ./bench/report && go build -o "$BIN/loadsweep" ./load)

TS=$(date -u +%Y%m%dT%H%M%SZ)
SUITES=${SUITES:-"tunnel userspace ingress proxy enclave"}
GOBENCH=${GOBENCH:-1}
if [ -n "${QUICK:-}" ]; then
  MODE=quick
  RUNDIR=$BENCH/results/quick-$TS
  MD=$BENCH/results/BENCHMARKS-quick.md
  CHARTS=$BENCH/results/charts
  BENCHFLAGS=(-benchtime 100ms -count 1)
else
  MODE=full
  RUNDIR=$ROOT/docs/bench/results
  MD=$ROOT/BENCHMARKS.md
  CHARTS=$ROOT/docs/bench
  BENCHFLAGS=(-benchtime 200ms -count 3)
fi
mkdir -p "$RUNDIR" "$CHARTS"
export RAW=$RUNDIR/bench-$TS.jsonl STANDALONE=0 OUT=$RUNDIR
GOBENCH_OUT=$RUNDIR/gobench-$TS.txt
if [ "$MODE" = full ]; then
  export RUNS=${RUNS:-3} DUR=${DUR:-5} SWEEP_DUR=${SWEEP_DUR:-2} SWEEP_RUNS=${SWEEP_RUNS:-3}
  export SWEEP_STEPS=${SWEEP_STEPS:-1,10,50,100,250,500,1000,2000}
fi

# estimate: seconds for the selected suites (measurement time plus set-up).
estimate() {
  local r=${RUNS:-1} d=${DUR:-2} sd=${SWEEP_DUR:-1} steps=3 t=0 s
  [ "$MODE" = quick ] && r=1
  [ -n "${SWEEP_STEPS:-}" ] && steps=$(tr ',' '\n' <<<"$SWEEP_STEPS" | wc -l)
  local sw=$(( (steps * sd + steps / 3 + 2) * ${SWEEP_RUNS:-1} ))  # one target's sweeps
  for s in $SUITES; do
    case $s in
      tunnel)    t=$(( t + r * (24 * d + 12) + 4 * sw )) ;;
      userspace) t=$(( t + r * (10 * d + 10) )) ;;
      ingress)   t=$(( t + r * (12 * d + 40) + 4 * sw )) ;;
      proxy)     t=$(( t + 21 * (1 + (r * d)) + 7 * sw + 10 ))
                 # overload (proxy.sh): wrk peak search, 7 levels × 3 s × 2 rounds (quick: 2 s × 1),
                 # then loadgen, 8 runs × 3 s (quick: 2 s) per round, plus warm-ups and start-up
                 if [ "${OVERLOAD:-1}" = 1 ]; then
                   if [ "$MODE" = quick ]; then t=$(( t + 7 * 2 + 8 * r * 2 + 8 )); else t=$(( t + 7 * 3 * 2 + 8 * r * 3 + 12 )); fi
                 fi ;;
      enclave)   t=$(( t + r * (12 * d + 12) + 4 * sw + 10 )) ;;
    esac
  done
  if [ "$GOBENCH" = 1 ]; then
    if [ "$MODE" = quick ]; then t=$(( t + 60 )); else t=$(( t + 150 )); fi
  fi
  echo "$t"
}
est=$(estimate)
echo "bench: $MODE run of: $SUITES; estimated $((est / 60)) min $((est % 60)) s (full: RUNS=3 DUR=5s, sweeps 1..2000 × 2 s; quick: 1 run × 2 s, sweeps 10,100,1000 × 1 s)"
[ -n "${ESTIMATE_ONLY:-}" ] && exit 0
echo "bench: records in $RAW"
t0=$(date +%s)
"$BIN/benchreport" machine -phase start -mode "$MODE" >>"$RAW"

status=0
for suite in $SUITES; do
  echo "=== $suite ($(( $(date +%s) - t0 )) s in) ==="
  case $suite in
    userspace) CONNS=${USERSPACE_CONNS:-100} ./userspace.sh || { echo "bench: $suite failed" >&2; status=1; } ;;
    proxy) OVERLOAD=${OVERLOAD:-1} ./proxy.sh "$BENCH/results/proxy-$TS" || { echo "bench: $suite failed" >&2; status=1; } ;;
    *) "./$suite.sh" || { echo "bench: $suite failed" >&2; status=1; } ;;
  esac
done >&2

if [ "$GOBENCH" = 1 ]; then
  echo "=== Go micro-benchmarks ===" >&2
  (cd "$ROOT" && timeout 900 go test -run XXX -bench . "${BENCHFLAGS[@]}" -benchmem ./tap/ ./proxy/ ./internal/relay/ ./attestation/) \
    >"$GOBENCH_OUT" 2>&1 || { echo "bench: go test -bench failed: see $GOBENCH_OUT" >&2; status=1; }
fi
"$BIN/benchreport" machine -phase end -mode "$MODE" >>"$RAW"

args=(-o "$MD" -charts "$CHARTS" -history "$ROOT/docs/bench/*.md")
[ -f "$GOBENCH_OUT" ] && args+=(-gobench "$GOBENCH_OUT")
[ "$MODE" = quick ] && args+=(-quick -title "quench benchmarks (quick run: do not quote)")
"$BIN/benchreport" md "${args[@]}" "$RAW"
echo "bench: took $(( $(date +%s) - t0 )) s (estimated $est s); report $MD, charts in $CHARTS, records $RAW"
exit $status
