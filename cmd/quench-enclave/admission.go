package main

import (
	"runtime"
	"time"

	"github.com/quenchnet/quench/proxy"
)

// quench-enclave's admission defaults differ from package proxy's, which
// refuses at once past MaxInFlight. In front of an app that clients reach
// through a load balancer, many keep-alive connections each carrying one
// request at a time (closed-loop clients) are normal: refusing at once
// turns every request past the limit into a 503 that most clients resend
// immediately, and the refusals then take the CPU the admitted requests
// need. Measured on the full HTTPS path (scripts/bench/enclave.sh, wrk
// c = 1000 on 2 cores, limit 128): 5.3k req/s served and 125k 503s in 5 s
// with no queue. A queue that holds the surplus for a short while keeps the
// app busy at its peak rate and answers each request within about
// c ÷ peak rate (1000 ÷ 12k req/s ≈ 80 ms there); only a request that waits
// longer than defaultQueueTimeout, or finds the queue full, is refused.
const (
	// queuePerSlot sizes the default queue: this many waiting requests per
	// in-flight slot.
	queuePerSlot = 8
	// defaultQueueTimeout bounds a queued request's wait for a slot.
	defaultQueueTimeout = 200 * time.Millisecond
)

// defaultQueue is the queue size for -max-in-flight maxInFlight when -queue
// is not given: queuePerSlot per slot of the limit in effect, and none
// without a limit.
func defaultQueue(maxInFlight int) int {
	switch {
	case maxInFlight < 0:
		return 0
	case maxInFlight == 0:
		return queuePerSlot * proxy.DefaultMaxInFlightPerCPU * runtime.GOMAXPROCS(0)
	default:
		return queuePerSlot * maxInFlight
	}
}
