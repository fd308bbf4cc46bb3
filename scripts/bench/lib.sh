#!/usr/bin/env bash
# Shared setup of the benchmark suites; source it, then call bench_init.
#
#   . "$(dirname "$0")/lib.sh"; bench_init tunnel
#
# The enclave is a network namespace ($NS) holding only a TAP device; a unix
# socket stands in for the VSOCK stream. Every process a suite starts is
# killed on exit; load goes only to 127.0.0.1 and into $NS.
#
# Environment every suite takes:
#   RUNS (3)      repetitions, figures are medians over them
#   DUR (5)       seconds per wrk / iperf3 run
#   QUICK=1       one short run (RUNS=1, DUR=2, short sweeps)
#   OUT           results directory (scripts/bench/results)
#   RAW           JSON-lines file to append to (default $OUT/SUITE-TIME.jsonl;
#                 run.sh sets one file for the whole run)
#   SWEEP=1       run the bombardier concurrency sweeps (scripts/load)
#   SWEEP_STEPS   concurrency steps (1,10,50,100,250,500,1000,2000; quick: 10,100,1000)
#   SWEEP_DUR     seconds per sweep step (2; quick: 1)
#   SWEEP_RUNS    runs that sweep (the report takes medians per step; make bench: 3, otherwise 1)
#   BIN           binaries (./bin)
#
# Records follow the quench-bench/v1 schema (scripts/bench/report).

# bench_init SUITE: settings, paths, the report tool, cleanup on exit.
bench_init() {
  SUITE=$1
  ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  BIN=${BIN:-$ROOT/bin}
  if [ -n "${QUICK:-}" ]; then
    RUNS=1; DUR=${DUR:-2}; SWEEP_STEPS=${SWEEP_STEPS:-10,100,1000}; SWEEP_DUR=${SWEEP_DUR:-1}
  fi
  RUNS=${RUNS:-3}
  DUR=${DUR:-5}
  SWEEP=${SWEEP:-1}
  SWEEP_STEPS=${SWEEP_STEPS:-1,10,50,100,250,500,1000,2000}
  SWEEP_DUR=${SWEEP_DUR:-2}
  OUT=${OUT:-$ROOT/scripts/bench/results}
  mkdir -p "$OUT"
  RAW=${RAW:-$OUT/$SUITE-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
  STANDALONE=${STANDALONE:-1}
  NS=quench-$SUITE-$$
  WORK=$(mktemp -d "/tmp/quench-bench-$SUITE.XXXXXX")
  PIDS=()
  GLOBAL_PIDS=()
  HZ=$(getconf CLK_TCK)
  RUN=0
  CFG=
  HOST_PID=
  ENCL_PID=
  trap bench_exit EXIT
  trap 'exit 130' INT TERM
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  REPORT=$BIN/benchreport
  (cd "$ROOT/scripts" && go build -o "$REPORT" ./bench/report && go build -o "$BIN/loadsweep" ./load) ||
    { echo "$SUITE: cannot build the report tool or scripts/load" >&2; exit 1; }
  if [ "$STANDALONE" = 1 ]; then
    "$REPORT" machine -phase start -mode "$([ -n "${QUICK:-}" ] && echo quick || echo full)" >>"$RAW"
  fi
  "$REPORT" invocation -suite "$SUITE" -cmd "$(bench_env_line) scripts/bench/$SUITE.sh" >>"$RAW"
}

# bench_env_line: the settings that shape the figures, as VAR=value words.
bench_env_line() {
  local v out=""
  for v in RUNS DUR QUICK CONFIGS CONNS SWEEP SWEEP_STEPS SWEEP_DUR SWEEP_RUNS NIDLE BULK KINDS REPS WORKERS OVERLOAD; do
    [ -n "${!v:-}" ] && out+="$v=\"${!v}\" "
  done
  echo "${out% }"
}

need_root() { [ "$(id -u)" = 0 ] || { echo "$SUITE: needs root (network namespaces, TAP)" >&2; exit 1; }; }

# need_tools TOOL...: Debian tools (apt-get install -y wrk iperf3 nginx haproxy).
need_tools() {
  local t
  for t in "$@"; do command -v "$t" >/dev/null || { echo "$SUITE: needs $t (apt-get install -y $t)" >&2; exit 1; }; done
}

# need_bins NAME...: binaries in $BIN; the bench apps are (re)built every
# time (Go's build cache makes that quick), so a suite run on its own never
# measures a stale one.
need_bins() {
  local b
  for b in "$@"; do
    case $b in
      hello|goproxy|bulkcmd|usenclave|loadgen)
        (cd "$ROOT" && go build -o "$BIN/" "./internal/benchapps/$b") || exit 1 ;;
    esac
    [ -x "$BIN/$b" ] || { echo "$SUITE: $BIN/$b missing: run 'make build tools'" >&2; exit 1; }
  done
}

