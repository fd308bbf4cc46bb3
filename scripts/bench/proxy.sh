#!/usr/bin/env bash
# Side-by-side benchmark of reverse proxies in front of one hello app, as
# ratios to the app alone ("direct"), in one run:
#
#   direct           wrk -> hello
#   quench           wrk -> quench proxy (Proxy.Serve, its own HTTP/1.1 front end) -> hello
#   quench-handler   wrk -> the same Proxy as an http.Handler behind proxy.NewServer -> hello
#   go-stock         wrk -> httputil.ReverseProxy, http.DefaultTransport -> hello
#   go-nitriding     wrk -> httputil.ReverseProxy, MaxIdleConns(PerHost) 1000 + 32 KiB sync.Pool -> hello
#   nginx            wrk -> nginx, keepalive upstream (scripts/bench/proxy/nginx.conf.tmpl) -> hello
#   haproxy          wrk -> haproxy, http-reuse always (scripts/bench/proxy/haproxy.cfg.tmpl) -> hello
#
# For each concurrency (CONCS) and each of REPS rounds, every target gets a
# DUR-second wrk run, interleaved so that drift in the machine's load hits
# all of them alike; the table gives medians. The CPU time each proxy used
# (from /proc, children included) is divided by the requests served.
# Then the overload scenario: a concurrency sweep of the quench proxy finds
# where req/s peaks (c_peak); loadgen (internal/benchapps/loadgen) runs at
# c_peak and at 4 x c_peak against quench with its default in-flight limit
# (refused clients retrying at once, and honouring Retry-After), quench
# without a limit, and nginx, keeping served and refused latencies apart.
#
# The quench proxy runs with MaxInFlight -1 (no limit) in the throughput
# table, like nginx and haproxy here: with closed-loop clients any limit
# below c turns the rest into 503s. Its default limit is exercised by the
# overload scenario.
#
# No taskset pinning: the machine has 2 cores for wrk, the proxy and the app
# (three busy processes), so any pinning leaves two of them sharing a core
# anyway; unpinned, the scheduler balances them.
#
# Every measured wrk run is also a quench-bench/v1 record in $RAW (host CPU
# = the proxy, enclave CPU = the app), and a bombardier sweep of every target
# follows the table (scripts/load, SWEEP=1).
#
# Usage: scripts/bench/proxy.sh [dir for logs and TSV tables (results/proxy)]
# Environment: DUR (5), REPS (RUNS, 3), CONCS (CONNS, "10 100 1000"), BASE_PORT (27180),
# WORKERS (nginx workers / haproxy threads, 2), OVERLOAD (1: run it; 0: skip), QUICK=1,
# and lib.sh's. Needs wrk, nginx, haproxy (apt-get install -y wrk nginx haproxy) and Go.
# Everything listens on 127.0.0.1 and stops on exit.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_init proxy
REPS=${REPS:-$RUNS}
[ -n "${QUICK:-}" ] && REPS=1
CONCS=${CONCS:-${CONNS:-"10 100 1000"}}
BASE_PORT=${BASE_PORT:-27180}
WORKERS=${WORKERS:-2}
OVERLOAD=${OVERLOAD:-1}
PROXY_OUT=${1:-$OUT/proxy}
mkdir -p "$PROXY_OUT"
TMP=$WORK
need_tools wrk nginx haproxy go ss curl
need_bins bombardier

# Eight consecutive ports from BASE_PORT; moved up by 10 while any is taken
# (the machine is shared).
for _ in $(seq 50); do
	taken=0
	for i in $(seq 0 7); do
		ss -Hltn "sport = :$((BASE_PORT + i))" | grep -q . && taken=1
	done
	[ $taken = 0 ] && break
	BASE_PORT=$((BASE_PORT + 10))
done
[ $taken = 0 ] || { echo "proxy.sh: no 8 free ports from BASE_PORT; set BASE_PORT" >&2; exit 1; }
declare -A PORT=(
	[direct]=$BASE_PORT [quench]=$((BASE_PORT + 1)) [quench-handler]=$((BASE_PORT + 2))
	[go-stock]=$((BASE_PORT + 3)) [go-nitriding]=$((BASE_PORT + 4)) [nginx]=$((BASE_PORT + 5))
	[haproxy]=$((BASE_PORT + 6)) [quench-limited]=$((BASE_PORT + 7))
)
TARGETS=(direct quench quench-handler go-stock go-nitriding nginx haproxy)

