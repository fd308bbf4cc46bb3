#!/usr/bin/env bash
# Tunnel benchmark: quench (quench-host + quench-enclave, TAP mode) against
# the peer (stock gvproxy + gvforwarder, gvisor-tap-vsock v0.8.9), at MTU 1500
# and 65520, in one run, side by side. A network namespace holding only a TAP
# device is the enclave; a unix socket is the VSOCK stream.
#
#   iperf3: host→enclave and enclave→host through a published port, and
#           egress from the enclave to the host's loopback (NAT, both ways);
#   wrk:    HTTP hello app in the enclave through a published port at
#           c = 10, 100, 1000, and the same app reached directly.
#
# Each figure is the median of RUNS runs of DUR seconds; CPU is the median
# cores used by the host daemon and the enclave-side forwarder.
#
# Configs are KIND:MTU with KIND quench (TAP mode), userspace (the enclave
# library's gVisor stack in a process: internal/benchapps/usenclave) or peer.
# BULK=bulk measures bulk throughput with internal/benchapps/bulkcmd instead
# of iperf3 (iperf3 cannot run inside a userspace stack), EGRESS=0 skips the
# egress measurements, NAME names the result files.
#
# Usage (root): scripts/bench/tunnel.sh   [env: RUNS=3 DUR=10 QUICK=1 OUT=dir CONFIGS="..." BULK=iperf3|bulk EGRESS=1 NAME=tunnel]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${BIN:-$ROOT/bin}
RUNS=${RUNS:-3}
DUR=${DUR:-10}
if [ -n "${QUICK:-}" ]; then RUNS=1; DUR=3; fi
CONFIGS=${CONFIGS:-"quench:65520 quench:1500 peer:65520 peer:1500"}
CONNS=${CONNS:-"10 100 1000"}
BULK=${BULK:-iperf3}
EGRESS=${EGRESS:-1}
NAME=${NAME:-tunnel}
OUT=${OUT:-$ROOT/scripts/bench/results}
mkdir -p "$OUT"
RAW="$OUT/$NAME-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
[ "$(id -u)" = 0 ] || { echo "tunnel.sh: needs root (network namespaces, TAP)" >&2; exit 1; }
for t in iperf3 wrk ip curl python3; do command -v $t >/dev/null || { echo "tunnel.sh: needs $t (apt-get install -y iperf3 wrk iproute2 curl python3)" >&2; exit 1; }; done
for b in quench-host quench-enclave gvproxy gvforwarder hello bulkcmd usenclave; do
  [ -x "$BIN/$b" ] || { echo "tunnel.sh: $BIN/$b missing: run 'make build tools' (hello: go build -o bin/ ./internal/benchapps/hello)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

NS=quench-bench-$$
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  PIDS=()
  ip netns del "$NS" 2>/dev/null || true
}
trap 'cleanup; rm -rf "$WORK"' EXIT INT TERM

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
HZ=$(getconf CLK_TCK)

# start_env KIND MTU: brings up the enclave namespace and both daemons.
# Published: 127.0.0.1:15201 → enclave iperf3 :5201, 127.0.0.1:18080 → enclave hello :8080.
start_env() {
  local kind=$1 mtu=$2
  ip netns add "$NS"
  local sock=$WORK/host.sock
  rm -f "$sock"
  if [ "$kind" = userspace ]; then
    "$BIN/quench-host" -listen "unix://$sock" -mtu "$mtu" -publish 127.0.0.1:15201:5201 -publish 127.0.0.1:18080:8080 -log-level warn 2>"$WORK/host.log" &
    HOST_PID=$!
    PIDS+=($HOST_PID)
    while [ ! -S "$sock" ]; do sleep 0.05; done
    "$BIN/usenclave" -host "$sock" -mtu "$mtu" 2>"$WORK/encl.log" &
    ENCL_PID=$!
  elif [ "$kind" = quench ]; then
    "$BIN/quench-host" -listen "unix://$sock" -mtu "$mtu" -publish 127.0.0.1:15201:5201 -publish 127.0.0.1:18080:8080 -log-level warn 2>"$WORK/host.log" &
    HOST_PID=$!
    PIDS+=($HOST_PID)
    while [ ! -S "$sock" ]; do sleep 0.05; done
    ip netns exec "$NS" "$BIN/quench-enclave" -host "unix://$sock" -mtu "$mtu" -resolv-conf - -log-level warn 2>"$WORK/encl.log" &
    ENCL_PID=$!
  else
    "$BIN/gvproxy" -listen "unix://$sock" -mtu "$mtu" -ssh-port -1 2>"$WORK/host.log" &
    HOST_PID=$!
    PIDS+=($HOST_PID)
    while [ ! -S "$sock" ]; do sleep 0.05; done
    for fw in 15201:5201 18080:8080; do
      curl -sf --unix-socket "$sock" http://gvproxy/services/forwarder/expose -X POST \
        -d "{\"local\":\"127.0.0.1:${fw%%:*}\",\"remote\":\"192.168.127.2:${fw##*:}\",\"protocol\":\"tcp\"}" >/dev/null
    done
    ip netns exec "$NS" ip tuntap add dev tap0 mode tap
    ip netns exec "$NS" ip link set tap0 address 5a:94:ef:e4:0c:ee mtu "$mtu" up
    ip netns exec "$NS" ip addr add 192.168.127.2/24 dev tap0
    ip netns exec "$NS" ip route add default via 192.168.127.1
    ip netns exec "$NS" ip link set lo up
    ip netns exec "$NS" "$BIN/gvforwarder" -url "unix://$sock" -iface tap0 -preexisting -mtu "$mtu" -stop-if-exist "" 2>"$WORK/encl.log" &
    ENCL_PID=$!
  fi
  PIDS+=($ENCL_PID)
  if [ "$kind" != userspace ]; then
    if [ "$BULK" = bulk ]; then
      ip netns exec "$NS" "$BIN/bulkcmd" -listen 0.0.0.0:5201 >/dev/null 2>&1 &
    else
      ip netns exec "$NS" iperf3 -s -p 5201 >/dev/null 2>&1 &
    fi
    PIDS+=($!)
    ip netns exec "$NS" "$BIN/hello" -listen 0.0.0.0:8080 >/dev/null 2>&1 &
    PIDS+=($!)
  fi
  # Wait until the published HTTP port reaches the app.
  for _ in $(seq 1 200); do
    curl -sf -m 1 http://127.0.0.1:18080/ >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "tunnel.sh: $kind/$mtu did not come up" >&2; cat "$WORK/host.log" "$WORK/encl.log" >&2; return 1
}