# spawn CMD...: starts CMD for the current environment (killed by stop_env).
spawn() { "$@" & LAST_PID=$!; PIDS+=("$LAST_PID"); }
# spawn_global CMD...: starts CMD for the whole suite (killed on exit).
spawn_global() { "$@" & LAST_PID=$!; GLOBAL_PIDS+=("$LAST_PID"); }

kill_all() {
  local p
  for p in "$@"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "$@"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
}

# stop_env: stops the current environment's processes and namespace.
stop_env() {
  kill_all "${PIDS[@]:-}"
  PIDS=()
  ip netns del "$NS" 2>/dev/null || true
}

bench_exit() {
  local rc=$?
  stop_env
  kill_all "${GLOBAL_PIDS[@]:-}"
  wait 2>/dev/null || true
  rm -rf "$WORK"
  return $rc
}

# pick_port VAR DEFAULT: sets VAR to DEFAULT, or the next port above it that
# nothing listens on 127.0.0.1 and this suite has not picked (the machine is
# shared: other people's servers may hold the defaults).
PICKED=" "
pick_port() {
  local p=$2
  while ss -Hltn "sport = :$p" 2>/dev/null | grep -q . || [[ $PICKED == *" $p "* ]]; do p=$((p + 1)); done
  PICKED+="$p "
  printf -v "$1" '%s' "$p"
}

# env_failed: records that $CFG did not come up (listed under "Failed
# measurements" in the report) and stops its environment; the suite goes on.
env_failed() {
  echo "$SUITE: $CFG did not come up; skipped" >&2
  printf '{"suite":"%s","config":"%s","name":"setup","run":%d,"error":"did not come up"}\n' "$SUITE" "$CFG" "$RUN" >>"$RAW"
  stop_env
}

