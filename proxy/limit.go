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
}

func newLimiter(maxInFlight, queueSize int, queueTimeout time.Duration) *limiter {
	l := &limiter{queueSize: int64(queueSize), queueTimeout: queueTimeout}
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

// inFlight returns the number of requests holding a slot.
func (l *limiter) inFlight() int {
	return len(l.slots)
}
