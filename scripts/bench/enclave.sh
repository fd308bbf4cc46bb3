#!/usr/bin/env bash
# Full-path HTTPS benchmark: client → host daemon → enclave (TLS, proxy) → app,
# quench against nitriding's stack rebuilt from its parts, in one run.
#
#   quench:    quench-host (MTU 65520) ══ unix socket ══ quench-enclave (TAP,
#              TLS terminated in the enclave, package proxy) → hello app
#   nitriding: stock gvproxy + gvforwarder (gvisor-tap-vsock v0.8.9, MTU 1500
#              as nitriding uses them) → a Go httputil reverse proxy with
#              nitriding-daemon's tuning (1000 idle connections per host, a
#              pool of 32 KiB buffers), same TLS (self-signed ECDSA P-256,
#              TLS 1.2+) → the same hello app
#   direct:    the hello app over plain HTTP on the host (ceiling reference)
#
# A network namespace holding only a TAP device is the enclave; a unix socket
# is the VSOCK stream. Load: wrk over HTTPS (keep-alive), c = CONNS, DUR
# seconds each, RUNS rounds; the table shows the median req/s and p99.
#
# Usage (root): scripts/bench/enclave.sh   [env: RUNS=3 DUR=10 CONNS="100 1000" QUICK=1]
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${BIN:-$ROOT/bin}
RUNS=${RUNS:-3}
DUR=${DUR:-10}
CONNS=${CONNS:-"100 1000"}
if [ -n "${QUICK:-}" ]; then RUNS=1; DUR=5; fi
[ "$(id -u)" = 0 ] || { echo "enclave.sh: needs root (network namespaces, TAP)" >&2; exit 1; }
for t in wrk ip curl go; do command -v $t >/dev/null || { echo "enclave.sh: needs $t (apt-get install -y wrk iproute2 curl)" >&2; exit 1; }; done
for b in quench-host quench-enclave gvproxy gvforwarder; do
  [ -x "$BIN/$b" ] || { echo "enclave.sh: $BIN/$b missing: run 'make build tools'" >&2; exit 1; }
done
[ -x "$BIN/hello" ] || go build -o "$BIN/hello" ./internal/benchapps/hello
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

NS=quench-encbench-$$
WORK=$(mktemp -d)
PIDS=()
stop_env() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  PIDS=()
  ip netns del "$NS" 2>/dev/null || true
}
trap 'stop_env; kill ${DIRECT:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT INT TERM

# nitriding's reverse proxy (nitriding-daemon proxy.go tuning), stdlib only.
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