# wait_url URL [CURL-ARGS...]: waits up to 20 s for URL to answer.
wait_url() {
  local url=$1 i; shift
  for i in $(seq 1 200); do
    curl -sf -m 1 "$@" "$url" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$SUITE: $CFG: $url did not come up" >&2
  cat "$WORK"/*.log >&2 2>/dev/null || true
  return 1
}

wait_sock() { local i; for i in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "$SUITE: no socket $1" >&2; return 1; }

# ns_tap MTU: the enclave namespace with a TAP device as gvforwarder expects it.
ns_tap() {
  ip netns exec "$NS" ip tuntap add dev tap0 mode tap
  ip netns exec "$NS" ip link set tap0 address 5a:94:ef:e4:0c:ee mtu "$1" up
  ip netns exec "$NS" ip addr add 192.168.127.2/24 dev tap0
  ip netns exec "$NS" ip route add default via 192.168.127.1
  ip netns exec "$NS" ip link set lo up
}

# start_quench MTU [HOST-ARGS...] [-- ENCLAVE-ARGS...]: quench-host and
# quench-enclave (TAP mode) in $NS. Sets HOST_PID, ENCL_PID. QUENCH_VSOCK_DIR
# is passed through for -publish-vsock / -ingress.
start_quench() {
  local mtu=$1 sock=$WORK/host.sock; shift
  local host=() encl=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do host+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  encl=("$@")
  ip netns add "$NS"
  rm -f "$sock"
  spawn "$BIN/quench-host" -listen "unix://$sock" -mtu "$mtu" "${host[@]}" -log-level warn 2>"$WORK/host.log"
  HOST_PID=$LAST_PID
  wait_sock "$sock"
  spawn ip netns exec "$NS" "$BIN/quench-enclave" -host "unix://$sock" -mtu "$mtu" -resolv-conf - -log-level warn "${encl[@]}" 2>"$WORK/encl.log"
  ENCL_PID=$LAST_PID
}

# start_userspace MTU [HOST-ARGS...] [-- USENCLAVE-ARGS...]: quench-host and
# the enclave library's userspace stack in a process (usenclave serves :5201
# bulk and :8080 hello).
start_userspace() {
  local mtu=$1 sock=$WORK/host.sock; shift
  local host=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do host+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  ip netns add "$NS"
  rm -f "$sock"
  spawn "$BIN/quench-host" -listen "unix://$sock" -mtu "$mtu" "${host[@]}" -log-level warn 2>"$WORK/host.log"
  HOST_PID=$LAST_PID
  wait_sock "$sock"
  spawn "$BIN/usenclave" -host "$sock" -mtu "$mtu" "$@" 2>"$WORK/encl.log"
  ENCL_PID=$LAST_PID
}

# start_peer MTU LOCALPORT:ENCLAVEPORT...: stock gvproxy + gvforwarder with
# the given port forwards (gvproxy's expose API).
start_peer() {
  local mtu=$1 sock=$WORK/host.sock fw; shift
  ip netns add "$NS"
  rm -f "$sock"
  spawn "$BIN/gvproxy" -listen "unix://$sock" -mtu "$mtu" -ssh-port -1 2>"$WORK/host.log"
  HOST_PID=$LAST_PID
  wait_sock "$sock"
  for fw in "$@"; do
    curl -sf --unix-socket "$sock" http://gvproxy/services/forwarder/expose -X POST \
      -d "{\"local\":\"127.0.0.1:${fw%%:*}\",\"remote\":\"192.168.127.2:${fw##*:}\",\"protocol\":\"tcp\"}" >/dev/null
  done
  ns_tap "$mtu"
  spawn ip netns exec "$NS" "$BIN/gvforwarder" -url "unix://$sock" -iface tap0 -preexisting -mtu "$mtu" -stop-if-exist "" 2>"$WORK/encl.log"
  ENCL_PID=$LAST_PID
}

# build_nitriding_proxy: nitriding-daemon's reverse proxy (stdlib only:
# 1000 idle connections per host, a pool of 32 KiB buffers, TLS with a
# self-signed ECDSA P-256 certificate) into $WORK/nitriding-proxy.
build_nitriding_proxy() {
  mkdir -p "$WORK/np"
  cat >"$WORK/np/main.go" <<'GO'
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log"
	"math/big"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync"
	"time"
)

type pool struct{ p sync.Pool }

func (b *pool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *pool) Put(x []byte) { b.p.Put(&x) }

func main() {
	target, _ := url.Parse(os.Args[2])
	rp := httputil.NewSingleHostReverseProxy(target)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 1000, 1000
	rp.Transport = tr
	bp := &pool{}
	bp.p.New = func() any { b := make([]byte, 32<<10); return &b }
	rp.BufferPool = bp
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nitriding"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	srv := &http.Server{Addr: os.Args[1], Handler: rp, TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}}
	log.Fatal(srv.ListenAndServeTLS("", ""))
}
GO
  (cd "$WORK/np" && GOFLAGS= GO111MODULE=off go build -o "$WORK/nitriding-proxy" main.go)
}

# start_nitriding PORT APP-URL: nitriding's stack rebuilt from its parts:
# stock gvproxy + gvforwarder at MTU 1500 (as nitriding uses them),
# 127.0.0.1:PORT → the nitriding proxy on :443 in $NS → APP-URL. Sets PROXY_PID.
start_nitriding() {
  [ -x "$WORK/nitriding-proxy" ] || build_nitriding_proxy
  start_peer 1500 "$1:443"
  spawn ip netns exec "$NS" "$WORK/nitriding-proxy" :443 "$2" 2>"$WORK/proxy.log"
  PROXY_PID=$LAST_PID
}

# cpu_ticks "PID...": user+system clock ticks of the PIDs and their children.
cpu_ticks() {
  local t=0 p f q
  for q in ${1:-}; do
    for p in "$q" $(pgrep -P "$q" 2>/dev/null || true); do
      f=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null) || continue
      t=$((t + ${f% *} + ${f#* }))
    done
  done
  echo "$t"
}

# measure NAME C CMD...: runs CMD (wrk --latency, iperf3 -J or an
# iperf3-shaped JSON printer), appends one record for $CFG/$RUN with the CPU
# of $HOST_PID and $ENCL_PID (each may list several PIDs; children
# included), and prints it.
measure() {
  local name=$1 c=$2; shift 2
  local h0 e0 h1 e1 t0 t1 out
  h0=$(cpu_ticks "$HOST_PID"); e0=$(cpu_ticks "$ENCL_PID"); t0=$(date +%s.%N)
  out=$(timeout $((DUR * 3 + 60)) "$@" 2>&1 || true)
  h1=$(cpu_ticks "$HOST_PID"); e1=$(cpu_ticks "$ENCL_PID"); t1=$(date +%s.%N)
  "$REPORT" parse -suite "$SUITE" -config "$CFG" -name "$name" -c "$c" -run "$RUN" -cmd "$*" \
    -host "$h0,$h1" -encl "$e0,$e1" -wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" -hz "$HZ" <<<"$out" | tee -a "$RAW"
}

# wrk_points URL [C...]: measure http at each of $CONNS (or the given) levels.
# WRK_CLOSE=1 sends "Connection: close": a new connection for every request,
# recorded as http-close.
wrk_points() {
  local url=$1 c; shift
  local name=http close=()
  [ "${WRK_CLOSE:-0}" = 1 ] && { name=http-close; close=(-H "Connection: close"); }
  for c in ${*:-$CONNS}; do measure "$name" "$c" wrk -t2 -c"$c" -d"${DUR}s" --latency "${close[@]}" "$url"; done
}

# sweep [-insecure] NAME=URL...: a bombardier concurrency sweep with
# scripts/load, every target in turn, in the first run only; appended as
# sweep records.
sweep() {
  [ "$SWEEP" = 1 ] && [ "$RUN" -le "${SWEEP_RUNS:-1}" ] || return 0
  local args=() t
  if [ "${1:-}" = -insecure ]; then args+=(-insecure); shift; fi
  for t in "$@"; do args+=(-target "$t"); done
  local dir=$WORK/sweep-$RANDOM cmd
  cmd="loadsweep -tool bombardier -steps $SWEEP_STEPS -duration ${SWEEP_DUR}s -pause 300ms -max-time 10m ${args[*]}"
  echo "$SUITE: sweep ${*}" >&2
  timeout 700 "$BIN/loadsweep" -tool bombardier -bombardier "$BIN/bombardier" -steps "$SWEEP_STEPS" \
    -duration "${SWEEP_DUR}s" -pause 300ms -max-time 10m -out "$dir" -name sweep -write json "${args[@]}" >&2 || true
  [ -f "$dir/sweep.json" ] && "$REPORT" fromload -suite "$SUITE" -run "$RUN" -cmd "$cmd" "$dir/sweep.json" >>"$RAW"
  return 0
}

# suite_report: when run on its own, the suite's Markdown into $OUT/SUITE.md.
suite_report() {
  if [ "$STANDALONE" = 1 ]; then
    "$REPORT" machine -phase end >>"$RAW"
    "$REPORT" md -suite "$SUITE" -title "quench benchmarks: $SUITE" -history "$ROOT/docs/bench/*.md" \
      -o "$OUT/$SUITE.md" "$RAW" >/dev/null && cat "$OUT/$SUITE.md"
  fi
  echo "raw results: $RAW"
}