echo "building into $TMP/bin" >&2
(cd "$ROOT" && go build -o "$TMP/bin/" ./internal/benchapps/hello ./internal/benchapps/goproxy ./internal/benchapps/loadgen)
OUT_BASE=$OUT
OUT=$PROXY_OUT

declare -A PID
start() { # name command...
	local name=$1
	shift
	spawn_global "$@" >"$OUT/$name.log" 2>&1
	PID[$name]=$LAST_PID
}
UP=127.0.0.1:${PORT[direct]}
start direct "$TMP/bin/hello" -listen "$UP"
start quench "$TMP/bin/goproxy" -mode quench -max-inflight -1 -listen 127.0.0.1:${PORT[quench]} -upstream "http://$UP"
start quench-handler "$TMP/bin/goproxy" -mode quench-handler -max-inflight -1 -listen 127.0.0.1:${PORT[quench-handler]} -upstream "http://$UP"
start go-stock "$TMP/bin/goproxy" -mode stock -listen 127.0.0.1:${PORT[go-stock]} -upstream "http://$UP"
start go-nitriding "$TMP/bin/goproxy" -mode nitriding -listen 127.0.0.1:${PORT[go-nitriding]} -upstream "http://$UP"
start quench-limited "$TMP/bin/goproxy" -mode quench -listen 127.0.0.1:${PORT[quench-limited]} -upstream "http://$UP"
mkdir -p "$TMP/nginx"
sed -e "s#@UPSTREAM@#$UP#; s#@LISTEN@#127.0.0.1:${PORT[nginx]}#; s#@WORKERS@#$WORKERS#; s#@PREFIX@#$TMP/nginx#g" \
	"$ROOT/scripts/bench/proxy/nginx.conf.tmpl" >"$TMP/nginx/nginx.conf"
start nginx nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx"
sed -e "s#@UPSTREAM@#$UP#; s#@LISTEN@#127.0.0.1:${PORT[haproxy]}#; s#@WORKERS@#$WORKERS#" \
	"$ROOT/scripts/bench/proxy/haproxy.cfg.tmpl" >"$TMP/haproxy.cfg"
start haproxy haproxy -f "$TMP/haproxy.cfg" -db

for name in "${!PORT[@]}"; do
	for _ in $(seq 50); do
		curl -fs -o /dev/null "http://127.0.0.1:${PORT[$name]}/" && continue 2
		sleep 0.1
	done
	echo "proxy.sh: $name did not come up; see $OUT/$name.log" >&2
	exit 1
done

# run NAME C SECS: one wrk run; prints a line for raw.tsv and, for REP > 0,
# appends a record to $RAW.
run() {
	local name=$1 c=$2 secs=$3 port=${PORT[$1]} out before after app_before app_after t0 t1
	local cmd=(wrk -t2 -c"$c" -d"${secs}s" --latency "http://127.0.0.1:$port/")
	before=$(cpu_ticks "${PID[$name]}")
	app_before=$(cpu_ticks "${PID[direct]}")
	t0=$(date +%s.%N)
	out=$(timeout $((secs * 3 + 60)) "${cmd[@]}" || true)
	t1=$(date +%s.%N)
	after=$(cpu_ticks "${PID[$name]}")
	app_after=$(cpu_ticks "${PID[direct]}")
	if [ "${REP:-0}" -gt 0 ]; then
		"$REPORT" parse -suite proxy -config "$name" -name http -c "$c" -run "$REP" -cmd "${cmd[*]}" \
			-host "$before,$after" -encl "$app_before,$app_after" -hz "$HZ" \
			-wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" <<<"$out" >>"$RAW"
	fi
	echo "$out" | awk -v name="$name" -v c="$c" -v rep="${REP:-0}" -v secs="$secs" -v hz="$HZ" \
		-v cpu=$((after - before)) -v appcpu=$((app_after - app_before)) -v load="$(cut -d' ' -f1 /proc/loadavg)" '
		function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
		/Requests\/sec/ { rps = $2 }
		/^ +99%/ { p99 = ms($2) }
		/^ +50%/ { p50 = ms($2) }
		/Non-2xx/ { non2xx = $5 }
		/Socket errors/ { errs = $0; sub(/.*timeout /, "", errs); timeouts = errs + 0 }
		END {
			n = rps * secs
			if (name == "direct") proxycpu = 0; else proxycpu = (n > 0 ? cpu / hz * 1e6 / n : 0)
			printf "%s\t%d\t%d\t%.0f\t%.2f\t%.2f\t%.1f\t%.1f\t%d\t%d\t%s\n", name, c, rep, rps, p50, p99,
				proxycpu, (n > 0 ? appcpu / hz * 1e6 / n : 0), non2xx + 0, timeouts + 0, load
		}'
}

