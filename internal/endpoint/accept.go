package endpoint

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"
)

// Accept back-off bounds: the first retry waits minAcceptDelay, each next
// one twice as long, up to maxAcceptDelay (as net/http's Server does).
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// AcceptRetryable reports whether err, returned by a listener's Accept,
// passes with time: the process or the system is out of file descriptors
// (EMFILE, ENFILE) or socket memory (ENOBUFS, ENOMEM), a connection was
// reset or aborted before it was accepted, or the error is a timeout.
//
// net.Error's Timeout is false for EMFILE, so an accept loop that retries
// only on timeouts stops for good when a flood of connections uses up the
// process's descriptors, and stays stopped after the flood.
func AcceptRetryable(err error) bool {
	if err == nil || errors.Is(err, net.ErrClosed) {
		return false
	}
	for _, e := range [...]syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// AcceptBackoff paces an accept loop through errors that pass
// (AcceptRetryable). The zero value is ready; it is not safe for
// concurrent use (one per loop).
type AcceptBackoff struct {
	delay time.Duration
}

// Wait returns false at once if err does not pass with time. Otherwise it
// waits the next delay (5 ms, doubling up to 1 s) and returns true, or
// returns false as soon as ctx is done.
func (b *AcceptBackoff) Wait(ctx context.Context, err error) bool {
	if !AcceptRetryable(err) || ctx.Err() != nil {
		return false
	}
	b.delay = min(max(2*b.delay, minAcceptDelay), maxAcceptDelay)
	t := time.NewTimer(b.delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Delay returns the delay of the last Wait that waited (for logs).
func (b *AcceptBackoff) Delay() time.Duration { return b.delay }

// Reset starts the delays over; call it after an Accept that succeeded.
func (b *AcceptBackoff) Reset() { b.delay = 0 }
