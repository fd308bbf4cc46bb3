#!/usr/bin/env bash
# Tunnel benchmark (issue 2): quench (quench-host + quench-enclave, TAP mode)
# against the peer (stock gvproxy + gvforwarder, gvisor-tap-vsock v0.8.9),
# side by side in one run. A network namespace holding only a TAP device is
# the enclave; a unix socket is the VSOCK stream.
#
#   bulk:  iperf3 host→enclave and enclave→host through a published port,
#          and egress from the enclave to the host's loopback (NAT, both
#          ways); BULK=bulk uses internal/benchapps/bulkcmd instead, BULK=none
#          skips bulk;
#   HTTP:  wrk against the hello app in the enclave through a published port
#          at c = CONNS, and the same app reached directly;
#   sweep: a bombardier concurrency sweep (scripts/load) of each config.
#
# Configs are KIND:MTU with KIND quench (TAP mode), fastpath (TAP mode, but
# the published ports use the ingress fast path: quench-host -publish-vsock,
# one VSOCK stream per client connection, relayed in the enclave by
# quench-enclave -forward to the app's port on the enclave's loopback; its
# egress is quench's tunnel, so not measured again), fastpath-unix (fastpath
# with the app on a unix socket, its HTTP only: the peer's app can only be
# reached over TCP, so this is information, not the target's), userspace (the enclave
# library's gVisor stack in a process: internal/benchapps/usenclave) or peer.
# EGRESS=0 skips the egress measurements. CPU is cores used by the host
# daemon and the enclave-side forwarder. Figures are medians of RUNS runs.
#
# Usage (root): scripts/bench/tunnel.sh
#   [env: RUNS=3 DUR=5 QUICK=1 CONFIGS="..." CONNS="10 100 1000" BULK=iperf3|bulk|none EGRESS=1 SWEEP=1
#    WRK_CLOSE=1 (a new connection per request) + lib.sh's]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SUITE_NAME=${NAME:-tunnel}
CONFIGS=${CONFIGS:-"quench:65520 fastpath:65520 fastpath-unix:65520 peer:65520 peer:1500"}
CONNS=${CONNS:-"10 100 1000"}
BULK=${BULK:-iperf3}
EGRESS=${EGRESS:-1}
bench_init "$SUITE_NAME"
need_root
need_tools iperf3 wrk ip curl
need_bins quench-host quench-enclave gvproxy gvforwarder hello bulkcmd usenclave bombardier
need_tools ss
pick_port P_BULK 15201; pick_port P_HTTP 18080; pick_port P_HOST_IPERF 15301; pick_port P_DIRECT 18090

# start_env KIND MTU: published 127.0.0.1:$P_BULK (15201) → enclave :5201
# (bulk), 127.0.0.1:$P_HTTP (18080) → enclave hello :8080.
start_env() {
  local kind=$1 mtu=$2 pub=(-publish 127.0.0.1:$P_BULK:5201 -publish 127.0.0.1:$P_HTTP:8080)
  case $kind in
    userspace) start_userspace "$mtu" "${pub[@]}" ;;
    quench) start_quench "$mtu" "${pub[@]}" ;;
    fastpath)
      QUENCH_VSOCK_DIR=$VS start_quench "$mtu" -enclave-cid 16 \
        -publish-vsock 127.0.0.1:$P_BULK:5201 -publish-vsock 127.0.0.1:$P_HTTP:8080 -- \
        -forward vsock://16:5201=127.0.0.1:5201 -forward vsock://16:8080=127.0.0.1:8080 ;;
    fastpath-unix)
      rm -f "$WORK/app.sock"
      QUENCH_VSOCK_DIR=$VS start_quench "$mtu" -enclave-cid 16 -publish-vsock 127.0.0.1:$P_HTTP:8080 -- \
        -forward "vsock://16:8080=unix://$WORK/app.sock" ;;
    peer) start_peer "$mtu" "$P_BULK:5201" "$P_HTTP:8080" ;;
    *) echo "tunnel.sh: unknown config kind $kind" >&2; exit 1 ;;
  esac
  if [ "$kind" = fastpath-unix ]; then
    spawn ip netns exec "$NS" "$BIN/hello" -listen "$WORK/app.sock" >/dev/null 2>&1
  elif [ "$kind" != userspace ]; then
    if [ "$BULK" = bulk ]; then
      spawn ip netns exec "$NS" "$BIN/bulkcmd" -listen 0.0.0.0:5201 >/dev/null 2>&1
    else
      spawn ip netns exec "$NS" iperf3 -s -p 5201 >/dev/null 2>&1
    fi
    spawn ip netns exec "$NS" "$BIN/hello" -listen 0.0.0.0:8080 >/dev/null 2>&1
  fi
  wait_url http://127.0.0.1:$P_HTTP/
}

VS=$WORK/vsock # the VSOCK stand-in's directory (fastpath)
mkdir -p "$VS"
HOST_IPERF_PORT=$P_HOST_IPERF
spawn_global iperf3 -s -p $HOST_IPERF_PORT -B 127.0.0.1 >/dev/null 2>&1
spawn_global "$BIN/hello" -listen 127.0.0.1:$P_DIRECT >/dev/null 2>&1
DIRECT_HELLO=$LAST_PID
sleep 0.3

for RUN in $(seq 1 "$RUNS"); do
  # Direct: the app without anything in front.
  CFG=direct; HOST_PID=$DIRECT_HELLO; ENCL_PID=$DIRECT_HELLO
  wrk_points http://127.0.0.1:$P_DIRECT/
  sweep direct=http://127.0.0.1:$P_DIRECT/
  for cm in $CONFIGS; do
    CFG=$cm
    start_env "${cm%%:*}" "${cm##*:}" || { env_failed; continue; }
    if [ "${cm%%:*}" = fastpath-unix ] || [ "$BULK" = none ]; then
      : # HTTP only (fastpath-unix: its bulk path is fastpath's)
    elif [ "$BULK" = bulk ]; then
      measure ingress     0 "$BIN/bulkcmd" -connect 127.0.0.1:$P_BULK -t "${DUR}s"
      measure ingress_rev 0 "$BIN/bulkcmd" -connect 127.0.0.1:$P_BULK -t "${DUR}s" -R
    else
      measure ingress     0 iperf3 -c 127.0.0.1 -p $P_BULK -t "$DUR" -J
      measure ingress_rev 0 iperf3 -c 127.0.0.1 -p $P_BULK -t "$DUR" -J -R
    fi
    if [ "$EGRESS" = 1 ] && [ "${cm%%:*}" != userspace ] && [ "${cm%%:*}" != fastpath ] && [ "${cm%%:*}" != fastpath-unix ]; then
      measure egress     0 ip netns exec "$NS" iperf3 -c 192.168.127.254 -p $HOST_IPERF_PORT -t "$DUR" -J
      measure egress_rev 0 ip netns exec "$NS" iperf3 -c 192.168.127.254 -p $HOST_IPERF_PORT -t "$DUR" -J -R
    fi
    wrk_points http://127.0.0.1:$P_HTTP/
    sweep "$cm=http://127.0.0.1:$P_HTTP/"
    stop_env
  done
done
suite_report
