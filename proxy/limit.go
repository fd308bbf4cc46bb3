package proxy

import (
	"context"
	"sync/atomic"
	"time"
)

// limiter bounds requests in flight, with an optional short queue.
type limiter struct {
	slots        chan struct{} // one token per request in flight; nil: no limit
	queued       atomic.Int64
	queueSize    int64
	queueTimeout time.Duration
	streams      atomic.Int64 // requests whose slot became a stream (toStream)
	maxStreams   int64        // Config.MaxStreams; negative: streams keep their slot
}

func newLimiter(maxInFlight, queueSize int, queueTimeout time.Duration, maxStreams int) *limiter {
	l := &limiter{queueSize: int64(queueSize), queueTimeout: queueTimeout, maxStreams: int64(maxStreams)}
	if maxInFlight > 0 {
		l.slots = make(chan struct{}, maxInFlight)
	}
	return l
}

// acquire takes a slot, waiting in the queue if there is room in it. It
// reports whether the request was admitted; if so, release must be called.
func (l *limiter) acquire(ctx context.Context) bool {
	if l.tryAcquire() {
		return true
	}
	if l.queueSize == 0 {
		return false
	}
	if l.queued.Add(1) > l.queueSize {
		l.queued.Add(-1)
		return false
	}
	defer l.queued.Add(-1)
	t := time.NewTimer(l.queueTimeout)
	defer t.Stop()
	select {
	case l.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// tryAcquire takes a slot if one is free, without queueing.
func (l *limiter) tryAcquire() bool {
	if l.slots == nil {
		return true
	}
	select {
	case l.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (l *limiter) release() {
	if l.slots != nil {
		<-l.slots
	}
}

// toStream gives back the slot of an admitted request whose response has
// become a stream (its head sent, its length unknown), counting it among
// the streams instead, if fewer than maxStreams are open. It reports
// whether it did; if so, endStream must be called instead of release.
func (l *limiter) toStream() bool {
	if l.slots == nil || l.maxStreams < 0 {
		return false
	}
	if l.streams.Add(1) > l.maxStreams {
		l.streams.Add(-1)
		return false
	}
	<-l.slots
	return true
}

// endStream ends a stream that toStream made.
func (l *limiter) endStream() {
	l.streams.Add(-1)
}

// inFlight returns the number of requests holding a slot.
func (l *limiter) inFlight() int {
	return len(l.slots)
}
