package proxy

import "time"

// Metrics receives the proxy's measurements. Implementations must be safe
// for concurrent use and should not block: the methods are called on the
// request path. Package proxyprom implements Metrics with Prometheus
// collectors.
type Metrics interface {
	// InFlight is called with +1 when a request is admitted and with -1
	// when it gives back its in-flight slot: when it is done (its response
	// fully written, or the connection upgraded), or when its response
	// becomes a stream (Config.MaxStreams). The running sum is the number
	// of requests holding a slot, what Config.MaxInFlight bounds.
	InFlight(delta int)

	// Request is called once per admitted request when it is done, with
	// the status code sent to the client and the time from admission to
	// the end of the response. Code is 499 when the client went away before
	// the response began, as in nginx's logs.
	Request(code int, d time.Duration)

	// Refused is called once per request refused with 503 because
	// MaxInFlight requests were in flight and the queue was full or its
	// wait timed out.
	Refused()

	// UpstreamError is called once per request whose exchange with the
	// upstream failed: it could not be dialed, failed before the response
	// header (the client got 502 or 504), or failed while the response body
	// was being copied (the response was aborted).
	UpstreamError()
}