# measure NAME CMD...: runs CMD, prints one JSON line with its output parsed
# and the CPU used by the host and enclave daemons.
measure() {
  local name=$1; shift
  local h0 e0 h1 e1 t0 t1 out
  h0=$(cpu_ticks "$HOST_PID"); e0=$(cpu_ticks "$ENCL_PID"); t0=$(date +%s.%N)
  out=$("$@" 2>&1 || true)
  h1=$(cpu_ticks "$HOST_PID"); e1=$(cpu_ticks "$ENCL_PID"); t1=$(date +%s.%N)
  python3 "$ROOT/scripts/bench/parse.py" "$name" "$CFG" "$RUN" "$h0" "$h1" "$e0" "$e1" "$t0" "$t1" "$HZ" <<<"$out" | tee -a "$RAW"
}

HOST_IPERF_PORT=15301
iperf3 -s -p $HOST_IPERF_PORT -B 127.0.0.1 >/dev/null 2>&1 &
HOST_IPERF=$!
"$BIN/hello" -listen 127.0.0.1:18090 >/dev/null 2>&1 &
DIRECT_HELLO=$!
trap 'cleanup; kill $HOST_IPERF $DIRECT_HELLO 2>/dev/null; rm -rf "$WORK"' EXIT INT TERM
sleep 0.3

for RUN in $(seq 1 "$RUNS"); do
  # Direct: the app without anything in front.
  CFG=direct; HOST_PID=$DIRECT_HELLO; ENCL_PID=$DIRECT_HELLO
  for c in $CONNS; do
    measure "http_c$c" wrk -t2 -c"$c" -d"${DUR}s" --latency http://127.0.0.1:18090/
  done
  for cm in $CONFIGS; do
    CFG=$cm
    start_env "${cm%%:*}" "${cm##*:}"
    if [ "$BULK" = bulk ]; then
      measure ingress      "$BIN/bulkcmd" -connect 127.0.0.1:15201 -t "${DUR}s"
      measure ingress_rev  "$BIN/bulkcmd" -connect 127.0.0.1:15201 -t "${DUR}s" -R
    else
      measure ingress      iperf3 -c 127.0.0.1 -p 15201 -t "$DUR" -J
      measure ingress_rev  iperf3 -c 127.0.0.1 -p 15201 -t "$DUR" -J -R
    fi
    if [ "$EGRESS" = 1 ] && [ "${cm%%:*}" != userspace ]; then
      measure egress       ip netns exec "$NS" iperf3 -c 192.168.127.254 -p $HOST_IPERF_PORT -t "$DUR" -J
      measure egress_rev   ip netns exec "$NS" iperf3 -c 192.168.127.254 -p $HOST_IPERF_PORT -t "$DUR" -J -R
    fi
    for c in $CONNS; do
      measure "http_c$c" wrk -t2 -c"$c" -d"${DUR}s" --latency http://127.0.0.1:18080/
    done
    cleanup
  done
done
python3 "$ROOT/scripts/bench/report.py" "$NAME" "$RAW" > "$OUT/$NAME.md"
cat "$OUT/$NAME.md"
echo "raw results: $RAW"
