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
# Then the overload scenario (OVERLOAD=1, issue 4): a wrk search of the
# quench proxy without a limit finds where req/s peaks (c_peak: the lowest of
# PEAK_LEVELS within 5 % of the highest req/s, PEAK_DUR s each, best of
# PEAK_ROUNDS rounds; records named "peak"); then loadgen
# (internal/benchapps/loadgen, served and refused latencies kept apart, 2 s
# timeout, 1 s of unrecorded warm-up on the same connections so that the
# figures are the steady state's, not those of c connections arriving at
# once) runs OVERLOAD_DUR s at c_peak and at 4 x c_peak, REPS
# rounds interleaved, against quench with its default in-flight limit
# (config quench-limited: refused clients retry at once;
# quench-limited+retry-after: they honour Retry-After), quench without a
# limit (quench-unlimited) and nginx; one record named "overload" per run
# (peak_c set), from which the report draws its overload table, targets and
# chart. Runs are shortened to 3 s (PEAK_DUR, OVERLOAD_DUR) to bound the
# time: the section takes about 2 min 10 s with DUR=5 REPS=3 (2 x 7 x 3 s of
# wrk, 3 x 8 x 3 s of loadgen, warm-ups) and about 40 s with QUICK=1 (one
# round of 2 s runs; 38 s measured).
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
# WORKERS (nginx workers / haproxy threads, 2), OVERLOAD (1: run it; 0: skip), PEAK_LEVELS
# ("16 32 64 128 256 512 1024"), PEAK_DUR and OVERLOAD_DUR (DUR, at most 3), PEAK_ROUNDS
# (2; QUICK: 1), QUICK=1, and lib.sh's. Needs wrk, nginx, haproxy (apt-get install -y wrk nginx haproxy) and Go.
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
	# The overload scenario (issue 4). Settings: PEAK_LEVELS, PEAK_DUR,
	# PEAK_ROUNDS, OVERLOAD_DUR (see the header); REPS rounds of loadgen.
	PEAK_LEVELS=${PEAK_LEVELS:-"16 32 64 128 256 512 1024"}
	PEAK_DUR=${PEAK_DUR:-$((DUR < 3 ? DUR : 3))}
	PEAK_ROUNDS=${PEAK_ROUNDS:-$([ -n "${QUICK:-}" ] && echo 1 || echo 2)}
	OVERLOAD_DUR=${OVERLOAD_DUR:-$((DUR < 3 ? DUR : 3))}
	ovl_limit=$(((PEAK_DUR > OVERLOAD_DUR ? PEAK_DUR : OVERLOAD_DUR) * 3 + 60))

	# ovl_run CONFIG NAME C RUN PROC PEAK_C CMD...: runs CMD (wrk or
	# loadgen), appends its quench-bench/v1 record to $RAW (host CPU = the
	# process PROC, enclave CPU = the app; PEAK_C 0 for none) and prints
	# CMD's output.
	ovl_run() {
		local cfg=$1 name=$2 c=$3 rep=$4 proc=$5 pk=$6 out h0 h1 e0 e1 t0 t1
		shift 6
		local shown=("$@")
		shown[0]=${shown[0]##*/} # "loadgen", not its temporary path
		h0=$(cpu_ticks "${PID[$proc]}")
		e0=$(cpu_ticks "${PID[direct]}")
		t0=$(date +%s.%N)
		out=$(timeout "$ovl_limit" "$@" 2>>"$OUT/overload.log" || true)
		t1=$(date +%s.%N)
		h1=$(cpu_ticks "${PID[$proc]}")
		e1=$(cpu_ticks "${PID[direct]}")
		"$REPORT" parse -suite proxy -config "$cfg" -name "$name" -c "$c" -peak-c "$pk" -run "$rep" -cmd "${shown[*]}" \
			-host "$h0,$h1" -encl "$e0,$e1" -hz "$HZ" -wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" <<<"$out" >>"$RAW"
		echo "$out"
	}

	# Where does the quench proxy's req/s peak? wrk against quench without
	# a limit, PEAK_DUR s per level, the best of PEAK_ROUNDS rounds
	# (records named peak).
	: >"$OUT/peak.tsv"
	for round in $(seq "$PEAK_ROUNDS"); do
		for c in $PEAK_LEVELS; do
			rps=$(ovl_run quench peak "$c" "$round" quench 0 wrk -t2 -c"$c" -d"${PEAK_DUR}s" --latency "http://127.0.0.1:${PORT[quench]}/" |
				awk '/Requests\/sec/ { print $2 }')
			if [ -n "$rps" ]; then printf '%s\t%s\t%s\n' "$c" "$round" "$rps" | tee -a "$OUT/peak.tsv" >&2; fi
		done
	done
	# c_peak is the knee: the lowest level whose best round comes within 5 %
	# of the highest req/s. Past it the curve is a plateau on which the
	# maximum itself falls wherever the noise puts it (c = 256, 512 and 1024
	# are within a few per cent of each other on 2 cores).
	peak=$(awk -F'\t' '{ if ($3 > best[$1]) best[$1] = $3; if ($3 > top) top = $3 }
		END { for (c in best) if (best[c] >= 0.95 * top && (knee == "" || c + 0 < knee + 0)) knee = c; print knee }' "$OUT/peak.tsv")
	if [ -z "$peak" ]; then
		echo "proxy.sh: overload: every wrk run of the peak search failed; see $OUT/overload.log" >&2
		printf '{"suite":"proxy","config":"quench","name":"setup","run":1,"error":"overload: peak search failed"}\n' >>"$RAW"
	else
		echo "quench req/s peaks at c=$peak; overload at c=$((4 * peak))" | tee "$OUT/overload.txt" >&2
		for proc in quench-limited quench nginx; do # warm-up, not recorded: fill the upstream pools
			"$TMP/bin/loadgen" -addr "127.0.0.1:${PORT[$proc]}" -c "$peak" -d 1s -timeout 2s >/dev/null 2>&1 || true
		done
		# loadgen at c_peak and 4 x c_peak, REPS rounds, interleaved so that
		# drift in the machine's load hits every configuration alike.
		# config:process:flags; -honor-retry-after makes refused clients
		# wait for Retry-After, else they retry at once.
		for rep in $(seq "$REPS"); do
			for c in "$peak" $((4 * peak)); do
				for v in quench-limited:quench-limited: quench-limited+retry-after:quench-limited:-honor-retry-after \
					quench-unlimited:quench: nginx:nginx:; do
					IFS=: read -r cfg proc flags <<<"$v"
					# shellcheck disable=SC2086 # flags: zero or one word
					out=$(ovl_run "$cfg" overload "$c" "$rep" "$proc" "$peak" "$TMP/bin/loadgen" -addr "127.0.0.1:${PORT[$proc]}" \
						-c "$c" -warmup 1s -d "${OVERLOAD_DUR}s" -timeout 2s $flags)
					echo "$cfg rep=$rep $out" | tee -a "$OUT/overload.txt" >&2
				done
			done
		done
	fi
fi
echo "tables and logs in $OUT" >&2
OUT=$OUT_BASE
suite_report
