#!/usr/bin/env bash
# Ingress benchmark: the VSOCK fast path of quench-host (-publish-vsock: one
# stream per client connection with a PROXY v2 header, read by
# enclave.ListenIngress) against the tunnel path (quench-host + quench-enclave
# through the frame tunnel) and stock gvproxy + gvforwarder, in one run.
# A unix socket stands in for VSOCK (QUENCH_VSOCK_DIR), a network namespace
# with only a TAP device for the enclave of the tunnel paths.
#
#   wrk:   HTTP hello at c = 10, 100, 1000: direct, fast path, quench tunnel,
#          gvproxy tunnel;
#   idle:  NIDLE idle client connections held through the fast path and
#          through gvproxy's port forward: daemon RSS growth per connection;
#   bulk:  one stream of BULK bytes through the fast path into a sink, and
#          the same into the same sink over a raw unix socket.
#
# Usage (root): scripts/bench/ingress.sh   [env: RUNS=3 DUR=10 QUICK=1 NIDLE=10000 BULK=4G OUT=dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${BIN:-$ROOT/bin}
RUNS=${RUNS:-3}
DUR=${DUR:-10}
NIDLE=${NIDLE:-10000}
BULK=${BULK:-4294967296}
if [ -n "${QUICK:-}" ]; then RUNS=1; DUR=3; BULK=1073741824; fi
CONNS=${CONNS:-"10 100 1000"}
OUT=${OUT:-$ROOT/scripts/bench/results}
mkdir -p "$OUT"
RAW="$OUT/ingress-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
[ "$(id -u)" = 0 ] || { echo "ingress.sh: needs root (network namespaces, TAP)" >&2; exit 1; }
for t in wrk ip curl python3 go; do command -v $t >/dev/null || { echo "ingress.sh: needs $t" >&2; exit 1; }; done
for b in quench-host quench-enclave gvproxy gvforwarder hello; do
  [ -x "$BIN/$b" ] || { echo "ingress.sh: $BIN/$b missing: run 'make build tools'" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

NS=quench-ibench-$$
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  PIDS=()
  ip netns del "$NS" 2>/dev/null || true
}
APPDIR=$ROOT/.ingress-bench-$$
trap 'cleanup; rm -rf "$WORK" "$APPDIR"' EXIT INT TERM

# The enclave-side app of the fast path, built from this module: HTTP hello
# or a byte sink behind enclave.ListenIngress, plus a bulk sender.
mkdir -p "$APPDIR"
cat > "$APPDIR/main.go" <<'GO'
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/quenchnet/quench/enclave"
)

