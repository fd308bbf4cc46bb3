#!/usr/bin/env bash
# Ingress benchmark (issue 7): the VSOCK fast path of quench-host
# (-publish-vsock: one stream per client connection with a PROXY v2 header,
# read by enclave.ListenIngress) against the tunnel path (quench-host +
# quench-enclave through the frame tunnel) and stock gvproxy + gvforwarder,
# in one run. A unix socket stands in for VSOCK (QUENCH_VSOCK_DIR), a network
# namespace with only a TAP device for the enclave of the tunnel paths.
#
#   HTTP:  wrk against hello at c = CONNS: direct, fast path, quench tunnel,
#          gvproxy tunnel; and a bombardier sweep of each (scripts/load);
#   idle:  NIDLE idle client connections held through the fast path and
#          through gvproxy's port forward: daemon RSS growth per connection
#          (NIDLE is capped to what the open-file limit allows);
#   bulk:  one stream of BULK bytes through the fast path into a sink, and
#          the same into the same sink over a raw unix socket.
#
# Usage (root): scripts/bench/ingress.sh
#   [env: RUNS=3 DUR=5 QUICK=1 CONNS="10 100 1000" NIDLE=10000 BULK=4294967296 SWEEP=1 + lib.sh's]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CONNS=${CONNS:-"10 100 1000"}
if [ -n "${QUICK:-}" ]; then NIDLE=${NIDLE:-2000}; BULK=${BULK:-536870912}; fi
NIDLE=${NIDLE:-10000}
BULK=${BULK:-4294967296}
bench_init ingress
need_root
# The fast path holds two descriptors in quench-host per client connection
# (the client's and its VSOCK stream), and bench_init's open-file limit is
# the hard one (20000 on the benchmark machine): 10000 idle connections ran
# it out, and the last ones waited in the accept queue.
NIDLE_MAX=$(( ($(ulimit -n) - 1024) / 2 ))
if [ "$NIDLE" -gt "$NIDLE_MAX" ]; then
  echo "ingress: NIDLE=$NIDLE needs 2 descriptors each in quench-host; the open-file limit $(ulimit -n) allows $NIDLE_MAX" >&2
  NIDLE=$NIDLE_MAX
fi
need_tools wrk ip curl python3 go
need_bins quench-host quench-enclave gvproxy gvforwarder hello bombardier
need_tools ss
pick_port P_HTTP 18080; pick_port P_FAST 18443; pick_port P_SINK 18444; pick_port P_DIRECT 18090

# The enclave-side app of the fast path, built from this module: HTTP hello
# or a byte sink behind enclave.ListenIngress, plus a bulk sender. Built in a
# directory of the root module (it imports the enclave package), removed at once.
APPDIR=$ROOT/.ingress-bench-$$
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
		// iperf3 -J's shape, so the report tool reads it.
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

(cd "$ROOT" && go build -o "$WORK/ingressapp" "$APPDIR/main.go") || { rm -rf "$APPDIR"; exit 1; }
rm -rf "$APPDIR"

rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
VS=$WORK/vsock
mkdir -p "$VS"

# start_env KIND: 127.0.0.1:$P_HTTP (18080) → enclave hello :8080 through the
# tunnel; for quench also $P_FAST (18443) → fast path (vsock://16:8443, the
# app in $VS) and $P_SINK (18444) → the sink (vsock://16:9000).
start_env() {
  if [ "$1" = quench ]; then
    QUENCH_VSOCK_DIR=$VS start_quench 65520 -publish 127.0.0.1:$P_HTTP:8080 \
      -publish-vsock 127.0.0.1:$P_FAST:8443 -publish-vsock 127.0.0.1:$P_SINK:9000 -enclave-cid 16 \
      -max-port-conns $((NIDLE + 1024))
  else
    start_peer 65520 "$P_HTTP:8080"
  fi
  spawn ip netns exec "$NS" "$BIN/hello" -listen 0.0.0.0:8080 >/dev/null 2>&1
  wait_url http://127.0.0.1:$P_HTTP/
}

# idle_mem ADDR: RSS growth of $HOST_PID per idle connection, NIDLE of them.
idle_mem() {
  local addr=$1 before
  sleep 1
  before=$(rss_kb "$HOST_PID")
  timeout 300 python3 - "$addr" "$NIDLE" "$HOST_PID" "$before" "$CFG" "$RUN" "$SUITE" <<'PY' | tee -a "$RAW"
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
print(json.dumps({"suite": sys.argv[7], "name": "idle", "config": sys.argv[5], "run": int(sys.argv[6]), "tool": "python",
                  "command": f"python3: {n} idle connections to {sys.argv[1]}", "conns": n,
                  "kb_per_conn": (rss - before) / n, "alive": ok}))
for s in conns:
    s.close()
PY
}

spawn_global "$BIN/hello" -listen 127.0.0.1:$P_DIRECT >/dev/null 2>&1
DIRECT_HELLO=$LAST_PID
spawn_global "$WORK/ingressapp" -mode http -listen "$VS/vsock-16-8443.sock" >/dev/null 2>&1
FAST_APP=$LAST_PID
spawn_global "$WORK/ingressapp" -mode sink -listen "$VS/vsock-16-9000.sock" >/dev/null 2>&1
SINK=$LAST_PID
spawn_global "$WORK/ingressapp" -mode sink -proxy=false -listen "$WORK/raw.sock" >/dev/null 2>&1
RAWSINK=$LAST_PID
sleep 0.5

for RUN in $(seq 1 "$RUNS"); do
  CFG=direct; HOST_PID=$DIRECT_HELLO; ENCL_PID=$DIRECT_HELLO
  wrk_points http://127.0.0.1:$P_DIRECT/
  sweep direct=http://127.0.0.1:$P_DIRECT/
  CFG=raw-unix; HOST_PID=$RAWSINK; ENCL_PID=$RAWSINK
  measure bulk 0 "$WORK/ingressapp" -mode send -addr "unix:$WORK/raw.sock" -bytes "$BULK"

  CFG=quench-tunnel
  if start_env quench; then
    TUNNEL_ENCL=$ENCL_PID
    CFG=fastpath; ENCL_PID=$FAST_APP
    wrk_points http://127.0.0.1:$P_FAST/
    sweep fastpath=http://127.0.0.1:$P_FAST/
    ENCL_PID=$SINK
    measure bulk 0 "$WORK/ingressapp" -mode send -addr "tcp:127.0.0.1:$P_SINK" -bytes "$BULK"
    idle_mem 127.0.0.1:$P_FAST
    CFG=quench-tunnel; ENCL_PID=$TUNNEL_ENCL
    wrk_points http://127.0.0.1:$P_HTTP/
    sweep quench-tunnel=http://127.0.0.1:$P_HTTP/
    stop_env
  else
    env_failed
  fi

  CFG=gvproxy-tunnel
  if start_env peer; then
    wrk_points http://127.0.0.1:$P_HTTP/
    sweep gvproxy-tunnel=http://127.0.0.1:$P_HTTP/
    idle_mem 127.0.0.1:$P_HTTP
    stop_env
  else
    env_failed
  fi
done
suite_report