# start_env KIND: brings up the namespace, the daemons and the app; the
# enclave's HTTPS server is published on 127.0.0.1:18443.
start_env() {
  local kind=$1 sock=$WORK/host.sock
  ip netns add "$NS"
  rm -f "$sock"
  if [ "$kind" = quench ] || [ "$kind" = quench-fast ]; then
    # quench: published port through the frame tunnel; quench-fast: the
    # ingress fast path (-publish-vsock, one VSOCK stream per client
    # connection with a PROXY v2 header) to the same enclave HTTPS server.
    local pub=(-publish 127.0.0.1:18443:443) ing=()
    if [ "$kind" = quench-fast ]; then
      pub=(-publish-vsock 127.0.0.1:18443:8443 -enclave-cid 16); ing=(-ingress vsock://16:8443)
    fi
    mkdir -p "$WORK/vsock"
    QUENCH_VSOCK_DIR=$WORK/vsock "$BIN/quench-host" -listen "unix://$sock" "${pub[@]}" -log-level warn 2>"$WORK/host.log" &
    HOST_PID=$!; PIDS+=($HOST_PID)
    while [ ! -S "$sock" ]; do sleep 0.05; done
    QUENCH_VSOCK_DIR=$WORK/vsock ip netns exec "$NS" "$BIN/quench-enclave" -host "unix://$sock" -resolv-conf - -log-level warn \
      "${ing[@]}" -app-url http://127.0.0.1:8081 -dev-attester 2>"$WORK/encl.log" &
    ENCL_PID=$!; PIDS+=($ENCL_PID)
    PROXY_PID=$ENCL_PID
  else
    "$BIN/gvproxy" -listen "unix://$sock" -mtu 1500 -ssh-port -1 2>"$WORK/host.log" &
    HOST_PID=$!; PIDS+=($HOST_PID)
    while [ ! -S "$sock" ]; do sleep 0.05; done
    curl -sf --unix-socket "$sock" http://gvproxy/services/forwarder/expose -X POST \
      -d '{"local":"127.0.0.1:18443","remote":"192.168.127.2:443","protocol":"tcp"}' >/dev/null
    ip netns exec "$NS" ip tuntap add dev tap0 mode tap
    ip netns exec "$NS" ip link set tap0 address 5a:94:ef:e4:0c:ee mtu 1500 up
    ip netns exec "$NS" ip addr add 192.168.127.2/24 dev tap0
    ip netns exec "$NS" ip route add default via 192.168.127.1
    ip netns exec "$NS" ip link set lo up
    ip netns exec "$NS" "$BIN/gvforwarder" -url "unix://$sock" -iface tap0 -preexisting -mtu 1500 -stop-if-exist "" 2>"$WORK/encl.log" &
    ENCL_PID=$!; PIDS+=($ENCL_PID)
    ip netns exec "$NS" "$WORK/nitriding-proxy" :443 http://127.0.0.1:8081 2>"$WORK/proxy.log" &
    PROXY_PID=$!; PIDS+=($PROXY_PID)
  fi
  ip netns exec "$NS" "$BIN/hello" -listen 127.0.0.1:8081 >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    curl -skf -m 1 https://127.0.0.1:18443/ >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "enclave.sh: $kind did not come up" >&2; cat "$WORK"/*.log >&2; return 1
}

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# wrk_run URL C: prints "req/s p99_ms cpu_host cpu_encl cpu_proxy" (cores).
wrk_run() {
  local out h0 e0 p0 h1 e1 p1 hz
  hz=$(getconf CLK_TCK)
  h0=$(cpu_ticks "$HOST_PID"); e0=$(cpu_ticks "$ENCL_PID"); p0=$(cpu_ticks "$PROXY_PID")
  out=$(wrk -t2 -c"$2" -d"${DUR}s" --latency "$1" 2>&1 || true)
  h1=$(cpu_ticks "$HOST_PID"); e1=$(cpu_ticks "$ENCL_PID"); p1=$(cpu_ticks "$PROXY_PID")
  echo "$out" >>"$WORK/wrk.log"
  local rps p99
  # Successful responses per second: refusals (503) and errors do not count.
  rps=$(awk '/requests in/ {n=$1} /^Requests\/sec/ {r=$2} /Non-2xx/ {bad=$NF}
    END {if (n > 0) printf "%.0f", r*(n-bad)/n; else print 0}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  local errs
  errs=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$out" | tr '\n' ' ')
  awk -v r="${rps:-0}" -v p="${p99:-0}" -v h=$((h1-h0)) -v e=$((e1-e0)) -v x=$((p1-p0)) -v hz="$hz" -v d="$DUR" -v err="$errs" \
    'BEGIN {printf "%s %s %.2f %.2f %.2f %s\n", r, p, h/hz/d, e/hz/d, (x==e?0:x/hz/d), err}'
}

RES=$WORK/results
"$BIN/hello" -listen 127.0.0.1:18090 >/dev/null 2>&1 &
DIRECT=$!
sleep 0.3
for RUN in $(seq 1 "$RUNS"); do
  HOST_PID=$DIRECT; ENCL_PID=$DIRECT; PROXY_PID=$DIRECT
  for c in $CONNS; do echo "direct $c $(wrk_run http://127.0.0.1:18090/ "$c")" >>"$RES"; done
  for kind in ${KINDS:-quench quench-fast nitriding}; do
    start_env "$kind"
    for c in $CONNS; do echo "$kind $c $(wrk_run https://127.0.0.1:18443/ "$c")" >>"$RES"; done
    stop_env
  done
done

echo "# enclave full path, $(date -u +%FT%TZ), RUNS=$RUNS DUR=${DUR}s, medians"
echo
echo "| path | c | req/s (2xx) | p99 ms | CPU host | CPU enclave fwd | CPU proxy | errors (last run) |"
echo "|---|---|---|---|---|---|---|---|"
for kind in direct ${KINDS:-quench quench-fast nitriding}; do
  for c in $CONNS; do
    grep "^$kind $c " "$RES" | awk -v k="$kind" -v c="$c" '
      { r[NR]=$3; p[NR]=$4; h[NR]=$5; e[NR]=$6; x[NR]=$7; $1=$2=$3=$4=$5=$6=$7=""; err=$0 }
      function med(a, n,   i, j, t) { for (i=1;i<=n;i++) for (j=i+1;j<=n;j++) if (a[j]<a[i]) {t=a[i];a[i]=a[j];a[j]=t}; return a[int((n+1)/2)] }
      END { printf "| %s | %s | %.0f | %.1f | %.2f | %.2f | %.2f | %s |\n", k, c, med(r,NR), med(p,NR), med(h,NR), med(e,NR), med(x,NR), err }'
  done
done
echo
med() { grep "^$1 $2 " "$RES" | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for c in $CONNS; do
  n=$(med nitriding "$c")
  for q in ${KINDS:-quench quench-fast nitriding}; do
    [ "$q" = nitriding ] && continue
    awk -v q="$(med "$q" "$c")" -v n="$n" -v c="$c" -v k="$q" 'BEGIN { if (n > 0) printf "c=%s: %s / nitriding req/s = %.2f\n", c, k, q/n }'
  done
done