func main() {
	mode := flag.String("mode", "http", "http | sink | send")
	listen := flag.String("listen", "", "unix socket path to listen on")
	proxy := flag.Bool("proxy", true, "expect a PROXY header (ListenIngress)")
	addr := flag.String("addr", "", "send: tcp:HOST:PORT or unix:PATH")
	n := flag.Int64("bytes", 1<<30, "send: bytes")
	flag.Parse()
	if *mode == "send" {
		network, a, _ := strings.Cut(*addr, ":")
		c, err := net.Dial(network, a)
		if err != nil {
			log.Fatal(err)
		}
		buf := make([]byte, 256<<10)
		t0 := time.Now()
		var sent int64
		for sent < *n {
			k, err := c.Write(buf[:min(int64(len(buf)), *n-sent)])
			sent += int64(k)
			if err != nil {
				log.Fatal(err)
			}
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		io.Copy(io.Discard, c) // the sink closes after reading everything
		// iperf3 -J's shape, so parse.py reads it.
		fmt.Printf("{\"end\":{\"sum_received\":{\"bits_per_second\":%.0f}}}\n", float64(sent)*8/time.Since(t0).Seconds())
		return
	}
	os.Remove(*listen)
	var ln net.Listener
	ln, err := net.Listen("unix", *listen)
	if err != nil {
		log.Fatal(err)
	}
	if *proxy {
		ln = enclave.ListenIngress(ln, enclave.IngressConfig{})
	}
	if *mode == "sink" {
		for {
			c, err := ln.Accept()
			if err != nil {
				log.Fatal(err)
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}
	body := []byte("Hello, world!")
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = []string{"text/plain; charset=utf-8"}
		w.Write(body)
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	log.Fatal(srv.Serve(ln))
}
GO
go build -o "$WORK/ingressapp" "$APPDIR/main.go"
rm -rf "$APPDIR"

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
VS=$WORK/vsock
mkdir -p "$VS"

# start_tunnel KIND: namespace enclave + daemons; 127.0.0.1:18080 → enclave hello :8080.
# For quench also 127.0.0.1:18443 → fast path (vsock://16:8443, app in $VS).
start_tunnel() {
  local kind=$1 sock=$WORK/host.sock
  ip netns add "$NS"
  rm -f "$sock"
  if [ "$kind" = quench ]; then
    QUENCH_VSOCK_DIR=$VS "$BIN/quench-host" -listen "unix://$sock" -publish 127.0.0.1:18080:8080 \
      -publish-vsock 127.0.0.1:18443:8443 -publish-vsock 127.0.0.1:18444:9000 -enclave-cid 16 -log-level warn 2>"$WORK/host.log" &
    HOST_PID=$!; PIDS+=($HOST_PID)
    while [ ! -S "$sock" ]; do sleep 0.05; done
    ip netns exec "$NS" "$BIN/quench-enclave" -host "unix://$sock" -resolv-conf - -log-level warn 2>"$WORK/encl.log" &
    ENCL_PID=$!
  else
    "$BIN/gvproxy" -listen "unix://$sock" -mtu 65520 -ssh-port -1 2>"$WORK/host.log" &
    HOST_PID=$!; PIDS+=($HOST_PID)
    while [ ! -S "$sock" ]; do sleep 0.05; done
    curl -sf --unix-socket "$sock" http://gvproxy/services/forwarder/expose -X POST \
      -d '{"local":"127.0.0.1:18080","remote":"192.168.127.2:8080","protocol":"tcp"}' >/dev/null
    ip netns exec "$NS" ip tuntap add dev tap0 mode tap
    ip netns exec "$NS" ip link set tap0 address 5a:94:ef:e4:0c:ee mtu 65520 up
    ip netns exec "$NS" ip addr add 192.168.127.2/24 dev tap0
    ip netns exec "$NS" ip route add default via 192.168.127.1
    ip netns exec "$NS" ip link set lo up
    ip netns exec "$NS" "$BIN/gvforwarder" -url "unix://$sock" -iface tap0 -preexisting -mtu 65520 -stop-if-exist "" 2>"$WORK/encl.log" &
    ENCL_PID=$!
  fi
  PIDS+=($ENCL_PID)
  ip netns exec "$NS" "$BIN/hello" -listen 0.0.0.0:8080 >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 200); do
    curl -sf -m 1 http://127.0.0.1:18080/ >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "ingress.sh: $kind did not come up" >&2; cat "$WORK/host.log" "$WORK/encl.log" >&2; return 1
}

measure() {
  local name=$1; shift
  local h0 e0 h1 e1 t0 t1 out
  h0=$(cpu_ticks "$HOST_PID"); e0=$(cpu_ticks "$ENCL_PID"); t0=$(date +%s.%N)
  out=$("$@" 2>&1 || true)
  h1=$(cpu_ticks "$HOST_PID"); e1=$(cpu_ticks "$ENCL_PID"); t1=$(date +%s.%N)
  python3 "$ROOT/scripts/bench/parse.py" "$name" "$CFG" "$RUN" "$h0" "$h1" "$e0" "$e1" "$t0" "$t1" "$HZ" <<<"$out" | tee -a "$RAW"
}

# idle_mem ADDR: RSS growth of $HOST_PID per idle connection, NIDLE of them.
idle_mem() {
  local addr=$1 before after
  sleep 1
  before=$(rss_kb "$HOST_PID")
  python3 - "$addr" "$NIDLE" "$HOST_PID" "$before" "$CFG" "$RUN" <<'PY' | tee -a "$RAW"
import json, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
n, pid, before = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
conns = []
for i in range(n):
    s = socket.create_connection((host, int(port)), timeout=10)
    conns.append(s)
time.sleep(3)
# Each connection must still be alive: one request on the last one.
s = conns[-1]
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
ok = b"200 OK" in s.recv(4096)
rss = int([l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0])
print(json.dumps({"name": "idle", "config": sys.argv[5], "run": int(sys.argv[6]), "conns": n,
                  "kb_per_conn": (rss - before) / n, "rss_before_kb": before, "rss_after_kb": rss, "alive": ok}))
for s in conns:
    s.close()
PY
}

"$BIN/hello" -listen 127.0.0.1:18090 >/dev/null 2>&1 &
DIRECT_HELLO=$!
"$WORK/ingressapp" -mode http -listen "$VS/vsock-16-8443.sock" >/dev/null 2>&1 &
FAST_APP=$!
"$WORK/ingressapp" -mode sink -listen "$VS/vsock-16-9000.sock" >/dev/null 2>&1 &
SINK=$!
"$WORK/ingressapp" -mode sink -proxy=false -listen "$WORK/raw.sock" >/dev/null 2>&1 &
RAWSINK=$!
trap 'cleanup; kill $DIRECT_HELLO $FAST_APP $SINK $RAWSINK 2>/dev/null; rm -rf "$WORK" "$APPDIR"' EXIT INT TERM
sleep 0.5

for RUN in $(seq 1 "$RUNS"); do
  CFG=direct; HOST_PID=$DIRECT_HELLO; ENCL_PID=$DIRECT_HELLO
  for c in $CONNS; do measure "http_c$c" wrk -t2 -c"$c" -d"${DUR}s" --latency http://127.0.0.1:18090/; done
  CFG=raw-unix; HOST_PID=$RAWSINK; ENCL_PID=$RAWSINK
  measure bulk "$WORK/ingressapp" -mode send -addr "unix:$WORK/raw.sock" -bytes "$BULK"

  start_tunnel quench
  CFG=fastpath; ENCL_PID=$FAST_APP
  for c in $CONNS; do measure "http_c$c" wrk -t2 -c"$c" -d"${DUR}s" --latency http://127.0.0.1:18443/; done
  ENCL_PID=$SINK
  measure bulk "$WORK/ingressapp" -mode send -addr "tcp:127.0.0.1:18444" -bytes "$BULK"
  idle_mem 127.0.0.1:18443
  CFG=quench-tunnel; ENCL_PID=$(pgrep -n quench-enclave || echo $HOST_PID)
  for c in $CONNS; do measure "http_c$c" wrk -t2 -c"$c" -d"${DUR}s" --latency http://127.0.0.1:18080/; done
  cleanup

  start_tunnel peer
  CFG=gvproxy-tunnel
  for c in $CONNS; do measure "http_c$c" wrk -t2 -c"$c" -d"${DUR}s" --latency http://127.0.0.1:18080/; done
  idle_mem 127.0.0.1:18080
  cleanup
done
python3 "$ROOT/scripts/bench/report.py" ingress "$RAW" > "$OUT/ingress.md" 2>/dev/null || true
cat "$OUT/ingress.md" 2>/dev/null || true
echo "raw results: $RAW"
