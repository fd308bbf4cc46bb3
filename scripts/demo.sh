#!/usr/bin/env bash
# quench demo: the whole system on one machine, as root, loopback only.
#
#   client ─TCP 127.0.0.1:8443─► quench-host ══ unix socket (VSOCK stand-in) ══►
#     network namespace "enclave": quench-enclave (TAP, TLS, attestation) ─► Python app
#
# It builds nothing itself (`make demo` runs `make build tools` first), then:
# starts quench-host publishing 127.0.0.1:8443 to the enclave's port 443;
# starts quench-enclave in a fresh network namespace with the INSECURE
# development attester, an egress policy (-allow) and examples/sidecar/app.py;
# shows an HTTPS request through the published port, `quench verify` against
# the development root, the egress policy refusing a port, an address and a
# DNS name in the enclave, and a short bombardier run. Everything is stopped and the namespace removed
# on exit or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/bin}
PORT=${PORT:-8443}
LOAD_CONNS=${LOAD_CONNS:-50}
LOAD_TIME=${LOAD_TIME:-5s}

die() { echo "demo: $*" >&2; exit 1; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

[ "$(id -u)" = 0 ] || die "needs root (network namespace, TAP device): sudo make demo"
[ -e /dev/net/tun ] || die "needs /dev/net/tun (modprobe tun)"
command -v ip >/dev/null || die "needs ip (apt-get install -y iproute2)"
command -v python3 >/dev/null || die "needs python3 for the example app (apt-get install -y python3)"
for b in quench-host quench-enclave quench bombardier; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing: run make build tools (or make demo)"
done

WORK=$(mktemp -d /tmp/quench-demo.XXXXXX)
NS=quench-demo-$$
HOST_PID= ENCL_PID=
export QUENCH_VSOCK_DIR=$WORK   # vsock://CID:PORT becomes a unix socket in $WORK

cleanup() {
    trap - EXIT INT TERM
    set +e
    step "stopping"
    if [ -n "$ENCL_PID" ] && kill -0 "$ENCL_PID" 2>/dev/null; then
        kill -TERM "$ENCL_PID"   # drains, then passes SIGTERM to the app
        for _ in $(seq 50); do kill -0 "$ENCL_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$ENCL_PID" 2>/dev/null
    fi
    if [ -n "$HOST_PID" ] && kill -0 "$HOST_PID" 2>/dev/null; then
        kill -TERM "$HOST_PID"
        for _ in $(seq 25); do kill -0 "$HOST_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$HOST_PID" 2>/dev/null
    fi
    wait 2>/dev/null
    ip netns pids "$NS" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    ip netns del "$NS" 2>/dev/null && echo "removed namespace $NS"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# fetch URL: GET over HTTPS without certificate checks (the attestation
# document authenticates the certificate); prints the body.
fetch() {
    python3 - "$1" <<'PY'
import ssl, sys, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
print(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=5).read().decode(), end="")
PY
}

step "quench-host: enclaves connect on vsock://:1024 (stand-in: $WORK), 127.0.0.1:$PORT → enclave :443"
"$BIN/quench-host" -listen vsock://:1024 -publish "127.0.0.1:$PORT:443" -log-level warn \
    -enclave-logs vsock://:1025 \
    >"$WORK/host.log" 2>&1 &
HOST_PID=$!
for _ in $(seq 100); do [ -S "$WORK/vsock-3-1024.sock" ] && break; sleep 0.1; done
[ -S "$WORK/vsock-3-1024.sock" ] || { cat "$WORK/host.log"; die "quench-host did not start"; }

step "quench-enclave in network namespace $NS (TAP mode, development attester, Python app as nobody)"
# The app runs as nobody (-app-user), as an enclave's app should: a root app
# could reconfigure the enclave's network past the sandbox. Its file goes
# where nobody can read it; $WORK itself stays closed to listing.
chmod 0711 "$WORK"
install -d -m 0755 "$WORK/app"
install -m 0644 "$ROOT/examples/sidecar/app.py" "$WORK/app/app.py"
# Debian's python3 first: one under /root (pyenv) is not nobody's to run.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
APP_USER=(-app-user nobody)
if ! runuser -u nobody -- "$PY" -c '' 2>/dev/null; then
    echo "note: $PY cannot run as nobody here; the app runs as root"
    APP_USER=()
fi
ip netns add "$NS"
ip netns exec "$NS" "$BIN/quench-enclave" \
    -host vsock://3:1024 -resolv-conf "$WORK/resolv.conf" \
    -app-url http://127.0.0.1:8081 -wait-for-app \
    -dev-attester -dev-root-out "$WORK/dev-root.pem" \
    -allow "192.168.127.254:$PORT/tcp" "${APP_USER[@]}" \
    -log-level info -log-to vsock://3:1025 \
    -- "$PY" "$WORK/app/app.py" >"$WORK/enclave.log" 2>&1 &
ENCL_PID=$!

ok=
for _ in $(seq 150); do
    if fetch "https://127.0.0.1:$PORT/enclave/health" >/dev/null 2>&1; then ok=1; break; fi
    kill -0 "$ENCL_PID" 2>/dev/null || break
    sleep 0.2
done
[ -n "$ok" ] || { cat "$WORK/enclave.log"; die "the enclave did not become healthy"; }
grep -m1 -o 'WARNING: -dev-attester.*' "$WORK/enclave.log" || true

step "HTTPS through the host's published port: https://127.0.0.1:$PORT/"
fetch "https://127.0.0.1:$PORT/"
echo "health: $(fetch "https://127.0.0.1:$PORT/enclave/health")"

step "quench verify (development root; the certificate is self-signed, the document binds it)"
"$BIN/quench" verify "https://127.0.0.1:$PORT" --roots "$WORK/dev-root.pem" --insecure-skip-tls-verify --max-age 1m

step "quench verify --config: the policy the enclave attests (bound by the document's public_key)"
"$BIN/quench" verify --config "https://127.0.0.1:$PORT" --roots "$WORK/dev-root.pem" --insecure-skip-tls-verify --max-age 1m | sed -n '/^config/,$p'

step "quench fetch: a request that goes only to the pinned image (the development attester's PCRs are zero, as a debug-mode enclave's: --any-image accepts them)"
ZERO_PCR=$(printf '0%.0s' $(seq 96))
"$BIN/quench" fetch "https://127.0.0.1:$PORT/" --pcr "0=$ZERO_PCR" --any-image --roots "$WORK/dev-root.pem" --insecure-skip-tls-verify -v
echo "  with another PCR0, nothing of the request is sent:"
"$BIN/quench" fetch "https://127.0.0.1:$PORT/" --pcr "0=${ZERO_PCR%?}1" --roots "$WORK/dev-root.pem" --insecure-skip-tls-verify -d secret 2>&1 | cut -c1-160 || true

step "egress policy, enforced inside the enclave for every program (-allow 192.168.127.254:$PORT/tcp)"
ip netns exec "$NS" python3 - "$PORT" <<'PY'
import socket, struct, sys, time
port = int(sys.argv[1])
def connect(host, p):
    t = time.monotonic()
    try:
        socket.create_connection((host, p), timeout=5).close()
        r = "connected"
    except OSError as e:
        r = e.strerror or str(e)
    print(f"  connect {host + ':' + str(p):<21} -> {r} ({(time.monotonic() - t) * 1000:.1f} ms)")
connect("192.168.127.254", port)  # the host's loopback, the port the rule allows
connect("192.168.127.254", 22)    # another port there: refused in the enclave
connect("192.0.2.1", 443)         # anywhere else: refused in the enclave
# A DNS question about a name no rule allows: answered NXDOMAIN in the enclave.
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"".join(
    bytes([len(l)]) + l.encode() for l in "leak.example.com".split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
t = time.monotonic()
s.sendto(q, ("192.168.127.1", 53))
rcode = s.recv(512)[3] & 0x0f
print(f"  DNS leak.example.com          -> {'NXDOMAIN' if rcode == 3 else 'rcode %d' % rcode} ({(time.monotonic() - t) * 1000:.1f} ms)")
PY

step "bombardier -c $LOAD_CONNS -d $LOAD_TIME (bounded load, loopback only)"
"$BIN/bombardier" -c "$LOAD_CONNS" -d "$LOAD_TIME" -k -l "https://127.0.0.1:$PORT/"

step "the enclave's log as the parent sees it (quench-enclave -log-to → quench-host -enclave-logs; no console needed)"
grep 'msg=enclave ' "$WORK/host.log" | grep -v 'msg=\\"egress' | tail -n 5 | cut -c1-200

step "done"
