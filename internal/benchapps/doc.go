// Package benchapps holds programs that the benchmark scripts in scripts/
// run; each lives in its own directory. For scripts/bench/proxy.sh: hello
// (the upstream app), goproxy (the quench proxy and Go's
// httputil.ReverseProxy, stock and with nitriding's tuning) and loadgen (a
// closed-loop HTTP/1.1 load generator that keeps latencies apart by status,
// for the overload scenario). They are benchmark tools, not part of
// quench's API.
package benchapps
