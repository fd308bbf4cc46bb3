#!/usr/bin/env bash
# Full-path HTTPS benchmark (issue 6): client → host daemon → enclave (TLS,
# proxy) → app, quench against nitriding's stack rebuilt from its parts, in
# one run.
#
#   quench:      quench-host (MTU 65520) ══ unix socket ══ quench-enclave (TAP,
#                TLS terminated in the enclave, package proxy) → hello app
#   quench-fast: the same enclave server reached through the ingress fast
#                path (-publish-vsock: one stream per client connection with
#                a PROXY v2 header) instead of a published port
#   quench-unix: quench-fast with the app on a unix socket (-app-url
#                unix:///path; nitriding's proxy can only reach its app over
#                TCP, so this row is information, not the target's)
#   quench-go:   a Go app importing package enclave (the same hello handler
#                in process, userspace mode; internal/benchapps/usenclave
#                -https-ingress) reached through the ingress fast path: no
#                proxy and no app process (information, not the target's)
#   nitriding:   stock gvproxy + gvforwarder (gvisor-tap-vsock v0.8.9, MTU
#                1500 as nitriding uses them) → a Go reverse proxy with
#                nitriding-daemon's tuning (1000 idle connections per host,
#                32 KiB buffer pool), same TLS → the same hello app
#   direct:      the hello app over plain HTTP on the host (ceiling)
#
# Load: wrk over HTTPS (keep-alive) at c = CONNS, RUNS rounds, medians; req/s
# counts successful responses only; and a bombardier sweep of each.
# CPU: host = quench-host or gvproxy; enclave = everything in the namespace
# (quench-enclave; gvforwarder + the nitriding proxy).
#
# Usage (root): scripts/bench/enclave.sh
#   [env: RUNS=3 DUR=5 QUICK=1 CONNS="10 100 1000" KINDS="quench quench-fast quench-unix quench-go nitriding" SWEEP=1
#    ENCLAVE_ARGS="" (extra quench-enclave flags, e.g. "-max-in-flight -1") + lib.sh's]
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
. "$(dirname "$0")/lib.sh"
CONNS=${CONNS:-"10 100 1000"}
ENCLAVE_ARGS=${ENCLAVE_ARGS:-}
KINDS=${KINDS:-"quench quench-fast quench-unix quench-go nitriding"}
bench_init enclave
need_root
need_tools wrk ip curl go
need_bins quench-host quench-enclave gvproxy gvforwarder hello usenclave bombardier
need_tools ss
pick_port P_HTTPS 18443; pick_port P_DIRECT 18090

# start_env KIND: the enclave's HTTPS server on 127.0.0.1:$P_HTTPS (18443).
start_env() {
  local kind=$1 app=127.0.0.1:8081 appurl=http://127.0.0.1:8081
  case $kind in
    quench|quench-fast|quench-unix)
      local pub=(-publish 127.0.0.1:$P_HTTPS:443) ing=()
      if [ "$kind" != quench ]; then
        pub=(-publish-vsock 127.0.0.1:$P_HTTPS:8443 -enclave-cid 16); ing=(-ingress vsock://16:8443)
      fi
      if [ "$kind" = quench-unix ]; then
        app=$WORK/app.sock appurl=unix://$WORK/app.sock
        rm -f "$app"
      fi
      mkdir -p "$WORK/vsock"
      QUENCH_VSOCK_DIR=$WORK/vsock start_quench 65520 "${pub[@]}" -- "${ing[@]}" -app-url "$appurl" -dev-attester $ENCLAVE_ARGS ;;
    quench-go)
      mkdir -p "$WORK/vsock"
      QUENCH_VSOCK_DIR=$WORK/vsock start_userspace 65520 -publish-vsock 127.0.0.1:$P_HTTPS:8443 -enclave-cid 16 -- \
        -https-ingress "$WORK/vsock/vsock-16-8443.sock"
      wait_url https://127.0.0.1:$P_HTTPS/ -k
      return ;;
    nitriding)
      start_nitriding "$P_HTTPS" http://127.0.0.1:8081
      ENCL_PID="$ENCL_PID $PROXY_PID" ;;
    *) echo "enclave.sh: unknown kind $kind" >&2; exit 1 ;;
  esac
  spawn ip netns exec "$NS" "$BIN/hello" -listen "$app" >/dev/null 2>&1
  wait_url https://127.0.0.1:$P_HTTPS/ -k
}

spawn_global "$BIN/hello" -listen 127.0.0.1:$P_DIRECT >/dev/null 2>&1
DIRECT=$LAST_PID
sleep 0.3
for RUN in $(seq 1 "$RUNS"); do
  CFG=direct; HOST_PID=$DIRECT; ENCL_PID=$DIRECT
  wrk_points http://127.0.0.1:$P_DIRECT/
  sweep direct=http://127.0.0.1:$P_DIRECT/
  for kind in $KINDS; do
    CFG=$kind
    start_env "$kind" || { env_failed; continue; }
    wrk_points https://127.0.0.1:$P_HTTPS/
    sweep -insecure "$kind=https://127.0.0.1:$P_HTTPS/"
    stop_env
  done
done
suite_report