printf "target\tc\trep\trps\tp50_ms\tp99_ms\tproxy_cpu_us_per_req\tapp_cpu_us_per_req\tnon2xx\ttimeouts\tload1\n" >"$OUT/raw.tsv"
for c in $CONCS; do
	for name in "${TARGETS[@]}"; do # warm-up: open connections, fill pools
		REP=0 run "$name" "$c" 1 >/dev/null
	done
	for REP in $(seq "$REPS"); do
		for name in "${TARGETS[@]}"; do
			run "$name" "$c" "$DUR" | tee -a "$OUT/raw.tsv" >&2
		done
	done
done

# Medians per target and concurrency, and ratios to direct.
awk -F'\t' 'NR > 1 { k = $1 "\t" $2; rps[k] = rps[k] " " $4; p99[k] = p99[k] " " $6; cpu[k] = cpu[k] " " $7; to[k] += $10; n2[k] += $9 }
	function median(s,   a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	END { for (k in rps) printf "%s\t%.0f\t%.2f\t%.1f\t%d\t%d\n", k, median(rps[k]), median(p99[k]), median(cpu[k]), to[k], n2[k] }' \
	"$OUT/raw.tsv" | sort >"$OUT/medians.tsv"

{
	echo "| target | c | req/s (median of $REPS × ${DUR} s) | × direct | p99 ms | proxy CPU µs/req | timeouts | non-2xx |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|"
	for c in $CONCS; do
		direct=$(awk -F'\t' -v c="$c" '$1 == "direct" && $2 == c { print $3 }' "$OUT/medians.tsv")
		for name in "${TARGETS[@]}"; do
			awk -F'\t' -v n="$name" -v c="$c" -v d="$direct" '$1 == n && $2 == c {
				printf "| %s | %d | %d | %.2f | %.2f | %s | %d | %d |\n", n, c, $3, $3 / d, $4, (n == "direct" ? "–" : $5), $6, $7 }' "$OUT/medians.tsv"
		done
	done
} | tee "$OUT/table.md"

RUN=1
sweep_args=()
for name in "${TARGETS[@]}"; do sweep_args+=("$name=http://127.0.0.1:${PORT[$name]}/"); done
sweep "${sweep_args[@]}"

if [ "$OVERLOAD" = 1 ]; then
	# Where does the quench proxy's req/s peak? One short wrk run per level,
	# the best of two rounds.
	: >"$OUT/sweep.tsv"
	for round in 1 2; do
		for c in 8 16 32 64 128 256 512 1024; do
			REP=$round run quench "$c" 3 | tee -a "$OUT/sweep.tsv" >&2
		done
	done
	peak=$(awk -F'\t' '{ if ($4 > best[$2]) best[$2] = $4 } END { for (c in best) print best[c], c }' "$OUT/sweep.tsv" | sort -n | tail -1 | cut -d' ' -f2)
	echo "quench req/s peaks at c=$peak; overload at c=$((4 * peak))" | tee "$OUT/overload.txt"
	# name:flags; "honor" makes refused clients wait for Retry-After.
	for run in quench-limited: quench-limited:-honor-retry-after quench: nginx:; do
		name=${run%%:*} flags=${run#*:}
		for c in "$peak" $((4 * peak)); do
			for rep in $(seq "$REPS"); do
				echo "$name$flags rep=$rep $("$TMP/bin/loadgen" -addr 127.0.0.1:${PORT[$name]} -c "$c" -d "${DUR}s" -timeout 2s $flags)" | tee -a "$OUT/overload.txt"
			done
		done
	done
fi
echo "tables and logs in $OUT" >&2
OUT=$OUT_BASE
suite_report
